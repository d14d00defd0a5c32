"""Layers with massive MLP activations run in float32 under bf16 autocast (model.outliers), and
the distillation trainer finds them, keeps them in the run's record and resumes with them."""

from __future__ import annotations

import pytest
import torch

from minitron_deploy.distill import DistillConfig, run_distillation
from minitron_deploy.model.io import load_llama, save_llama
from minitron_deploy.model.outliers import (
    keep_mlps_float32,
    massive_mlp_layers,
    mlp_output_maxima,
)

TINY = dict(global_batch=4, micro_batch=2, seq_len=32, warmup_steps=1, lr=2e-3, min_lr=1e-4,
            eval_samples=4, teacher_check=False, eval_every=0)  # fmt: skip


def _with_massive_layer(src, out, layer: int, scale: float = 3000.0):
    """The checkpoint with one layer's MLP output scaled up, as a massive-activation layer."""
    model = load_llama(src, dtype="float32")
    with torch.no_grad():
        model.model.layers[layer].mlp.down_proj.weight.mul_(scale)
    save_llama(model, out, source=src, dtype="float32")
    return out


def test_the_massive_layer_is_found_by_its_ratio_to_the_median():
    assert massive_mlp_layers([40.0, 30.0, 9000.0, 50.0, 3000.0]) == [2]  # 3000 is 75x
    assert massive_mlp_layers([40.0, 30.0, 9000.0, 50.0, 3000.0], ratio=50) == [2, 4]
    assert massive_mlp_layers([1.0, 1.0, 1.0]) == []
    assert massive_mlp_layers([1.0, 5000.0]) == []  # no median over 2 layers
    assert massive_mlp_layers([0.0, 0.0, 0.0]) == []


def test_a_kept_mlp_computes_in_float32_under_autocast(tiny_ckpt, tmp_path):
    ckpt = _with_massive_layer(tiny_ckpt, tmp_path / "m", layer=2)
    model = load_llama(ckpt, dtype="float32")
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    maxima = mlp_output_maxima(model, ids)
    assert massive_mlp_layers(maxima) == [2]
    keys = list(model.state_dict())
    x = torch.randn(2, 16, model.config.hidden_size)
    plain = model.model.layers[1].mlp
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model.model.layers[2].mlp(x)
    keep_mlps_float32(model, [2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept, other = model.model.layers[2].mlp(x), plain(x)
    exact = type(plain).forward(model.model.layers[2].mlp, x)  # no autocast: float32
    assert before.dtype == torch.bfloat16 and other.dtype == torch.bfloat16
    assert kept.dtype == torch.float32 and torch.equal(kept, exact)
    assert list(model.state_dict()) == keys  # the module tree and the checkpoint are unchanged


def test_distillation_in_bf16_runs_the_massive_layer_in_float32_and_resumes_so(
    tiny_ckpt, text_dir, tmp_path
):
    ckpt = _with_massive_layer(tiny_ckpt, tmp_path / "student", layer=3)
    cfg = DistillConfig(steps=2, checkpoint_every=1, dtype="bfloat16", **TINY)
    out = tmp_path / "run"
    first = run_distillation(tiny_ckpt, ckpt, out, cfg, train_data=str(text_dir), progress=False)
    assert first["float32_mlp_layers"] == [3]
    assert len(first["mlp_output_maxima"]) == 5
    # resumed (and extended): the layers come from the run's record, not found again
    longer = cfg.model_copy(update={"steps": 3})
    again = run_distillation(
        tiny_ckpt, ckpt, out, longer, train_data=str(text_dir), progress=False,
        resume=True, extend=True,
    )  # fmt: skip
    assert again["float32_mlp_layers"] == [3]
    assert again["mlp_output_maxima"] == first["mlp_output_maxima"]
    # float32 training needs no rule
    f32 = cfg.model_copy(update={"dtype": "float32"})
    plain = run_distillation(
        tiny_ckpt, ckpt, tmp_path / "f32", f32, train_data=str(text_dir), progress=False
    )
    assert "float32_mlp_layers" not in plain


def test_a_model_without_massive_layers_keeps_every_mlp_in_bf16(tiny_ckpt):
    model = load_llama(tiny_ckpt, dtype="float32")
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    assert massive_mlp_layers(mlp_output_maxima(model, ids)) == []
    with pytest.raises(ValueError, match="bfloat16"):
        keep_mlps_float32(load_llama(tiny_ckpt, dtype="bfloat16"), [0])
