"""Reference engines (HF dynamic/static cache, onnxruntime-genai) agree with the built-in one."""

from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(3, 301, (3, 6), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def builtin_tokens(tiny_ckpt, prompts):
    from minitron_deploy.engines import get_engine

    return get_engine("torch", tiny_ckpt, dtype="float32").generate(prompts, 12, ignore_eos=True)


@pytest.mark.parametrize("name", ["hf", "hf-static"])
def test_hf_engines_match_builtin_engine(name, tiny_ckpt, prompts, builtin_tokens):
    from minitron_deploy.engines import get_engine

    eng = get_engine(name, tiny_ckpt, dtype="float32")
    assert eng.generate(prompts, 12, ignore_eos=True) == builtin_tokens
    d = eng.describe()
    assert d["engine"] == name and d["cache"] == ("static" if name == "hf-static" else "dynamic")
    # unequal prompt lengths run as equal-length groups and keep their order
    rows = [prompts[0].tolist(), prompts[1, :4].tolist()]
    assert eng.generate(rows, 3, ignore_eos=True)[0] == builtin_tokens[0][:3]
    eng.close()


@pytest.mark.skipif(
    not (importlib.util.find_spec("onnxruntime_genai") and importlib.util.find_spec("onnx_ir")),
    reason="onnxruntime-genai / onnx_ir not installed (pip install '.[deploy]')",
)
def test_onnxruntime_genai_engine_matches_builtin_engine(
    tiny_ckpt, prompts, builtin_tokens, tmp_path
):
    from minitron_deploy.engines import get_engine
    from minitron_deploy.errors import InputError

    eng = get_engine("ort", tiny_ckpt, onnx_cache=tmp_path)
    assert eng.describe()["dtype"] == "float32"
    # ignore_eos=False: genai stops at EOS like the others (ignore_eos uses min_length there)
    ref = get_engine("torch", tiny_ckpt, dtype="float32").generate(prompts, 12)
    assert eng.generate(prompts, 12) == ref
    out = eng.generate(prompts, 12, ignore_eos=True)
    assert all(len(o) == 12 for o in out)
    if ref == builtin_tokens:  # no EOS came up: then the token values agree too
        assert out == builtin_tokens
    with pytest.raises(InputError, match="fp32"):
        get_engine("ort", tiny_ckpt, dtype="bfloat16", onnx_cache=tmp_path)
