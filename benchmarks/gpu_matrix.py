"""Blog-style throughput matrix on one H100/H200 with the built-in engine (≤ 10 minutes).

Random-initialised Llama-3.1-8B and Llama-3.1-Minitron-4B width/depth shapes (no weights are
needed for speed), BF16 and FP8 (static per-tensor W8A8 through `torch._scaled_mm`), batch 32 for
the 8B and 64 for the 4B variants, the ISL/OSL grid 128/128, 128/2048, 2048/128, 2048/2048.
Decode runs in CUDA graphs (`--compile` adds torch.compile; it recompiles per shape, so it is
off by default to stay inside the time budget). Prints our speedups beside the seed's
(TensorRT-LLM on H100: depth ≈ 2.7x, width ≈ 1.8x, FP8 ≈ 1.3x); last stdout line is JSON.

    python benchmarks/gpu_matrix.py                      # the full grid on CUDA
    python benchmarks/gpu_matrix.py --pairs 128/128,2048/128 --dtypes bf16
    python benchmarks/gpu_matrix.py --dry-run            # tiny shapes on CPU (a smoke test)

Memory: all three variants of one dtype stay loaded and each keeps its KV cache; at 2048/2048
that is ~100 GB (fits an H200). On an 80 GB H100 pass `--sequential` (one variant at a time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minitron_deploy.model.shapes import KNOWN_SHAPES  # noqa: E402

LLAMA31_8B = {
    "model_type": "llama",
    **KNOWN_SHAPES["llama-3.1-8b"],
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
# The published Minitron-4B shapes, as overrides of the 8B config.
VARIANTS = {
    name: {k: v for k, v in KNOWN_SHAPES[known].items() if LLAMA31_8B.get(k) != v}
    for name, known in (
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("minitron-4b-width", "llama-3.1-minitron-4b-width"),
        ("minitron-4b-depth", "llama-3.1-minitron-4b-depth"),
    )
}
# Same structure, scaled down for --dry-run on CPU (head_dim kept explicit, width != heads*dim).
TINY = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2}
TINY |= {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
TINY_VARIANTS = {
    "llama-3.1-8b": {},
    "minitron-4b-width": {"hidden_size": 48, "intermediate_size": 96},
    "minitron-4b-depth": {"num_hidden_layers": 1},
}
SEED = {"minitron-4b-depth": 2.7, "minitron-4b-width": 1.8, "fp8": 1.3}


def configs(dry_run: bool) -> dict[str, dict]:
    """HF config dicts of the three shapes (tiny ones for a dry run)."""
    base = LLAMA31_8B | (TINY if dry_run else {})
    if dry_run:
        base["rope_scaling"] = dict(base["rope_scaling"], original_max_position_embeddings=64)
    var = TINY_VARIANTS if dry_run else VARIANTS
    return {name: base | over for name, over in var.items()}


def build_engines(cfgs: dict[str, dict], dtype: str, device: str, args) -> dict:
    """One built-in engine per shape, random weights (FP8 linears for dtype "fp8")."""
    import torch

    from minitron_deploy.engines.torch_engine import TorchEngine
    from minitron_deploy.engines.torch_weights import random_state_dict

    out = {}
    for name, cfg in cfgs.items():
        sd = random_state_dict(cfg, torch.bfloat16, device, fp8=dtype == "fp8", seed=0)
        out[name] = TorchEngine(
            None,
            config=cfg,
            state_dict=sd,
            dtype="bfloat16",
            device=device,
            compile=args.compile,
            cuda_graphs=not args.no_cuda_graphs,
        )
        del sd
    return out


def run(args) -> dict:
    """Run the matrix for each dtype; returns {"results": rows, "summary": {...}}."""
    import torch

    from minitron_deploy.bench import BenchConfig, run_matrix
    from minitron_deploy.bench.matrix import add_unpaired_speedups

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run for the CPU smoke test")
    cfgs = configs(args.dry_run)
    names = list(cfgs)
    batches = [args.base_batch] + [args.pruned_batch] * (len(names) - 1)
    rows: list[dict] = []
    for dtype in args.dtypes.split(","):
        cfg = BenchConfig(
            engine="torch",
            device=device,
            isl_osl=args.pairs,
            batch=batches,
            warmup=args.warmup,
            repeats=args.repeats,
        )
        engines = build_engines(cfgs, dtype, device, args)
        if args.sequential:  # one variant at a time; speedups recomputed across them
            part, described = [], {}
            for name, b in zip(names, batches, strict=True):
                one = cfg.model_copy(update={"batch": (b,)})
                res = run_matrix([(name, engines.pop(name))], one)
                part += res["results"]
                described |= res["engines"]
                torch.cuda.empty_cache() if device == "cuda" else None
            shapes = {n: _shape_of(cfgs[n]) for n in names}
            add_unpaired_speedups(part, names[0], shapes, batches, names, described)
        else:
            res = run_matrix(list(engines.items()), cfg)
            part = res["results"]
            for e in engines.values():
                e.close()
        for r in part:
            r["dtype_variant"] = dtype
        rows += part
        engines.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"results": rows, "summary": summarize(rows)}


def _shape_of(cfg: dict):
    from minitron_deploy.model.shapes import LlamaShape

    return LlamaShape.from_config(cfg)


def summarize(rows: list[dict]) -> dict:
    """Median over ISL/OSL pairs of: each pruned variant vs the 8B (per dtype), FP8 vs BF16."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["model"] != "llama-3.1-8b":
            key = f"{r['model']} ({r['dtype_variant']})"
            out.setdefault(key, {"ours": [], "ideal": [], "seed": SEED[r["model"]]})
            out[key]["ours"].append(r["speedup_vs_base"])
            out[key]["ideal"].append(r["ideal_speedup"])
    by = {(r["model"], r["dtype_variant"], r["isl"], r["osl"]): r for r in rows}
    for (model, dt, isl, osl), r in by.items():
        bf = by.get((model, "bf16", isl, osl))
        if dt == "fp8" and bf:
            key = f"fp8 vs bf16 ({model})"
            out.setdefault(key, {"ours": [], "ideal": [], "seed": SEED["fp8"]})
            out[key]["ours"].append(r["output_tok_s"] / bf["output_tok_s"])
    return {
        k: {
            "ours_median": statistics.median(v["ours"]),
            "ours_per_pair": [round(x, 3) for x in v["ours"]],
            "compute_ideal": statistics.median(v["ideal"]) if v["ideal"] else None,
            "seed_trtllm_h100": v["seed"],
        }
        for k, v in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="128/128,128/2048,2048/128,2048/2048", help="ISL/OSL")
    p.add_argument("--dtypes", default="bf16,fp8", help="bf16 and/or fp8")
    p.add_argument("--base-batch", type=int, default=32)
    p.add_argument("--pruned-batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--sequential", action="store_true", help="one variant in memory at a time")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, small grid")
    args = p.parse_args(argv)
    if args.dry_run and args.pairs == p.get_default("pairs"):
        args.pairs = "8/4,16/4"
        args.base_batch, args.pruned_batch = 2, 4
    res = run(args)
    print(f"{'comparison':34s} {'ours':>7s} {'ideal':>7s} {'seed':>6s}  per pair")
    for k, v in res["summary"].items():
        ideal = f"{v['compute_ideal']:.2f}x" if v["compute_ideal"] else "  –"
        print(
            f"{k:34s} {v['ours_median']:6.2f}x {ideal:>7s} {v['seed_trtllm_h100']:5.1f}x  "
            f"{v['ours_per_pair']}"
        )
    from minitron_deploy.hardware import processor

    res["processor"] = processor()
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
