"""Checkpoint I/O: round trips, shapes, and one clear error for each kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minitron_deploy.errors import InputError
from minitron_deploy.model.io import load_llama, read_config, save_llama
from minitron_deploy.model.shapes import LlamaShape, rope_settings


def _logits(model, seed=0):
    ids = torch.randint(
        0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("fixture", ["tiny_ckpt", "tiny_tied_ckpt"])
def test_save_reload_identical_logits_and_stock_load(fixture, request, tmp_path):
    from transformers import AutoModelForCausalLM

    src = request.getfixturevalue(fixture)
    model = load_llama(src, dtype="float32")
    out = save_llama(model, tmp_path / "copy", source=src, dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head_dim"] == model.config.head_dim
    assert (out / "tokenizer.json").is_file() and (out / "provenance.json").is_file()
    stock, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_logits(stock), _logits(model), rtol=0, atol=0)


def test_param_count_formula_matches_model(tiny_ckpt, tiny_tied_ckpt):
    for ckpt in (tiny_ckpt, tiny_tied_ckpt):
        model = load_llama(ckpt)
        shape = LlamaShape.from_config(model.config)
        assert shape.num_parameters == model.num_parameters()


def test_sharded_bf16_tied_loads(tiny_tied_ckpt):
    assert (tiny_tied_ckpt / "model.safetensors.index.json").is_file()
    model = load_llama(tiny_tied_ckpt, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_rope_settings_both_spellings():
    assert rope_settings({"rope_theta": 5.0}) == (5.0, None)
    theta, scaling = rope_settings(
        {"rope_parameters": {"rope_theta": 7.0, "rope_type": "llama3", "factor": 8.0}}
    )
    assert theta == 7.0 and scaling == {"rope_type": "llama3", "factor": 8.0}
    assert rope_settings({"rope_theta": 3.0, "rope_scaling": {"type": "linear", "factor": 2.0}})[
        1
    ] == {"type": "linear", "factor": 2.0, "rope_type": "linear"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_refuses_pickle_only(tiny_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    with pytest.raises(InputError, match="pickle"):
        load_llama(d)


def test_refuses_non_llama_and_remote_code(tiny_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(
        json.dumps({**cfg, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    )
    with pytest.raises(InputError, match="only Llama"):
        read_config(d)
    (d / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(InputError, match="trust_remote_code"):
        read_config(d)


def test_truncated_and_missing_files(tiny_ckpt, tiny_tied_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path / "trunc")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated|corrupt"):
        load_llama(d)
    s = _copy(tiny_tied_ckpt, tmp_path / "shard")
    next(iter(sorted(s.glob("model-*.safetensors")))).unlink()
    with pytest.raises(InputError, match="missing"):
        load_llama(s)
    with pytest.raises(InputError, match="no config.json"):
        read_config(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_config(tmp_path / "nope")


def test_missing_tensor_is_reported(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_ckpt, tmp_path / "m")
    sd = load_file(d / "model.safetensors")
    sd.pop("model.layers.2.mlp.up_proj.weight")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="missing_keys"):
        load_llama(d)


def test_save_is_atomic_and_refuses_existing(tiny_ckpt, tmp_path):
    model = load_llama(tiny_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        save_llama(model, out)
    assert (out / "keep.txt").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
