"""FP8 KV-cache scale and FP8 context FMHA on the legacy TensorRT-LLM path: what each choice costs.

A legacy TensorRT-LLM checkpoint carries one `kv_cache_scaling_factor` per layer for K and V.
TensorRT-LLM's HF converters write max(k_scale, v_scale); Model-Optimizer's TensorRT-LLM exporter
clamps each scale to >= 1.0 first. `trtllm-build` 1.x enables FP8 context FMHA for an FP8
checkpoint unless told otherwise, and that kernel quantizes Q, K and V with the same scale, so Q
saturates wherever |Q| > 448 x scale. This script calibrates SmolLM2-135M with Model-Optimizer
(FP8 weights, activations and KV cache), then scores held-out text with the built-in engine's
exact FP8 emulation (bfloat16 compute, W8A8 FP8 GEMMs, FP8 KV cache) for each choice:

- scale max(k, v) or max(max(k, v), 1.0) ("clamped"), as K/V cache scale of every layer;
- FP8 context FMHA on (Q, K, V quantized with the scale in the context pass) or off.

The loss of each row is split: tokens scored in one context pass (where FP8 context FMHA acts)
and tokens scored one decode step at a time over the FP8 KV cache (where the scale's rounding
acts). Deterministic: one pass per variant; intervals are bootstrap 95% intervals over rows of
the paired difference to the reference (FP8 weights, KV cache in bfloat16). Also reported: per
layer, Q's amax over max(K, V)'s amax on the same text, and the share of Q values that
saturate under the unclamped scale.

    .venv/bin/python benchmarks/fp8_kv_scale.py   # ~12 min on 2 loaded CPU cores (+5 calibrating)

    .venv/bin/python benchmarks/fp8_kv_scale.py --render-from benchmarks/results/fp8_kv_scale.json

Writes benchmarks/results/fp8_kv_scale.json and the .md rendered from it (benchmarks/results.py);
the last stdout line is the JSON. `--render-from` measures nothing: it rebuilds the record from
an earlier result file, keeping that measurement's command, commit, date and processor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import results  # noqa: E402  (benchmarks/results.py, beside this script)

VARIANTS = {
    # name: (KV cache FP8, clamp the legacy scale, FP8 context FMHA)
    "kv-bf16 (reference)": (False, False, False),
    "unclamped, fmha off": (True, False, False),
    "unclamped, fmha on": (True, False, True),
    "clamped, fmha off": (True, True, False),
    "clamped, fmha on": (True, True, True),
}


def fp8_checkpoint(base: Path, dest: Path, args: argparse.Namespace) -> Path:
    """Model-Optimizer FP8 export (weights, activations, KV cache) of `base`, cached in `dest`."""
    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.export.hf_fp8 import export_hf_fp8

    if (dest / "hf_quant_config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    export_hf_fp8(
        base,
        tmp,
        calibration=DataRef(source=args.data, split="train"),
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len,
        kv_cache_fp8=True,
    )
    tmp.rename(dest)
    return dest


def legacy_tensors(tensors: dict, clamp: bool) -> dict:
    """The checkpoint's tensors with each layer's K and V scale set to the one scale a legacy
    TensorRT-LLM checkpoint carries (`export.trtllm_ckpt.legacy_kv_cache_scale`)."""
    from minitron_deploy.export.hf_fp8 import kv_cache_scales
    from minitron_deploy.export.trtllm_ckpt import legacy_kv_cache_scale

    out = dict(tensors)
    for i, (k, v) in kv_cache_scales(tensors).items():
        s = legacy_kv_cache_scale(k, v, clamp=clamp).reshape(())
        out[f"model.layers.{i}.self_attn.k_proj.k_scale"] = s
        out[f"model.layers.{i}.self_attn.v_proj.v_scale"] = s
    return out


class _Recording:
    """Wraps an engine's `_fmha_fp8` to record, per layer, amax of Q, K, V and how many Q
    values saturate (|Q| > 448 x the Q scale)."""

    def __init__(self, engine):
        import torch

        self.stats: dict[int, dict[str, float]] = {}
        inner = engine._fmha_fp8

        def wrapped(i, q, k, v):
            ks, vs = engine.kv_scales[i]
            qs = torch.maximum(ks, vs)
            st = self.stats.setdefault(i, {"q": 0.0, "k": 0.0, "v": 0.0, "clip": 0, "n": 0})
            st["q"] = max(st["q"], float(q.abs().max()))
            st["k"] = max(st["k"], float(k.abs().max()))
            st["v"] = max(st["v"], float(v.abs().max()))
            st["clip"] += int((q.float().abs() > 448.0 * qs).sum())
            st["n"] += q.numel()
            return inner(i, q, k, v)

        engine._fmha_fp8 = wrapped


def bootstrap(diffs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `diffs` (resampled rows)."""
    import random

    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


NAME = "fp8_kv_scale"
TITLE = "FP8 KV-cache scale and FP8 context FMHA (legacy TensorRT-LLM path)"
PROVENANCE = ("command", "processor", "threads", "git_commit", "date", "benchmark")


def build_record(measured: dict, argv: list[str] | None = None) -> dict:
    """The result record (benchmarks/results.py) of the measured data: `variants`, `q_vs_kv`,
    the settings and the decision, all kept in `results`; the variants table as printed."""
    s = measured["settings"]
    rows = []
    for name, v in measured["variants"].items():
        d = v["delta_all_vs_reference"]
        rows.append(
            [
                name,
                f"{v['context_loss']:.5f}",
                f"{v['decode_loss']:.5f}",
                f"{v['loss']:.5f}",
                f"{d['mean']:+.5f} [{d['low']:+.5f}, {d['high']:+.5f}]",
            ]
        )
    lq = measured["q_vs_kv"]
    notes = [
        f"Model: {measured['model']}, FP8 (Model-Optimizer {measured['modelopt']}) calibrated on "
        f"{s['data']} train split, {s['calib_samples']} x {s['calib_seq_len']} tokens. Scored "
        f"on its validation split: {s['rows']} rows x {s['seq_len']} tokens, the first "
        f"{s['context_len']} in one context pass, the rest one decode step at a time; losses "
        "in nats per token; intervals: bootstrap 95% over rows of the paired difference to "
        "the reference.",
        f"Q amax above max(K, V) amax in {lq['layers_q_above']} of {lq['layers']} layers "
        f"(largest ratio {lq['max_ratio']:.3f}); unclamped scale, FP8 context FMHA: "
        f"{lq['clipped_share']:.2e} of Q values saturate (in {lq['layers_clipped']} layers). "
        f"Legacy scales: unclamped {lq['scale_min']:.4f}..{lq['scale_max']:.4f}; clamped, all "
        f"{lq['clamped_min']:.1f}..{lq['clamped_max']:.1f}.",
        f"Decision in the code: {measured['decision']}",
    ]
    return results.record(
        NAME,
        title=TITLE,
        results={k: v for k, v in measured.items() if k not in PROVENANCE},
        dtype=s["dtype"],
        threads=measured["threads"],
        tables={
            "main": {"title": "Loss per variant (nats per token)"}
            | results.table(
                [
                    "variant",
                    "context loss",
                    "decode loss",
                    "all tokens",
                    "vs reference (95% interval)",
                ],
                rows,
                ["l", "r", "r", "r", "r"],
            )  # fmt: skip
        },
        notes=notes,
        argv=argv,
    )


def render_from(path: Path, argv: list[str]) -> dict:
    """The record of a committed result file, measured earlier: in this script's older form
    (the measured data with its provenance beside it) or already a record."""
    old = json.loads(path.read_text())
    if "results" in old and "tables" in old:  # a record: its `results` are the measured data
        measured = {**old["results"], "threads": old["threads"]}
        prov = old
    else:
        measured, prov = old, old
    rec = build_record(measured, argv)
    return results.rerendered(rec, prov, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="built-in model name")
    p.add_argument("--data", default="builtin:python-stdlib")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--context-len", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", help="engine compute dtype (TensorRT-LLM's)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default; 1 is fastest on a shared, loaded machine)",
    )
    p.add_argument("--workdir", default=str(REPO_ROOT / "work" / "fp8_kv_scale"))
    p.add_argument("--no-write", action="store_true", help="print only, write no result files")
    results.add_render_from(p)
    args = p.parse_args(argv)
    this_argv = [__file__, *(sys.argv[1:] if argv is None else argv)]
    if args.render_from:
        rec = render_from(args.render_from.resolve(), this_argv)
        if not args.no_write:
            results.write(rec)
        print(json.dumps(rec))
        return 0

    import modelopt
    import torch

    from minitron_deploy.data.refs import DataRef, load_tokens
    from minitron_deploy.engines.torch_engine import TorchEngine
    from minitron_deploy.export.hf_fp8 import read_fp8_state
    from minitron_deploy.export.trtllm_ckpt import KV_SCALE_DECISION
    from minitron_deploy.model.teacher import builtin_model

    if args.threads:
        torch.set_num_threads(args.threads)
    base = builtin_model(args.model)
    t0 = time.time()
    ckpt = fp8_checkpoint(base, Path(args.workdir) / f"{args.model}-fp8-kv", args)
    print(f"FP8 checkpoint {ckpt} ({time.time() - t0:.0f} s)", file=sys.stderr)
    cfg, tensors = read_fp8_state(ckpt)
    rows = load_tokens(
        base, DataRef(source=args.data, split="validation"), num_samples=args.rows,
        seq_len=args.seq_len,
    )  # fmt: skip
    variants, per_row, recording = {}, {}, None
    for name, (kv_fp8, clamp, fmha) in VARIANTS.items():
        t1 = time.time()
        eng = TorchEngine(
            None,
            config=cfg,
            state_dict=legacy_tensors(tensors, clamp) if kv_fp8 else tensors,
            dtype=args.dtype,
            kv_cache_dtype="fp8" if kv_fp8 else "compute",
            fp8_context_fmha=fmha,
        )
        if fmha and not clamp:
            recording = _Recording(eng)
        nll = eng.score(rows.tolist(), args.context_len)  # all rows as one batch
        c = args.context_len - 1
        per_row[name] = nll.mean(1).tolist()
        variants[name] = {
            "context_loss": float(nll[:, :c].mean()),
            "decode_loss": float(nll[:, c:].mean()),
            "loss": float(nll.mean()),
            "seconds": round(time.time() - t1, 1),
        }
        print(f"{name}: {variants[name]}", file=sys.stderr)
    ref = per_row["kv-bf16 (reference)"]
    for name, v in variants.items():
        diffs = [a - b for a, b in zip(per_row[name], ref, strict=True)]
        lo, hi = bootstrap(diffs)
        v["delta_all_vs_reference"] = {"mean": sum(diffs) / len(diffs), "low": lo, "high": hi}
        v["per_row_loss"] = per_row[name]
    from minitron_deploy.export.hf_fp8 import kv_cache_scales
    from minitron_deploy.export.trtllm_ckpt import legacy_kv_cache_scale

    scales = kv_cache_scales(tensors)
    raw = [float(legacy_kv_cache_scale(k, v, clamp=False)) for k, v in scales.values()]
    clamped = [float(legacy_kv_cache_scale(k, v, clamp=True)) for k, v in scales.values()]
    st = recording.stats
    ratios = [st[i]["q"] / max(st[i]["k"], st[i]["v"]) for i in sorted(st)]
    q_vs_kv = {
        "layers": len(ratios),
        "layers_q_above": sum(r > 1 for r in ratios),
        "max_ratio": max(ratios),
        "per_layer_ratio": ratios,
        "clipped_share": sum(s["clip"] for s in st.values()) / sum(s["n"] for s in st.values()),
        "layers_clipped": sum(s["clip"] > 0 for s in st.values()),
        "scale_min": min(raw),
        "scale_max": max(raw),
        "clamped_min": min(clamped),
        "clamped_max": max(clamped),
    }
    measured = {
        "benchmark": NAME,
        "model": args.model,
        "modelopt": modelopt.__version__,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("workdir", "no_write", "render_from")
        },
        "variants": variants,
        "q_vs_kv": q_vs_kv,
        "decision": KV_SCALE_DECISION,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ},
    }
    rec = build_record(measured, this_argv)
    print(results.markdown(rec), file=sys.stderr)
    if not args.no_write:
        results.write(rec)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
