"""Legacy TensorRT-LLM checkpoints: names, config, tp layout, and round trips back to HF."""

from __future__ import annotations

import json

import pytest

LAYER0 = {
    "transformer.layers.0." + n
    for n in (
        "input_layernorm.weight",
        "post_layernorm.weight",
        "attention.qkv.weight",
        "attention.dense.weight",
        "mlp.fc.weight",
        "mlp.gate.weight",
        "mlp.proj.weight",
    )
}


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    """Width-pruned shape: hidden 48 != 6 heads x head_dim 16; vocab 301 (odd: lm_head pads)."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("w") / "pruned", seed=3, hidden_size=48)


def _export(src, dest, tp):
    from minitron_deploy.export.hf import read_hf_tensors
    from minitron_deploy.export.trtllm_ckpt import write_trtllm_checkpoint

    dest.mkdir()
    cfg, t = read_hf_tensors(src)
    write_trtllm_checkpoint(cfg, t, dest, tp=tp)
    return dest


@pytest.mark.parametrize("which", ["pruned_ckpt", "tiny_tied_ckpt"])
@pytest.mark.parametrize("tp", [1, 2])
def test_bf16_round_trip_gives_identical_logits(which, tp, request, tmp_path):
    import torch

    from minitron_deploy.export.hf import logits_of
    from minitron_deploy.export.trtllm_ckpt import load_trtllm_checkpoint
    from minitron_deploy.export.verify import probe_tokens
    from minitron_deploy.model.io import load_llama

    src = request.getfixturevalue(which)
    out = _export(src, tmp_path / "trt", tp)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        *(f"rank{r}.safetensors" for r in range(tp)),
    ]
    ref = load_llama(src, dtype="bfloat16").float()
    tokens = probe_tokens(ref.config.vocab_size)
    assert torch.equal(logits_of(ref, tokens), logits_of(load_trtllm_checkpoint(out), tokens))


def test_config_carries_shapes_and_rope_settings(pruned_ckpt, tmp_path):
    from minitron_deploy.model.io import read_config
    from minitron_deploy.model.shapes import rope_settings

    out = _export(pruned_ckpt, tmp_path / "trt", 2)
    c = json.loads((out / "config.json").read_text())
    src = read_config(pruned_ckpt)
    theta, scaling = rope_settings(src)
    assert c["architecture"] == "LlamaForCausalLM" and c["dtype"] == "bfloat16"
    assert (c["hidden_size"], c["head_size"], c["num_attention_heads"]) == (48, 16, 6)
    assert c["num_key_value_heads"] == 2 and c["intermediate_size"] == 200
    assert c["rotary_base"] == theta and c["rotary_scaling"] == scaling
    assert c["rotary_scaling"]["rope_type"] == "llama3" and c["rotary_scaling"]["factor"] == 8.0
    assert c["position_embedding_type"] == "rope_gpt_neox" and c["hidden_act"] == "silu"
    assert c["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    assert c["quantization"]["quant_algo"] is None


def test_tp_shards_follow_trtllm_layout_and_concatenate_back(pruned_ckpt, tmp_path):
    import torch
    from safetensors.torch import load_file

    from minitron_deploy.export.hf import read_hf_tensors

    _, hf = read_hf_tensors(pruned_ckpt)
    hf = {k: v.to(torch.bfloat16) for k, v in hf.items()}
    one = load_file(str(_export(pruned_ckpt, tmp_path / "tp1", 1) / "rank0.safetensors"))
    tp2 = _export(pruned_ckpt, tmp_path / "tp2", 2)
    two = [load_file(str(tp2 / f"rank{r}.safetensors")) for r in range(2)]
    assert set(one) >= LAYER0 and set(two[0]) >= LAYER0
    p, h = "transformer.layers.1.", "model.layers.1."
    assert torch.equal(one[p + "mlp.fc.weight"], hf[h + "mlp.gate_proj.weight"])
    assert torch.equal(one[p + "mlp.gate.weight"], hf[h + "mlp.up_proj.weight"])
    qkv = [hf[f"{h}self_attn.{x}_proj.weight"] for x in "qkv"]
    assert torch.equal(one[p + "attention.qkv.weight"], torch.cat(qkv))
    for r in range(2):  # rank r holds q heads 3r..3r+2 and KV head r, in q|k|v order
        want = torch.cat([x.chunk(2)[r] for x in qkv])
        assert two[r][p + "attention.qkv.weight"].shape == (3 * 16 + 16 + 16, 48)
        assert torch.equal(two[r][p + "attention.qkv.weight"], want)
    for name, dim in (("attention.dense", 1), ("mlp.fc", 0), ("mlp.gate", 0), ("mlp.proj", 1)):
        cat = torch.cat([two[r][f"{p}{name}.weight"] for r in range(2)], dim=dim)
        assert torch.equal(cat, one[f"{p}{name}.weight"]), name
    # vocab 301 is padded to 302 rows (one zero row), then split by rows; embedding replicated
    assert two[0]["lm_head.weight"].shape == (151, 48)
    assert torch.equal(two[1]["lm_head.weight"][-1], torch.zeros(48, dtype=torch.bfloat16))
    lm = torch.cat([two[r]["lm_head.weight"] for r in range(2)])[:301]
    assert torch.equal(lm, one["lm_head.weight"])
    for r in range(2):
        emb = two[r]["transformer.vocab_embedding.weight"]
        assert torch.equal(emb, one["transformer.vocab_embedding.weight"])


@pytest.fixture(scope="module")
def fp8_hf(pruned_ckpt, text_dir, tmp_path_factory):
    pytest.importorskip("modelopt")
    from minitron_deploy.export.hf_fp8 import export_hf_fp8

    out = tmp_path_factory.mktemp("fp8") / "hf-fp8"
    out.mkdir()
    from minitron_deploy.data.refs import DataRef

    export_hf_fp8(
        pruned_ckpt, out, calibration=DataRef(source=str(text_dir)), calib_samples=8,
        calib_seq_len=48, kv_cache_fp8=True,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_checkpoint_matches_the_hf_fp8_export_within_fp8(fp8_hf, tp, tmp_path):
    import torch
    from safetensors.torch import load_file

    from minitron_deploy.export.hf import logits_of
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint, read_fp8_state
    from minitron_deploy.export.trtllm_ckpt import load_trtllm_checkpoint, write_trtllm_checkpoint
    from minitron_deploy.export.verify import compare_logits, probe_tokens

    cfg, t = read_fp8_state(fp8_hf)
    out = tmp_path / "trt"
    out.mkdir()
    write_trtllm_checkpoint(cfg, t, out, tp=tp)
    c = json.loads((out / "config.json").read_text())
    assert c["quantization"] == {
        "quant_algo": "FP8",
        "kv_cache_quant_algo": "FP8",
        "exclude_modules": ["lm_head"],
    }
    r0 = load_file(str(out / "rank0.safetensors"))
    p, h = "transformer.layers.0.", "model.layers.0."
    assert r0[p + "attention.qkv.weight"].dtype == torch.float8_e4m3fn
    assert r0["lm_head.weight"].dtype == torch.bfloat16
    ws = torch.stack([t[f"{h}self_attn.{x}_proj.weight_scale"] for x in "qkv"]).max()
    assert r0[p + "attention.qkv.weights_scaling_factor"].shape == (1,)
    assert float(r0[p + "attention.qkv.weights_scaling_factor"]) == float(ws)  # one shared scale
    kv = max(float(t[h + "self_attn.k_proj.k_scale"]), float(t[h + "self_attn.v_proj.v_scale"]))
    # one scale for K and V, clamped to >= 1.0 as Model-Optimizer's TensorRT-LLM exporter does
    assert float(r0[p + "attention.kv_cache_scaling_factor"]) == max(kv, 1.0)
    assert torch.equal(
        r0[p + "mlp.fc.weight"].float().chunk(1)[0],
        t[h + "mlp.gate_proj.weight"].float().chunk(tp)[0],
    )
    assert float(r0[p + "mlp.proj.activation_scaling_factor"]) == float(
        t[h + "mlp.down_proj.input_scale"]
    )
    ref = load_fp8_checkpoint(fp8_hf, dequantize=True)
    got = load_trtllm_checkpoint(out)
    tokens = probe_tokens(cfg["vocab_size"])
    m = compare_logits(logits_of(ref, tokens), logits_of(got, tokens))
    # only q/k/v differ (requantized to the shared scale): one extra FP8 rounding
    assert m["kl_per_token"] < 1e-3 and m["top1_agreement"] > 0.9
    g, e = dict(got.named_parameters()), dict(ref.named_parameters())
    for name in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        w = f"model.layers.3.{name}.weight"
        assert torch.equal(g[w], e[w]), name
    q = "model.layers.3.self_attn.q_proj.weight"
    assert (g[q] - e[q]).abs().max() <= float(ws) * 16  # half an FP8 step at the top of range


def test_fp8_kv_cache_with_a_bf16_checkpoint_is_refused(tiny_ckpt, tmp_path, capsys):
    from pydantic import ValidationError

    from minitron_deploy.cli import main
    from minitron_deploy.export.config import ExportConfig

    out = tmp_path / "t"
    argv = ["export", "--model", str(tiny_ckpt), "--format", "trtllm-ckpt", "--out", str(out)]
    assert main([*argv, "--dtype", "bf16", "--kv-cache-fp8"]) == 2
    assert "carries no KV-cache scales" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValidationError, match="carries no KV-cache scales"):
        ExportConfig(formats=["trtllm-ckpt"], trtllm_dtype="bf16", kv_cache_fp8=True)
