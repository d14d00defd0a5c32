"""Scale rehearsal: the published Llama shapes (1B, 3B, 8B, random weights) through every CPU
stage of the pipeline, with peak memory and time measured from outside each stage's process.

For each shape: `fetch random:SHAPE` (seeded bf16 weights, real config, 5 GB shards), importance
(a few short calibration sequences, one decoder layer at a time), width and depth pruning to the
Minitron targets (8B: hidden 3072 / FFN 9216, or 16 layers; 1B and 3B at the same ratios),
the HF, HF-FP8 and TensorRT-LLM (bf16, tp 1 and 2) exports with their read-back, a Triton
package; on 1B also a short bench and 2 distillation steps of the 1B teacher and its
width-pruned student. Each stage is one `minitron-deploy` child process; a sampler reads
VmRSS of the child and every descendant from /proc every 50 ms, and `os.wait4` gives the
child's own peak (ru_maxrss): the peak is the larger. Outputs are deleted once measured
(the 8B source is 16 GB; at most ~33 GB are on disk at once).

Reported per stage x shape: peak RSS, RSS / the checkpoint's weight bytes, the streaming bound
(1.5 GB + 2 x the largest tensor) where it applies, seconds, and seconds per billion
parameters; the log-log slope of time against parameters from 1B to 8B; the distillation
memory planner's prediction (distill/memory.py, world size 1) against the measured peak; and
each stage's least memory as `plan --source-shape` states it (`model/footprint.py`) at 8B
(beside the measured peak) and 70B. One run per cell (a stage of the 8B shape takes minutes):
times on a shared 2-core machine are indicative; the memory peaks do not depend on load.

    nice -n 5 .venv/bin/python benchmarks/scale_rehearsal.py            # ~45 min, 33 GB disk
    .venv/bin/python benchmarks/scale_rehearsal.py --shapes llama-3.2-1b --scratch /tmp/s
    .venv/bin/python benchmarks/scale_rehearsal.py \
        --render-from benchmarks/results/scale_rehearsal.json

Writes benchmarks/results/scale_rehearsal.json and the .md rendered from it; the last stdout
line is the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import results  # noqa: E402  (benchmarks/results.py, beside this script)

GB = 1e9
SHAPES = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")
# Minitron-4B's targets for 8B (width: hidden 3072, FFN 9216; depth: 16 of 32 layers) and the
# same ratios for 1B and 3B (hidden x 0.75, FFN x 0.64 rounded to 128, half the layers).
TARGETS = {
    "llama-3.2-1b": dict(hidden=1536, ffn=5248, layers=8),
    "llama-3.2-3b": dict(hidden=2304, ffn=5248, layers=14),
    "llama-3.1-8b": dict(hidden=3072, ffn=9216, layers=16),
}
CALIB = dict(samples=2, seq_len=64)  # importance and FP8 calibration: a few short sequences
DATA = "builtin:pydoc-topics"
IMP_LABEL = f"importance (rehearsal {CALIB['samples']} x {CALIB['seq_len']})"
ORDER = (
    "fetch",
    "importance",
    "prune width",
    "prune depth",
    "export hf",
    "export trtllm tp1",
    "export trtllm tp2",
    "export hf-fp8",
    "export hf-fp8 layerwise",
    "package",
    "bench",
    "distill 2 steps",
)
STREAMED = ("prune width", "prune depth", "export hf", "export trtllm tp1", "export trtllm tp2")


def tree_rss(pid: int) -> int:
    """Sum of VmRSS (bytes) of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run `cmd` as a child; its peak RSS (sampled tree sum, and wait4's ru_maxrss) and time."""
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(proc.pid))
                done.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.time() - t0
    return {
        "rc": proc.returncode,
        "seconds": round(secs, 2),
        "peak_rss": max(peak[0], usage.ru_maxrss * 1024),
        "sampled_rss": peak[0],
        "maxrss": usage.ru_maxrss * 1024,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "command": " ".join(cmd[2:]),
        "log_tail": log.read_text()[-600:] if proc.returncode else "",
    }


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def save_partial(args: argparse.Namespace, shapes: list[dict]) -> None:
    """This process's measurements so far, for --combine."""
    args.partial.write_text(
        json.dumps(
            {
                "shapes": shapes,
                "fp8_shapes": args.fp8_shapes,
                "command": args.command,
                "started": args.started,
                "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


def rehearse(shape: str, scratch: Path, args: argparse.Namespace, log) -> dict:
    """Every stage of one shape; returns {stage: measurement} and the shape's facts."""
    from minitron_deploy.model.random_init import random_config
    from minitron_deploy.model.shapes import LlamaShape
    from minitron_deploy.model.stream import llama_specs

    cfg = random_config(shape)
    s = LlamaShape.from_config(cfg)
    specs = llama_specs(cfg)
    weights = sum(x.nbytes for x in specs)
    largest = max(x.nbytes for x in specs)
    t = TARGETS[shape]
    facts = {
        "params": s.num_parameters,
        "weights_bytes": weights,
        "largest_tensor_bytes": largest,
        "bound_bytes": int(1.5 * GB + 2 * largest),
    }
    root = scratch / shape
    if not args.keep_root:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    py = [sys.executable, "-m", "minitron_deploy.cli"]
    src, scores = root / "src", root / "scores"
    out: dict[str, dict] = {}

    def stage(name: str, argv: list[str], *, clean: Path | None = None) -> dict:
        log(f"{shape}: {name} ...")
        m = measure([*py, *argv], root / f"{name.replace(' ', '_')}.log", env)
        out[name] = m
        if args.partial:  # what is measured so far survives an interrupted run
            save_partial(args, [*args.done_shapes, {"shape": shape, "stages": out, **facts}])
        log(
            f"{shape}: {name}: rc {m['rc']}, {m['seconds']:.1f} s, peak RSS "
            f"{m['peak_rss'] / GB:.2f} GB"
        )
        if m["rc"]:
            log(m["log_tail"])
        if clean is not None:
            shutil.rmtree(clean, ignore_errors=True)
        return m

    calib = ["--num-samples", str(CALIB["samples"]), "--seq-len", str(CALIB["seq_len"])]
    width, depth = root / "width", root / "depth"
    keep_width = shape == "llama-3.2-1b" and not args.no_distill
    plan = {
        "fetch": (["fetch", f"random:{shape}", "--out", str(src)], None),
        "importance": (
            [
                "importance",
                "--model",
                str(src),
                "--data",
                DATA,
                "--out",
                str(scores),
                *calib,
                "--micro-batch",
                "2",
                "--layer-sequential",
                "true",
            ],
            None,
        ),
        "prune width": (
            [
                "prune",
                "--model",
                str(src),
                "--scores",
                str(scores),
                "--hidden-size",
                str(t["hidden"]),
                "--intermediate-size",
                str(t["ffn"]),
                "--out",
                str(width),
            ],
            None if keep_width else width,
        ),
        "prune depth": (
            [
                "prune",
                "--model",
                str(src),
                "--scores",
                str(scores),
                "--num-layers",
                str(t["layers"]),
                "--layer-metric",
                "block_importance",
                "--out",
                str(depth),
            ],
            depth,
        ),
        "export hf": (
            ["export", "--model", str(src), "--format", "hf", "--out", str(root / "hf")],
            root / "hf",
        ),
        **{
            f"export trtllm tp{tp}": (
                [
                    "export",
                    "--model",
                    str(src),
                    "--format",
                    "trtllm-ckpt",
                    "--tp",
                    str(tp),
                    "--out",
                    str(root / f"trt{tp}"),
                ],
                root / f"trt{tp}",
            )
            for tp in (1, 2)
        },
        "export hf-fp8": (
            [
                "export",
                "--model",
                str(src),
                "--format",
                "hf-fp8",
                "--calib-data",
                DATA,
                "--calib-samples",
                str(CALIB["samples"]),
                "--calib-seq-len",
                str(CALIB["seq_len"]),
                "--out",
                str(root / "fp8"),
            ],
            root / "fp8",
        ),
        "export hf-fp8 layerwise": (
            [
                "export",
                "--model",
                str(src),
                "--format",
                "hf-fp8",
                "--calib-data",
                DATA,
                "--calib-samples",
                str(CALIB["samples"]),
                "--calib-seq-len",
                str(CALIB["seq_len"]),
                "--layer-sequential",
                "true",
                "--out",
                str(root / "fp8l"),
            ],
            root / "fp8l",
        ),
        "package": (
            [
                "package",
                "triton",
                "--model",
                str(src),
                "--backend",
                "torch",
                "--out",
                str(root / "repo"),
            ],
            root / "repo",
        ),
        "bench": (
            [
                "bench",
                "--model",
                str(src),
                "--matrix",
                "16/16",
                "--batch",
                "1",
                "--warmup",
                "1",
                "--repeats",
                "3",
                "--json",
            ],
            None,
        ),
    }
    for name in args.order:
        if name == "export hf-fp8" and shape not in args.fp8_shapes:
            continue
        if name == "bench" and shape != "llama-3.2-1b":
            continue
        if name == "distill 2 steps":
            if keep_width and (width / "config.json").is_file():
                out["distill planner"] = distill(src, width, root, stage, log)
            continue
        if name in plan:
            stage(name, plan[name][0], clean=plan[name][1])
    if not args.keep_root:
        shutil.rmtree(root, ignore_errors=True)
    return {"shape": shape, "stages": out, **facts}


DISTILL = dict(steps=2, global_batch=2, micro_batch=1, seq_len=128)


def distill(teacher: Path, student: Path, root: Path, stage, log) -> dict:
    """2 steps of the 1B pair, after comparing the planner's prediction with what is free."""
    from minitron_deploy.distill.memory import CUDA_OVERHEAD, estimate_memory

    est = estimate_memory(
        teacher, student, 1, DISTILL["micro_batch"], DISTILL["seq_len"], teacher_sharded=False
    )
    plan = {
        "predicted_bytes": est["total_bytes"],
        "predicted_host_bytes": est["total_bytes"] - CUDA_OVERHEAD,
        "components": est["components"],
        "available_before": mem_available(),
    }
    if plan["predicted_host_bytes"] > 0.95 * plan["available_before"]:
        plan["not_run"] = (
            f"not run: {plan['available_before'] / GB:.1f} GB available, the planner predicts "
            f"{plan['predicted_host_bytes'] / GB:.1f} GB on the host (needs 5% to spare)"
        )
        log(f"distill: not run ({plan['not_run']})")
        return plan
    d = DISTILL
    stage(
        "distill 2 steps",
        [
            "distill",
            "--teacher",
            str(teacher),
            "--student",
            str(student),
            "--data",
            DATA,
            "--out",
            str(root / "kd"),
            "--steps",
            str(d["steps"]),
            "--global-batch",
            str(d["global_batch"]),
            "--micro-batch",
            str(d["micro_batch"]),
            "--seq-len",
            str(d["seq_len"]),
            "--eval-every",
            "0",
            "--eval-samples",
            "1",
            "--checkpoint-every",
            "100",
            "--no-teacher-check",
            "--no-progress",
            "--warmup-steps",
            "1",
        ],
        clean=root / "kd",
    )
    return plan


def needs(shape: str) -> dict:
    """Least host memory per stage as `plan --source-shape` states it (model/footprint.py)."""
    from minitron_deploy.model import footprint as fp
    from minitron_deploy.model.shapes import KNOWN_SHAPES, LlamaShape

    s = LlamaShape.from_config(KNOWN_SHAPES[shape])
    return {
        "prune": fp.streamed_peak_bytes(s, read_back=False),
        "export (bf16)": fp.streamed_peak_bytes(s),
        "package": fp.BASE_BYTES,
        "importance (default 1024 x 512)": fp.layer_sequential_peak_bytes(s, 1024, 512, 8),
        IMP_LABEL: fp.layer_sequential_peak_bytes(s, CALIB["samples"], CALIB["seq_len"], 2),
        "export hf-fp8 (default 512 x 512)": fp.layer_sequential_peak_bytes(s, 512, 512, 1),
        "weights_bytes": 2 * s.num_parameters,
    }


def slope(t1: float, t8: float, p1: int, p8: int) -> float:
    return math.log(t8 / t1) / math.log(p8 / p1)


def build_record(measured: dict, argv: list[str] | None = None) -> dict:
    shapes = measured["shapes"]
    names = ORDER
    rows = []
    for name in names:
        for sh in shapes:
            m = sh["stages"].get(name)
            if m is None:
                continue
            ok = m["rc"] == 0
            bound = sh["bound_bytes"] if name in STREAMED else None
            rows.append(
                [
                    name,
                    sh["shape"],
                    f"{m['peak_rss'] / GB:.2f}" if ok else f"failed (rc {m['rc']})",
                    f"{m['peak_rss'] / sh['weights_bytes']:.2f}" if ok else "",
                    f"{bound / GB:.2f}" if bound else "",
                    ("yes" if m["peak_rss"] <= bound else "NO") if bound and ok else "",
                    f"{m['seconds']:.1f}",
                    f"{m['seconds'] / (sh['params'] / 1e9):.1f}",
                ]
            )
    main = results.table(
        [
            "stage",
            "shape",
            "peak RSS GB",
            "RSS / weights",
            "bound GB",
            "within",
            "seconds",
            "s / B params",
        ],
        rows,
        ["l", "l", "r", "r", "r", "l", "r", "r"],
    )
    main["title"] = "Peak RSS and time per stage and shape (one run each)"
    by = {sh["shape"]: sh for sh in shapes}
    slopes = []
    if "llama-3.2-1b" in by and "llama-3.1-8b" in by:
        a, b = by["llama-3.2-1b"], by["llama-3.1-8b"]
        for name in names:
            ma, mb = a["stages"].get(name), b["stages"].get(name)
            if ma and mb and ma["rc"] == 0 and mb["rc"] == 0:
                k = slope(ma["seconds"], mb["seconds"], a["params"], b["params"])
                slopes.append([name, f"{ma['seconds']:.1f}", f"{mb['seconds']:.1f}", f"{k:.2f}"])
    slope_t = results.table(
        ["stage", "1B seconds", "8B seconds", "log-log slope"], slopes, ["l", "r", "r", "r"]
    )
    slope_t["title"] = "Time against parameters, 1B -> 8B (goal: slope <= 1.15)"
    need_rows = []
    for shape in ("llama-3.1-8b", "llama-3.1-70b"):
        n = measured["needs"][shape]
        meas = by.get(shape, {}).get("stages", {})
        pairs = {
            "prune": "prune width",
            "export (bf16)": "export hf",
            "package": "package",
            IMP_LABEL: "importance",
        }
        for k, v in n.items():
            if k == "weights_bytes":
                continue
            m = meas.get(pairs.get(k, ""), None)
            need_rows.append(
                [
                    shape,
                    k,
                    f"{v / GB:.1f}",
                    f"{m['peak_rss'] / GB:.2f}" if m and m["rc"] == 0 else "",
                ]
            )
    need_t = results.table(
        ["shape", "stage", "plan: memory to provision GB", "measured peak GB"],
        need_rows,
        ["l", "l", "r", "r"],
    )
    need_t["title"] = "What a stage needs (plan --source-shape; model/footprint.py)"
    tables = {"main": main, "slope": slope_t, "needs": need_t}
    planner = by.get("llama-3.2-1b", {}).get("stages", {}).get("distill planner")
    kd = by.get("llama-3.2-1b", {}).get("stages", {}).get("distill 2 steps")
    if planner:
        meas = kd["peak_rss"] if kd and kd["rc"] == 0 else None
        prow = [
            "1B teacher + width student, micro-batch 1 x 128, world 1",
            f"{planner['predicted_bytes'] / GB:.2f}",
            f"{planner['predicted_host_bytes'] / GB:.2f}",
            f"{meas / GB:.2f}"
            if meas
            else (
                f"not run: {planner['available_before'] / GB:.1f} GB free"
                if "not_run" in planner
                else "failed"
            ),
            f"{(planner['predicted_bytes'] - meas) / meas:+.0%}" if meas else "",
        ]
        pt = results.table(
            [
                "pair",
                "planner GB",
                "planner less CUDA overhead GB",
                "measured peak GB",
                "planner vs measured",
            ],
            [prow],
            ["l", "r", "r", "r", "r"],
        )
        pt["title"] = "Distillation memory planner vs measured peak (goal: within 20%)"
        tables["planner"] = pt
    res = {
        "shapes": shapes,
        "needs": measured["needs"],
        "calibration": CALIB,
        "targets": TARGETS,
        "distill": DISTILL,
    }
    return results.record(
        "scale_rehearsal",
        title="Scale rehearsal: Llama 1B / 3B / 8B shapes (random weights) on a 24 GB CPU host",
        results=res,
        dtype="bfloat16 weights; compute dtype auto",
        threads=measured.get("threads"),
        tables=tables,
        notes=measured.get("notes", []),
        argv=argv,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated published shapes")
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch-scale/rehearsal"))
    p.add_argument(
        "--fp8-shapes",
        default="llama-3.2-1b",
        help="shapes whose hf-fp8 export also runs with --layer-sequential auto (Model-Optimizer's "
        "whole-model calibration where it fits); the layer-by-layer one runs on every shape",
    )
    p.add_argument("--no-distill", action="store_true", help="skip the 1B distillation steps")
    p.add_argument(
        "--order",
        default=",".join(ORDER),
        help="the stages to run, in this order (importance before the prunes: they read its "
        "scores; fetch first)",
    )
    p.add_argument(
        "--partial",
        type=Path,
        help="write only these shapes' measurements to this JSON (shapes run in parallel)",
    )
    p.add_argument(
        "--combine",
        help="measure nothing: build the record from --partial files (comma-separated), in order",
    )
    p.add_argument(
        "--keep-root",
        action="store_true",
        help="reuse SCRATCH/SHAPE (its src/ and scores/ from an earlier partial run) and keep it",
    )
    p.add_argument("--note", action="append", default=[], help="a note for the record")
    results.add_render_from(p)
    args = p.parse_args(argv)
    this_argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    if args.render_from:
        old = json.loads(args.render_from.read_text())
        measured = {k: old["results"][k] for k in ("shapes", "needs")}
        measured.update(threads=old["threads"], notes=old["notes"])
        rec = results.rerendered(build_record(measured, this_argv), old, args.render_from)
        results.write(rec)
        print(json.dumps(rec["results"]))
        return 0
    args.fp8_shapes = [x for x in args.fp8_shapes.split(",") if x]
    args.order = [x.strip() for x in args.order.split(",") if x.strip()]

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    import torch

    measured: dict = {"shapes": [], "threads": torch.get_num_threads()}
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine.split(",") if f]
        merged: dict[str, dict] = {}  # one entry per shape; a later part's stages win
        for part in parts:
            for sh in part["shapes"]:
                if sh["shape"] in merged:
                    merged[sh["shape"]]["stages"].update(sh["stages"])
                else:
                    merged[sh["shape"]] = sh
        measured["shapes"] = [merged[k] for k in SHAPES if k in merged]
        measured["partials"] = [
            {k: part[k] for k in ("command", "started", "ended", "load_average")} for part in parts
        ]
        args.fp8_shapes = sorted({s for part in parts for s in part["fp8_shapes"]})
    else:
        args.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.command = " ".join(this_argv)
        args.done_shapes = measured["shapes"]
        for shape in [x for x in args.shapes.split(",") if x]:
            measured["shapes"].append(rehearse(shape, args.scratch, args, log))
        if args.partial:
            save_partial(args, measured["shapes"])
            log(f"wrote {args.partial}")
            return 0
    measured["needs"] = {s: needs(s) for s in ("llama-3.1-8b", "llama-3.1-70b")}
    skipped = [s for s in SHAPES if s not in args.fp8_shapes]
    measured["notes"] = [
        "Random bf16 weights of the published configs (`fetch random:SHAPE`); tokenizer: "
        "SmolLM2-135M's (49,152 ids, all below the 128,256 vocabulary).",
        f"Calibration (importance, FP8): {CALIB['samples']} sequences x {CALIB['seq_len']} "
        f"tokens of {DATA}; importance runs one decoder layer at a time "
        "(--layer-sequential true).",
        "Depth pruning ranks layers by Block Importance from the scores (no forward pass), "
        "so it streams; the loss-ranked choice needs the model and is not part of this table.",
        "Peak RSS: max of the 50 ms sampled VmRSS sum over the stage's process tree and "
        "wait4's ru_maxrss; it includes file pages mapped while a tensor is read.",
        "hf-fp8 layerwise: calibration, writing and read-back one decoder layer at a time "
        "(--layer-sequential true; the read-back swaps the export's W8A8 linears into each "
        f"layer). hf-fp8 (auto) ran on {args.fp8_shapes or 'no shape'} only"
        + (
            f", not on {skipped}: there auto chooses the layer-by-layer path anyway."
            if skipped
            else "."
        ),
        "One run per cell on a 2-core host (load average at the end below); at 8B the source "
        "(16 GB) and an export no longer fit the page cache together, so stages that read them "
        "more than once wait on the disk.",
    ]
    measured["notes"] += args.note
    for sh in measured["shapes"]:
        for name, m in sh["stages"].items():
            if "rc" in m and m["rc"]:
                measured["notes"].append(
                    f"{sh['shape']} {name} failed: exit {m['rc']} after {m['seconds']:.0f} s at "
                    f"{m['peak_rss'] / GB:.2f} GB peak RSS ({m['command']}); last output: "
                    + " / ".join(m["log_tail"].strip().splitlines()[-2:])
                )
    if measured.get("partials"):
        measured["notes"].append(
            "Measured as runs combined by --combine (a later run's stage replaces an earlier "
            "one's): "
            + "; ".join(
                f"`{p['command']}` {p['started']} - {p['ended']}, load {p['load_average']}"
                for p in measured["partials"]
            )
        )
    rec = build_record(measured, this_argv)
    results.write(rec)
    print(json.dumps(rec["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
