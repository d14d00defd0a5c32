"""The legacy TensorRT-LLM FP8 attention choices: the one KV scale a checkpoint layer carries,
and the built-in engine's emulation of FP8 context FMHA and of teacher-forced scoring that
benchmarks/fp8_kv_scale.py measures them with."""

from __future__ import annotations

import pytest
import torch

from minitron_deploy.engines.torch_engine import TorchEngine
from minitron_deploy.errors import InputError
from minitron_deploy.export.trtllm_ckpt import legacy_kv_cache_scale
from minitron_deploy.quant.fp8 import FP8_MAX


@pytest.fixture(scope="module")
def parts(tiny_ckpt):
    from minitron_deploy.engines.torch_weights import read_safetensors
    from minitron_deploy.model.io import read_config

    return read_config(tiny_ckpt), read_safetensors(tiny_ckpt)


def _engine(parts, scale: float | None, **kw) -> TorchEngine:
    cfg, sd = parts
    sd = dict(sd)
    if scale is not None:
        for i in range(cfg["num_hidden_layers"]):
            sd[f"model.layers.{i}.self_attn.k_proj.k_scale"] = torch.tensor(scale)
            sd[f"model.layers.{i}.self_attn.v_proj.v_scale"] = torch.tensor(scale)
    return TorchEngine(None, config=cfg, state_dict=sd, dtype="float32", **kw)


ROWS = torch.randint(3, 301, (2, 24), generator=torch.Generator().manual_seed(5)).tolist()


def test_legacy_scale_is_the_larger_of_k_and_v_and_at_least_one():
    k, v = torch.tensor(0.02), torch.tensor(0.05)
    assert float(legacy_kv_cache_scale(k, v, clamp=False)) == pytest.approx(0.05)
    assert float(legacy_kv_cache_scale(k, v)) == 1.0  # clamped by default
    big = legacy_kv_cache_scale(torch.tensor(3.0), torch.tensor(2.0))
    assert big.shape == (1,) and big.dtype == torch.float32 and float(big) == 3.0


def test_score_in_one_context_pass_equals_one_decode_step_at_a_time(parts):
    """Teacher-forced scoring: the context pass and the decode steps give the same losses
    when nothing is quantized (so a difference under FP8 is the FP8 choices' doing)."""
    eng = _engine(parts, None)
    ctx, dec = eng.score(ROWS, 24), eng.score(ROWS, 1)
    assert ctx.shape == dec.shape == (2, 23)
    torch.testing.assert_close(ctx, dec, atol=1e-4, rtol=1e-4)


def test_fp8_context_fmha_quantizes_q_k_v_with_the_kv_scale(parts):
    eng = _engine(parts, 0.01, fp8_context_fmha=True)
    q = torch.linspace(-10, 10, 64).reshape(1, 1, 8, 8)
    k, v = q / 4, q / 8
    q8, k8, v8 = eng._fmha_fp8(0, q, k, v)
    limit = FP8_MAX * 0.01  # 4.48: Q beyond it saturates
    assert q8.abs().max() == pytest.approx(limit)
    assert (q8[q.abs() > limit].abs() == limit).all()
    inside = q.abs() <= limit
    # in range, FP8 rounding only: half a step is 2^-4 relative
    assert ((q8 - q)[inside].abs() <= q[inside].abs() * 2**-4 + 0.01 * 2**-9).all()
    assert torch.equal(k8, (k / 0.01).to(torch.float8_e4m3fn).float() * 0.01)
    assert not torch.equal(v8, v)


def test_fp8_context_fmha_acts_in_the_context_pass(parts):
    plain = _engine(parts, 0.01).score(ROWS, 12)
    fmha = _engine(parts, 0.01, fp8_context_fmha=True).score(ROWS, 12)
    assert not torch.equal(plain[:, :11], fmha[:, :11])  # the context pass is quantized
    assert torch.isfinite(fmha).all()
    # with the context being the whole row nothing is left to decode, and without FP8 context
    # FMHA an FP8 KV cache changes nothing in a context pass (it attends over K/V as computed)
    none = _engine(parts, None).score(ROWS, 24)
    torch.testing.assert_close(_engine(parts, 0.01).score(ROWS, 24), none)


def test_fp8_context_fmha_needs_an_fp8_kv_cache(parts):
    with pytest.raises(InputError, match="fp8_context_fmha"):
        _engine(parts, None, fp8_context_fmha=True)
    with pytest.raises(InputError, match="fp8_context_fmha"):
        _engine(parts, 0.01, fp8_context_fmha=True, kv_cache_dtype="compute")
    assert _engine(parts, 0.01, fp8_context_fmha=True).describe()["fp8_context_fmha"] is True
