"""Layer-sequential FP8 calibration + export writes what Model-Optimizer's whole-model path writes.

Tolerance: none. The layer-sequential pass feeds every linear the tensors the whole model feeds
it (same micro-batches, same float32 weights under the same autocast), takes the same maxima,
and applies Model-Optimizer's scale and cast math, so FP8 codes, scales and every other tensor
are compared bitwise, and config.json / hf_quant_config.json / generation_config.json as JSON.
"""

from __future__ import annotations

import json

import pytest

from minitron_deploy.data.refs import DataRef

pytest.importorskip("modelopt")

CALIB = DataRef(source="builtin:python-stdlib", split="train")


def _tensors(d):
    from safetensors import safe_open

    from minitron_deploy.model.io import weight_files

    out, meta = {}, set()
    for f in weight_files(d):
        with safe_open(str(f), framework="pt") as sf:
            meta.add(json.dumps(sf.metadata(), sort_keys=True))
            for k in sf.keys():  # noqa: SIM118
                out[k] = sf.get_tensor(k)
    return out, meta


def _json(d, name):
    return json.loads((d / name).read_text())


@pytest.mark.parametrize(
    "tied,kv,hidden",
    [(False, True, 96), (True, True, 96), (True, False, 48)],
    ids=["untied-kv", "tied-kv", "tied-pruned"],
)
def test_layer_sequential_fp8_export_equals_model_optimizer(tmp_path, tied, kv, hidden):
    import torch

    from minitron_deploy.export.hf_fp8 import export_hf_fp8
    from minitron_deploy.testing import make_tiny_checkpoint

    src = make_tiny_checkpoint(
        tmp_path / "src", tie_word_embeddings=tied, hidden_size=hidden, dtype="bfloat16"
    )
    dirs = {}
    for mode in ("false", "true"):
        d = tmp_path / mode
        d.mkdir()
        r = export_hf_fp8(
            src,
            d,
            calibration=CALIB,
            calib_samples=6,  # two micro-batches of 4 and 2
            calib_seq_len=24,
            kv_cache_fp8=kv,
            layer_sequential=mode,
        )
        assert r["layer_sequential"] is (mode == "true")
        dirs[mode] = d
    whole, seq = dirs["false"], dirs["true"]
    for name in ("config.json", "hf_quant_config.json", "generation_config.json"):
        assert _json(whole, name) == _json(seq, name), name
    (tw, mw), (ts, ms) = _tensors(whole), _tensors(seq)
    assert mw == ms
    assert tw.keys() == ts.keys()
    n_fp8 = 0
    for k, a in tw.items():
        b = ts[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        if a.dtype == torch.float8_e4m3fn:
            n_fp8 += 1
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), k
        else:
            assert torch.equal(a, b), k
    assert n_fp8 == 5 * 7
    assert any(k.endswith("k_scale") for k in tw) is kv
    assert ("lm_head.weight" in tw) is not tied


def test_layout_check_names_what_is_missing(tmp_path):
    from safetensors.torch import save_file

    from minitron_deploy.quant.fp8_layerwise import check_fp8_layout
    from minitron_deploy.testing import make_tiny_checkpoint

    d = make_tiny_checkpoint(tmp_path / "bf16", num_hidden_layers=1)
    with pytest.raises(RuntimeError, match="q_proj"):
        check_fp8_layout(d)  # bf16 weights, no scales
    import torch

    t = {}
    for lin in ("q_proj", "k_proj", "v_proj", "o_proj"):
        pre = f"model.layers.0.self_attn.{lin}."
        t.update({pre + "weight": torch.zeros(2, 2, dtype=torch.float8_e4m3fn)})
        t.update({pre + "weight_scale": torch.ones(()), pre + "input_scale": torch.ones(())})
    for f in d.glob("*.safetensors"):
        f.unlink()
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(RuntimeError, match="mlp"):
        check_fp8_layout(d)
