"""Built-in torch engine: greedy tokens identical to HF `generate`, FP8 path, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from minitron_deploy.errors import InputError


def _prompts(n: int, length: int, seed: int = 0, vocab: int = 301) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g)


def _hf_greedy(model, ids: torch.Tensor, n: int, eos=None) -> list[list[int]]:
    from transformers import GenerationConfig

    gc = GenerationConfig(
        max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0, bos_token_id=None
    )
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    return out[:, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    from minitron_deploy.engines import get_engine

    return get_engine("torch", tiny_ckpt, dtype="float32")


def test_greedy_tokens_equal_hf_generate_llama3_rope_gqa_untied(engine, tiny_ckpt):
    from minitron_deploy.model.io import load_llama

    hf = load_llama(tiny_ckpt, dtype="float32")
    ids = _prompts(3, 9)
    assert engine.generate(ids, 24, ignore_eos=True) == _hf_greedy(hf, ids, 24)
    # The logits themselves agree, not only their argmax.
    with torch.no_grad():
        ref = hf(ids).logits[:, -1].float()
    torch.testing.assert_close(engine.prefill_logits(ids), ref, atol=1e-4, rtol=1e-4)


def test_tied_embeddings_default_rope_bf16_checkpoint_sharded(tiny_tied_ckpt):
    from minitron_deploy.engines import get_engine
    from minitron_deploy.model.io import load_llama

    eng = get_engine("torch", tiny_tied_ckpt, dtype="float32")
    hf = load_llama(tiny_tied_ckpt, dtype="float32")
    ids = _prompts(2, 5, seed=1)
    assert eng.generate(ids, 16, ignore_eos=True) == _hf_greedy(hf, ids, 16)
    assert eng.describe()["shape"]["tie_word_embeddings"] is True


def test_static_decode_path_used_by_cuda_graphs_matches_eager(engine):
    """The fixed-shape step (position mask, index_copy_) that CUDA graphs capture, run on CPU."""
    ids = _prompts(2, 6, seed=2)
    eager = engine.generate(ids, 12, ignore_eos=True)
    engine.compile = True  # routes decode through `_decode_static` (not compiled on CPU)
    try:
        static = engine.generate(ids, 12, ignore_eos=True)
    finally:
        engine.compile = False
    assert static == eager


def test_decode_attention_by_reshape_equals_sdpa_gqa():
    import torch.nn.functional as F

    from minitron_deploy.engines.torch_engine import _attend_one

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=g) for s in ((2, 6, 1, 16), (2, 2, 9, 16), (2, 2, 9, 16)))
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(_attend_one(q, k, v), ref)
    mask = torch.arange(9) < 5  # positions past the current one are masked
    ref5 = F.scaled_dot_product_attention(q, k[:, :, :5], v[:, :, :5], enable_gqa=True)
    torch.testing.assert_close(_attend_one(q, k, v, mask), ref5)


def test_unequal_prompts_equal_each_prompt_alone(engine):
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17]]
    together = engine.generate(rows, 7, ignore_eos=True)
    alone = [engine.generate([r], 7, ignore_eos=True)[0] for r in rows]
    assert together == alone and all(len(t) == 7 for t in together)


def test_stops_after_eos_like_hf(tiny_ckpt, tmp_path):
    """Make the first greedy token of row 0 the EOS id: that row stops, the others go on."""
    from minitron_deploy.engines import get_engine
    from minitron_deploy.model.io import load_llama

    ids = _prompts(3, 6, seed=3)
    first = get_engine("torch", tiny_ckpt, dtype="float32").generate(ids, 1)[0][0]
    ckpt = tmp_path / "eos"
    shutil.copytree(tiny_ckpt, ckpt)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": first}))
    out = get_engine("torch", ckpt, dtype="float32").generate(ids, 10)
    assert out[0] == [first]
    ref = [
        r[: r.index(first) + 1] if first in r else r
        for r in _hf_greedy(load_llama(ckpt, dtype="float32"), ids, 10, eos=first)
    ]
    assert out == ref


def _write_fp8_checkpoint(src, dest, calib: torch.Tensor, kv: bool = False) -> None:
    """A Model-Optimizer-format FP8 checkpoint: static per-tensor scales from calibration.

    With `kv`, also per-layer FP8 KV-cache scales (amax of the cached, post-rope K and V / 448).
    """
    from safetensors.torch import save_file

    from minitron_deploy.model.io import load_llama
    from minitron_deploy.quant import quantize_fp8 as fp8_quantize

    model = load_llama(src, dtype="float32")
    amax: dict[str, float] = {}
    hooks = [
        mod.register_forward_pre_hook(
            lambda m, a, n=name: amax.__setitem__(n, max(amax.get(n, 0.0), a[0].abs().max().item()))
        )
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name != "lm_head"
    ]
    with torch.no_grad():
        cache = model(calib, use_cache=True).past_key_values
    for h in hooks:
        h.remove()
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    for name, a in amax.items():
        w8, ws = fp8_quantize(model.get_submodule(name).weight)
        sd[f"{name}.weight"], sd[f"{name}.weight_scale"] = w8, ws.reshape(())
        sd[f"{name}.input_scale"] = torch.tensor(a / 448.0)
    if kv:
        for i, layer in enumerate(cache.layers):
            p = f"model.layers.{i}.self_attn."
            sd[p + "k_proj.k_scale"] = layer.keys.abs().max().float() / 448.0
            sd[p + "v_proj.v_scale"] = layer.values.abs().max().float() / 448.0
    dest.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "modelopt",
        "quant_algo": "FP8",
        "ignore": ["lm_head"],
    }
    (dest / "config.json").write_text(json.dumps(cfg))
    quant = {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8"}}
    if kv:
        cfg["quantization_config"]["kv_cache_quant_algo"] = "FP8"
        quant["quantization"]["kv_cache_quant_algo"] = "FP8"
        (dest / "config.json").write_text(json.dumps(cfg))
    (dest / "hf_quant_config.json").write_text(json.dumps(quant))
    shutil.copy(src / "generation_config.json", dest / "generation_config.json")


@pytest.fixture(scope="module")
def fp8_ckpt(tiny_ckpt, tmp_path_factory):
    dest = tmp_path_factory.mktemp("fp8") / "fp8"
    _write_fp8_checkpoint(tiny_ckpt, dest, _prompts(4, 32, seed=9))
    return dest


@pytest.mark.numerics
def test_fp8_checkpoint_runs_scaled_mm_and_tracks_w8a8_reference(fp8_ckpt, engine):
    from minitron_deploy.engines import get_engine
    from minitron_deploy.quant.linear import Fp8Linear

    eng = get_engine("torch", fp8_ckpt, dtype="float32")
    assert eng.describe()["weights"] == "fp8"
    assert isinstance(eng.w["layers"][0]["down"], Fp8Linear)
    ids = _prompts(2, 8, seed=4)
    got = eng.prefill_logits(ids)
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint  # the exporter's W8A8 reader

    ref_model = load_fp8_checkpoint(fp8_ckpt, dequantize=False, dtype="float32")
    with torch.no_grad():
        ref = ref_model(ids).logits[:, -1]
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=2e-3)
    # FP8 moves the logits, but stays close to the full-precision model ...
    full = engine.prefill_logits(ids)
    rel = (got - full).norm() / full.norm()
    assert 0 < rel < 0.3  # e4m3 keeps 3 mantissa bits; random tiny layers amplify it
    # ... and `auto` computes FP8 layers' outputs in the CPU's native dtype.
    from minitron_deploy.hardware import auto_dtype_name

    auto = get_engine("torch", fp8_ckpt)
    assert auto.describe()["dtype"] == auto_dtype_name("cpu")
    assert len(auto.generate(ids, 4, ignore_eos=True)[0]) == 4


@pytest.fixture(scope="module")
def fp8_kv_ckpt(tiny_ckpt, tmp_path_factory):
    dest = tmp_path_factory.mktemp("fp8kv") / "fp8kv"
    _write_fp8_checkpoint(tiny_ckpt, dest, _prompts(4, 32, seed=9), kv=True)
    return dest


def test_fp8_kv_cache_holds_the_quantized_keys_and_values(fp8_kv_ckpt):
    """The cache is float8 with the checkpoint's scales: dequantized, it is HF's K/V rounded."""
    from minitron_deploy.engines import get_engine
    from minitron_deploy.export.hf_fp8 import read_kv_cache_scales

    eng = get_engine("torch", fp8_kv_ckpt, dtype="float32")
    plain = get_engine("torch", fp8_kv_ckpt, dtype="float32", kv_cache_dtype="compute")
    assert eng.describe()["kv_cache_dtype"] == "float8_e4m3fn"
    assert plain.describe()["kv_cache_dtype"] == "float32"
    ids = _prompts(3, 9, seed=11)
    # prefill attends over K/V as computed, so the first logits do not move
    torch.testing.assert_close(eng.prefill_logits(ids), plain.prefill_logits(ids))
    out = eng.generate(ids, 6, ignore_eos=True)
    assert all(len(o) == 6 for o in out)
    ((_, cache),) = eng._cache.items()
    assert cache["k"].dtype == torch.float8_e4m3fn
    # the W8A8 reference model's own cache for the same tokens, rounded by the scales
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint

    ref = load_fp8_checkpoint(fp8_kv_ckpt, dequantize=False, dtype="float32")
    full = torch.cat([ids, torch.tensor(out)[:, :-1]], dim=1)
    with torch.no_grad():
        hf_cache = ref(full, use_cache=True).past_key_values
    scales = read_kv_cache_scales(fp8_kv_ckpt)
    # layer 0's K/V depend on tokens only; deeper layers of generated positions have attended
    # over the FP8 cache (the reference did not), so there compare the prompt positions.
    last = len(scales) - 1
    for i, n in ((0, full.shape[1]), (last, ids.shape[1])):
        for j, hf_kv in enumerate((hf_cache.layers[i].keys, hf_cache.layers[i].values)):
            s = scales[i][j]
            ours = cache["kv"[j]][i, :, :, :n].float() * s
            ref_kv = hf_kv[:, :, :n]
            # e4m3 rounding: half a step is 2^-4 relative (normals), 2^-10 * s (subnormals)
            bound = ref_kv.abs() * 2**-4 + s * 2**-10 + 1e-3
            assert ((ours - ref_kv).abs() <= bound).all(), (i, j)
            assert not torch.equal(ours, ref_kv)  # it really is quantized
    # the fixed-shape step that CUDA graphs capture writes the FP8 cache the same way
    eng.compile = True
    try:
        assert eng.generate(ids, 6, ignore_eos=True) == out
    finally:
        eng.compile = False


def test_fp8_kv_cache_request_needs_scales(fp8_ckpt, tiny_ckpt):
    from minitron_deploy.engines import get_engine

    with pytest.raises(InputError, match="k_scale"):
        get_engine("torch", fp8_ckpt, kv_cache_dtype="fp8")
    with pytest.raises(InputError, match="kv_cache_dtype"):
        get_engine("torch", tiny_ckpt, kv_cache_dtype="int4")
    assert (
        get_engine("torch", fp8_ckpt, dtype="bfloat16").describe()["kv_cache_dtype"] == "bfloat16"
    )


def test_fp8_linear_equals_dequantized_matmul():
    from minitron_deploy.quant import quantize_fp8 as fp8_quantize
    from minitron_deploy.quant.linear import Fp8Linear

    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(40, 24, generator=g), torch.randn(3, 5, 24, generator=g)
    w8, ws = fp8_quantize(w)
    xs = x.abs().max() / 448.0
    y = Fp8Linear(w8, ws, xs, out_dtype=torch.float32)(x)
    xq = (x / xs).to(torch.float8_e4m3fn).float() * xs
    torch.testing.assert_close(y, xq @ (w8.float() * ws).t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("engine_name", ["hf", "hf-static", "ort"])
def test_fp8_checkpoint_on_engine_without_fp8_is_refused(fp8_ckpt, engine_name):
    from minitron_deploy.engines import get_engine

    with pytest.raises(InputError, match="FP8"):
        get_engine(engine_name, fp8_ckpt)


def test_bad_input_is_a_clear_error(engine):
    with pytest.raises(InputError, match="max_position_embeddings"):
        engine.generate(_prompts(1, 1000), 30)  # 1000 + 30 > 1024
    with pytest.raises(InputError, match="batch size is 0"):
        engine.generate(torch.zeros(0, 4, dtype=torch.long), 3)
    with pytest.raises(InputError, match="batch size is 0"):
        engine.generate([], 3)
    with pytest.raises(InputError, match="max_new_tokens"):
        engine.generate(_prompts(1, 4), 0)
    with pytest.raises(InputError, match="outside the vocabulary"):
        engine.generate([[1, 2, 999]], 2)
    with pytest.raises(InputError, match="2-D"):
        engine.generate(torch.tensor([1, 2, 3]), 2)


def test_unknown_engine_name(tiny_ckpt):
    from minitron_deploy.engines import get_engine

    with pytest.raises(InputError, match="unknown engine"):
        get_engine("no-such-engine", tiny_ckpt)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_and_compile_match_eager_on_gpu(tiny_ckpt, fp8_ckpt, fp8_kv_ckpt):
    from minitron_deploy.engines import get_engine

    ids = _prompts(4, 7, seed=6)
    eager = get_engine("torch", tiny_ckpt, dtype="float32", device="cuda")
    ref = eager.generate(ids, 10, ignore_eos=True)
    assert ref == get_engine("torch", tiny_ckpt, dtype="float32").generate(ids, 10, ignore_eos=True)
    graphs = get_engine("torch", tiny_ckpt, dtype="float32", device="cuda", cuda_graphs=True)
    assert graphs.generate(ids, 10, ignore_eos=True) == ref
    assert graphs.generate(ids, 10, ignore_eos=True) == ref  # replayed graph, same cache
    both = get_engine(
        "torch", tiny_ckpt, dtype="float32", device="cuda", cuda_graphs=True, compile=True
    )
    assert both.generate(ids, 10, ignore_eos=True) == ref
    fp8 = get_engine("torch", fp8_ckpt, dtype="float32", device="cuda", cuda_graphs=True)
    got = fp8.prefill_logits(ids).cpu()
    # The same FP8 kernels eagerly: equal up to float rounding.
    eager8 = get_engine("torch", fp8_ckpt, dtype="float32", device="cuda").prefill_logits(ids)
    torch.testing.assert_close(got, eager8.cpu(), atol=1e-4, rtol=1e-4)
    # Against the CPU emulation (same FP8 operands, another accumulation order): a near-tie in
    # one activation's FP8 rounding flips it by a whole e4m3 step and the flip propagates through
    # the layers (on an H200: 94% of the tiny model's logits moved by more than 2e-3, at most
    # 0.2), so the check is against FP8's own error: the two FP8 paths differ from each other by
    # less than either differs from the full-precision model. A wrong scale or operand layout
    # in the real FP8 GEMM gives an error of the logits' own size.
    want = get_engine("torch", fp8_ckpt, dtype="float32").prefill_logits(ids)
    full = get_engine("torch", tiny_ckpt, dtype="float32").prefill_logits(ids)
    fp8_err = ((want - full).norm() / full.norm()).item()
    apart = ((got - want).norm() / want.norm()).item()
    print(f"FP8 CUDA vs CPU emulation: {apart:.4f} relative; FP8 vs full precision {fp8_err:.4f}")
    assert 0 < fp8_err < 0.3 and apart < fp8_err, (apart, fp8_err)
    # FP8 KV cache: the graph-captured step (uint8 index_copy_) equals the eager CUDA step
    kv_eager = get_engine("torch", fp8_kv_ckpt, dtype="float32", device="cuda")
    kv_graphs = get_engine("torch", fp8_kv_ckpt, dtype="float32", device="cuda", cuda_graphs=True)
    assert kv_graphs.describe()["kv_cache_dtype"] == "float8_e4m3fn"
    assert kv_graphs.generate(ids, 10, ignore_eos=True) == kv_eager.generate(
        ids, 10, ignore_eos=True
    )


def test_prepacked_weights_agree_with_plain_ones(tiny_ckpt):
    """oneDNN-prepacked linears (bf16 default on CPU, fp32 on request) agree up to rounding."""
    from minitron_deploy.engines import get_engine
    from minitron_deploy.engines.torch_weights import can_prepack

    if not can_prepack(torch.float32, torch.device("cpu")):
        pytest.skip("oneDNN not available in this torch build")
    ids = _prompts(3, 7, seed=4)
    plain = get_engine("torch", tiny_ckpt, dtype="float32")  # fp32 default: HF's kernels
    packed = get_engine("torch", tiny_ckpt, dtype="float32", prepack=True)
    assert packed.describe()["prepacked"] and not plain.describe()["prepacked"]
    assert packed.generate(ids, 10, ignore_eos=True) == plain.generate(ids, 10, ignore_eos=True)
    ref = plain.prefill_logits(ids)
    torch.testing.assert_close(packed.prefill_logits(ids), ref, rtol=1e-4, atol=1e-4)
    if can_prepack(torch.bfloat16, torch.device("cpu")):
        b_packed = get_engine("torch", tiny_ckpt, dtype="bfloat16")
        b_plain = get_engine("torch", tiny_ckpt, dtype="bfloat16", prepack=False)
        assert b_packed.describe()["prepacked"] and not b_plain.describe()["prepacked"]
        for eng in (b_packed, b_plain):  # both are bf16 roundings of the same fp32 logits
            torch.testing.assert_close(eng.prefill_logits(ids), ref, atol=0.05, rtol=0.05)


def test_prepack_request_where_unsupported_is_noted(tiny_ckpt):
    from minitron_deploy.engines import get_engine

    eng = get_engine("torch", tiny_ckpt, dtype="float16", prepack=True)
    d = eng.describe()
    assert d["prepacked"] is False and any("prepack skipped" in n for n in d["notes"])
    assert len(eng.generate(_prompts(1, 4), 3, ignore_eos=True)[0]) == 3
