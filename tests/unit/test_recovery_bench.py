"""benchmarks/recovery.py's arithmetic: exact token budgets, the paired intervals against the
teacher (same windows), the arm kept only when its interval clears the default's, and the
tables written from the results (no model runs here)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rec():
    spec = importlib.util.spec_from_file_location("recovery", ROOT / "benchmarks" / "recovery.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("budget", [1_000_000, 250_000, 100_000, 65_536, 4096, 4097, 8191])
def test_budget_is_never_exceeded(rec, budget):
    for over in ({}, {"global_batch": 16}, {"seq_len": 128}):
        cfg = {**rec.BASE, **over}
        steps = rec.steps_for(budget, cfg)
        tokens = steps * rec.per_step(cfg)
        assert tokens <= budget < tokens + rec.per_step(cfg)  # the most whole steps that fit


def test_budget_below_one_step_is_refused(rec):
    with pytest.raises(SystemExit, match="less than one step"):
        rec.steps_for(1000, rec.BASE)


def _pair(rng, shift: float, noise: float = 0.05, n: int = 64):
    """Teacher windows and a student whose loss is the teacher's + shift + small noise."""
    doms = ["manpages", "info-pages", "c-headers", "perl"]
    t = {d: [3.0 + rng.random() for _ in range(n)] for d in doms}
    s = {d: [x + shift + rng.gauss(0, noise) for x in t[d]] for d in doms}
    tt = {"minitron_next_line": [float(rng.random() < 0.7) for _ in range(400)]}
    st = {
        "minitron_next_line": [x if rng.random() < 0.9 else 0.0 for x in tt["minitron_next_line"]]
    }
    return {"loss": t, "tasks": tt}, {"loss": s, "tasks": st}


def test_gap_is_paired_over_the_same_windows(rec):
    teacher, student = _pair(random.Random(0), 0.8)
    s = rec.summarize(student, teacher)
    for dom in ("manpages", "perl", "held-out mean"):
        g = s["loss"][dom]
        assert g["lo"] < 0.8 < g["hi"] and g["lo"] < g["diff"] < g["hi"]
        # paired: the windows' own spread (uniform over 1 nat) does not widen the interval
        assert g["hi"] - g["lo"] < 0.05
    assert s["loss"]["held-out mean"]["n"] == 4 * 64  # every domain's windows pooled
    t = s["tasks"]["minitron_next_line"]
    assert t["lo"] <= t["acc"] <= t["hi"] and t["diff_lo"] <= t["diff"] <= t["diff_hi"] <= 0
    assert t["share"] == pytest.approx(
        t["acc"] / (sum(teacher["tasks"]["minitron_next_line"]) / 400)
    )


def test_windows_must_match(rec):
    teacher, student = _pair(random.Random(1), 0.5)
    student["loss"]["perl"] = student["loss"]["perl"][:-1]
    with pytest.raises(ValueError, match="differ in number"):
        rec.summarize(student, teacher)


def test_an_arm_is_kept_only_when_its_interval_clears_the_default(rec):
    rng = random.Random(2)
    teacher, default = _pair(rng, 1.0)
    _, better = _pair(random.Random(2), 0.9)  # same teacher windows (same seed), 0.1 nat better
    _, same = _pair(random.Random(2), 1.0, noise=0.3)
    comp = {
        "default": {},
        "better": {"vs_default": rec.versus(better, default)},
        "same": {"vs_default": rec.versus(same, default)},
    }
    assert comp["better"]["vs_default"]["held-out mean"]["hi"] < 0
    assert rec.best_arm(comp) == "better"
    assert rec.best_arm({"default": {}, "same": comp["same"]}) == "default"
    # better on the mean but worse (interval above 0) on one domain: not kept
    worse_one = {
        **better,
        "loss": {**better["loss"], "perl": [x + 0.5 for x in better["loss"]["perl"]]},
    }
    assert (
        rec.best_arm({"default": {}, "w": {"vs_default": rec.versus(worse_one, default)}})
        == "default"
    )
    # an arm with a curve of its own must also clear the default curve at its largest point
    gone = {"tokens": 999424, "arm": "better", "loss": rec.versus(same, default)}
    held = {"tokens": 124928, "arm": "better", "loss": rec.versus(better, default)}
    assert rec.best_arm(comp, {"width-better": [held]}) == "better"
    assert rec.best_arm(comp, {"width-better": [held, gone]}) == "default"
    # a curve of its own that could not be paired with the default curve does not confirm it
    assert rec.best_arm(comp, {}, {"better"}) == "default"
    assert rec.best_arm(comp, {"width-better": [held]}, {"better"}) == "better"
    res = {"compare": comp, "curve": {"width-better": [{"arm": "better", "steps": 1}]}}
    assert rec.unconfirmed(res) == ["better"]
    assert rec.unconfirmed({**res, "curve_vs_default": {"width-better": [held]}}) == []


def test_headline_tasks_need_the_teacher_20_points_above_chance(rec):
    tasks = {
        "minitron_next_line": {"acc": 0.6, "lo": 0.55, "hi": 0.65},
        "minitron_cloze_prose": {"acc": 0.47, "lo": 0.42, "hi": 0.52},  # lower end < 0.45
        "minitron_last_word": {"acc": 0.08, "lo": 0.05, "hi": 0.11},  # chance 0: needs 0.20
    }
    assert rec.headline_tasks(tasks) == ["minitron_next_line"]


def test_held_out_domains_are_read_by_no_training_corpus(rec):
    from minitron_deploy.data.corpora import CORPORA, DOMAINS, domains_of

    trained = set(domains_of(rec.TRAIN.split(":", 1)[1]))
    for src in rec.HOLDOUT:
        name = src.split(":", 1)[1]
        assert name in DOMAINS and name not in trained  # kept out whole, not a split of it
    assert len(rec.HOLDOUT) >= 3 and {DOMAINS[s.split(":")[1]].kind for s in rec.HOLDOUT} == {
        "code",
        "prose",
    }
    assert "mixed" in CORPORA


def test_a_claim_excludes_live_processes_and_takes_over_dead_ones(rec, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "arms" / "default.json"
    assert rec.claim(out)  # ours
    lock = out.with_name(out.name + ".lock")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(live.pid))
        assert not rec.claim(out)  # another live process holds it
    finally:
        live.kill()
        live.wait()
    assert rec.claim(out)  # its process is gone: taken over
    assert lock.read_text() == str(__import__("os").getpid())
    rec.release(out)
    assert not lock.exists()


def test_restore_brings_a_records_arms_but_not_those_measured_here(rec, tmp_path):
    """A fresh machine continues from the committed record: its arms (with their paired
    'vs default') go into the work folder marked restored; arms to be measured are left out,
    and the report's collection keeps the restored comparison."""
    import json

    work = tmp_path / "work"
    rec.write_json(work / "settings.json", {"windows": 128, "items": 400})
    record = ROOT / "benchmarks" / "results" / "recovery.json"
    d = json.loads(record.read_text())
    names = set(d["results"]["compare"])
    assert {"default", "corrected"} <= names
    curves = set(d["results"]["curve"])
    assert {"width", "depth"} <= curves
    # curves of a student pruned otherwise than STUDENTS says now are not restored
    former = {c for c, rows in d["results"]["curve"].items() if not rec.current(rows[0])}
    curves -= former
    # the depth curve is measured here: neither its points nor its final scoring come back
    got = rec.restore(work, record, keep={"default", "iterative"}, series={"depth"})
    assert {g for g in got if g.startswith("not curve")} == {
        f"not curve {c} (another student shape)" for c in former
    }
    got = [g for g in got if not g.endswith(("evaluation files", "student shape)"))]
    arms = names - {"default", "iterative"}
    assert set(got) == arms | {f"curve {c}" for c in curves - {"depth"}} | {
        f"final {c}" for c in set(d["results"]["final"]) - {"depth"} - former
    } | {f"shape {c}" for c in d["results"].get("shapes", {})}
    res = rec.collect(work)
    for n in arms:
        assert res["compare"][n]["vs_default"] == d["results"]["compare"][n]["vs_default"]
        assert res["compare"][n]["restored"].startswith("recovery.json (")  # first measured
    # restored arms decide the kept one as arms measured here would (the report names it)
    kept = rec.best_arm(res["compare"], res.get("curve_vs_default"), rec.curved_arms(res))
    assert res["best_arm"] == kept == d["results"]["best_arm"]
    # the restored curves, finals and curve comparisons are the record's, marked restored
    assert set(res["curve"]) == curves - {"depth"}
    for c in curves - {"depth"}:

        def bare(rows):
            return [{k: v for k, v in r.items() if k != "restored"} for r in rows]

        assert bare(res["curve"][c]) == bare(d["results"]["curve"][c])
        assert all(r["restored"].startswith("recovery.json (") for r in res["curve"][c])
    assert "depth" not in res.get("final", {})
    for c in set(d["results"]["final"]) - {"depth"} - former:
        assert res["final"][c]["loss"] == d["results"]["final"][c]["loss"]
    # an arm's curve is set against its student's default curve: none for depth's arms while
    # the depth curve is still to be measured here
    assert res.get("curve_vs_default", {}) == {
        k: v
        for k, v in d["results"].get("curve_vs_default", {}).items()
        if k in curves and d["results"]["curve"][k][0]["student"] != "depth"
    }
    # the rest is there already; a depth point measured here keeps the record's depth out
    rec.write_json(work / "points" / "depth-0.json", {"student": "depth", "budget": 0})
    again = [g for g in rec.restore(work, record, keep=set()) if "evaluation" not in g]
    again = [g for g in again if not g.startswith("not curve")]
    assert again == [n for n in d["results"]["compare"] if n in {"default", "iterative"}]
    assert not (work / "final" / "depth.json").exists()
    rec.write_json(work / "settings.json", {"windows": 512, "items": 400})
    with pytest.raises(SystemExit, match="other windows"):
        rec.restore(work, record, keep=set())


def test_final_scores_each_students_last_point_on_more_windows(rec, tmp_path, monkeypatch):
    """`final` evaluates the run's checkpoint only when it is the last point's (a curve process
    may have moved it on), on --final-windows windows, and the report tabulates the gap with
    its widest per-domain interval. The evaluator is a stand-in (no model runs here)."""
    import argparse
    import json

    rng = random.Random(2)
    teacher, student = _pair(rng, 0.9, n=512)
    seen = []

    class StandInEvaluator:
        def __init__(self, work, teacher_dir, windows, items):
            seen.append(windows)

        def evaluate(self, model_dir, stem, tasks=True):
            assert not tasks and stem.parent.name == "eval-512"
            return {**(teacher if stem.name == "teacher" else student), "tasks": {}}

    monkeypatch.setattr(rec, "Evaluator", StandInEvaluator)
    work = tmp_path / "work"
    for budget, steps in ((0, 0), (100000, 48), (250000, 122)):
        rec.write_json(
            work / "points" / f"width-{budget}.json",
            {"student": "width", "budget": budget, "tokens": steps * 2048, "steps": steps},
        )
    rec.write_json(work / "curve" / "width" / "summary.json", {"steps": 150, "final": "final"})
    args = argparse.Namespace(final_windows=512, items=400, variants="width,depth")
    with pytest.raises(SystemExit, match="let `curve` finish"):
        rec.final(args, work, "teacher")
    rec.write_json(work / "curve" / "width" / "summary.json", {"steps": 122, "final": "final"})
    rec.final(args, work, "teacher")  # depth has no points: skipped
    got = json.loads((work / "final" / "width.json").read_text())
    assert (got["tokens"], got["windows"], seen) == (122 * 2048, 512, [512, 512])
    assert not (work / "final" / "depth.json").exists()
    res = {**rec.collect(work), "curve": {}}  # the stand-in points carry no curve columns
    table = rec.tables(res, {"tasks": {}})["final"]
    row = table["rows"][0]
    doms = ("manpages", "info-pages", "c-headers", "perl")
    widest = max(got["loss"][d]["hi"] - got["loss"][d]["lo"] for d in doms)
    assert row[:3] == ["width", "249,856", "512"] and row[-1] == f"{widest:.3f}" != "0.000"


def test_a_student_folder_pruned_to_other_targets_is_refused(rec, tmp_path, monkeypatch):
    """A work folder keeps each student; one pruned with other arguments (another version's
    width student) is refused, never reused. `sh` is a stand-in for the CLI (no model runs)."""
    calls = []

    def stand_in_sh(args, log):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        return {}

    monkeypatch.setattr(rec, "sh", stand_in_sh)
    out = tmp_path / "students" / "width"
    rec.prune("teacher", tmp_path / "scores", out, rec.STUDENTS["width"], tmp_path / "log")
    rec.prune("teacher", tmp_path / "scores", out, rec.STUDENTS["width"], tmp_path / "log")
    assert len(calls) == 1  # kept and reused for the same targets
    other = ["--hidden-size", "384", "--intermediate-size", "1024", "--num-attention-heads", "6"]
    with pytest.raises(SystemExit, match="new --work folder"):
        rec.prune("teacher", tmp_path / "scores", out, other, tmp_path / "log")
    (out / "prune-args.json").unlink()  # a folder of a version that did not record them
    with pytest.raises(SystemExit, match="older version"):
        rec.prune("teacher", tmp_path / "scores", out, rec.STUDENTS["width"], tmp_path / "log")


def test_one_schedule_keeps_a_checkpoint_at_every_point(rec):
    """--schedule once: one run to the largest point, a checkpoint at each point's step (the
    gcd of their step counts), all kept; points that would need too many are refused."""
    steps = [rec.steps_for(b, rec.BASE) for b in (125_000, 250_000, 500_000, 1_000_000)]
    assert steps == [61, 122, 244, 488]
    cfg = rec.once_config(rec.BASE, steps)
    assert (cfg["checkpoint_every"], cfg["keep_checkpoints"], cfg["eval_every"]) == (61, 8, 61)
    assert all(s % cfg["checkpoint_every"] == 0 for s in steps)
    old = [rec.steps_for(b, rec.BASE) for b in (100_000, 250_000, 500_000, 1_000_000)]
    with pytest.raises(SystemExit, match="pick --points"):
        rec.once_config(rec.BASE, old)  # 48 / 122 / 244 / 488: a checkpoint every 2 steps


def test_a_mid_schedule_checkpoint_becomes_the_model_it_held(
    rec, tiny_tied_ckpt, text_dir, tmp_path
):
    """A real (tiny) distillation keeps checkpoints; `checkpoint_model` turns one into a model
    folder with exactly its weights (in the final model's dtype), and the last step's equals
    the run's final model."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from minitron_deploy.distill.config import DistillConfig
    from minitron_deploy.distill.trainer import run_distillation

    cfg = DistillConfig(steps=4, global_batch=2, micro_batch=2, seq_len=32, lr=1e-2,
                        warmup_steps=1, eval_every=0, eval_samples=2, checkpoint_every=2,
                        keep_checkpoints=2, teacher_check=False)  # fmt: skip
    run = tmp_path / "run"
    run_distillation(
        tiny_tied_ckpt, tiny_tied_ckpt, run, cfg, train_data=str(text_dir), progress=False
    )
    final = LlamaForCausalLM.from_pretrained(run / "final")
    dtype = next(final.parameters()).dtype
    for step in (2, 4):
        got = LlamaForCausalLM.from_pretrained(rec.checkpoint_model(run, step))
        want = load_file(str(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))
        sd = got.state_dict()
        for k, v in want.items():
            assert torch.equal(sd[k.removeprefix("student.")], v.to(dtype)), k
    last = LlamaForCausalLM.from_pretrained(rec.checkpoint_model(run, 4)).state_dict()
    for k, v in final.state_dict().items():
        assert torch.equal(last[k], v), k
    mid = LlamaForCausalLM.from_pretrained(run / "at" / "step_000002").state_dict()
    assert not torch.equal(mid["model.norm.weight"], last["model.norm.weight"])  # trained on
    with pytest.raises(SystemExit, match="no checkpoint at step 3"):
        rec.checkpoint_model(run, 3)


def test_a_curve_keeps_one_schedule_per_student(rec, tmp_path, monkeypatch):
    """Points of a student trained on one schedule are not continued on the other (their
    numbers would not be one curve). `students` is a stand-in (no model runs here)."""
    import argparse

    monkeypatch.setattr(rec, "students", lambda work, teacher, log, names: {})
    work = tmp_path / "work"
    rec.write_json(work / "points" / "width-0.json", {"student": "width", "steps": 0})
    rec.write_json(work / "points" / "width-100000.json", {"student": "width", "steps": 48})
    args = argparse.Namespace(
        variants="width", recipe="default", tokens=50000, max_minutes=0.0,
        points="125000,250000,500000,1000000", schedule="once", arm="default",
    )  # fmt: skip
    with pytest.raises(SystemExit, match="on --schedule extend"):
        rec.curve(args, work, "teacher", None, tmp_path / "log")
    args.arm = "batch4"  # another arm is its own curve: the default's points do not bind it
    rec.curve(args, work, "teacher", None, tmp_path / "log")  # max_minutes 0: stops at once
    (work / "points" / "width-100000.json").unlink()  # only the untrained point: any schedule
    rec.write_json(
        work / "points" / "width-batch4-100000.json",
        {"student": "width", "arm": "batch4", "steps": 97},
    )
    args.arm = "default"
    rec.curve(args, work, "teacher", None, tmp_path / "log")
    args.arm = "batch4"
    with pytest.raises(SystemExit, match="holds width-batch4 points on --schedule extend"):
        rec.curve(args, work, "teacher", None, tmp_path / "log")


def test_the_curves_teacher_is_the_corrected_arms_one_correction_per_length(
    rec, tmp_path, monkeypatch
):
    """`curve --recipe corrected` distils from the teacher corrected at the compare budget, in
    the folder compare's corrected arm uses for that length (one corrected teacher per length,
    never one run extended to another length). `distill` and `students` are stand-ins."""
    import argparse

    calls = []

    def distill(teacher, student, out, cfg, steps, log):
        calls.append((student, out, steps, cfg.get("teacher_correction", False), cfg["lr"]))
        return {"steps": steps}

    monkeypatch.setattr(rec, "distill", distill)
    monkeypatch.setattr(rec, "students", lambda work, teacher, log, names: {})
    work = tmp_path / "work"
    args = argparse.Namespace(
        variants="width", recipe="corrected", tokens=125000, max_minutes=0.0,
        points="125000,250000,500000,1000000", schedule="once", arm="default",
    )  # fmt: skip
    rec.curve(args, work, "teacher", None, tmp_path / "log")  # max_minutes 0: stops at once
    assert calls == [(None, work / "teacher-corrected-61", 61, True, rec.CORRECTION_LR)]
    assert (
        rec.correct("teacher", work, 24, tmp_path / "log")
        == work / "teacher-corrected-24" / "final"
    )
    assert calls[-1][1:3] == (work / "teacher-corrected-24", 24)
    args.recipe = "default"  # from the teacher as it is: nothing corrected
    rec.curve(args, work, "teacher", None, tmp_path / "log")
    assert len(calls) == 2
    args.arm = "long-correction"  # corrects for the curve's whole run (488 steps to 1M)
    with pytest.raises(SystemExit, match="with --recipe corrected"):
        rec.curve(args, work, "teacher", None, tmp_path / "log")
    args.recipe = "corrected"
    rec.curve(args, work, "teacher", None, tmp_path / "log")
    assert calls[-1] == (None, work / "teacher-corrected-488", 488, True, rec.CORRECTION_LR)
    assert "correction" not in rec.arm_config("long-correction", work, "teacher")  # no flag
    with pytest.raises(SystemExit, match="run it as curve --arm long-correction"):
        rec.compare(
            argparse.Namespace(tokens=125000, arms="long-correction"), work, "t", None, tmp_path
        )


def test_the_code_mix_arm_reads_more_code_and_no_held_out_domain(rec, tmp_path):
    """The code-mix arm: the long-correction teacher (a curve-only arm: compare refuses it)
    distilled on builtin:mixed twice plus the standard library's code, so that code is a larger
    share of the training bytes than in builtin:mixed; it reads no held-out domain's file."""
    import argparse

    from minitron_deploy.data.corpora import corpus_files
    from minitron_deploy.data.text import source_bytes, source_parts

    cfg = rec.arm_config("code-mix", tmp_path, "teacher")
    assert "correction" not in cfg and "code-mix" in rec.CURVE_ONLY
    read = {f for _, files in source_parts(cfg["data"]) for f, _ in files}
    held = {f for h in rec.HOLDOUT for _, files in corpus_files(rec.label(h)) for f, _ in files}
    assert read and not read & held
    code = dict(corpus_files("mixed"))["python-code"]
    mixed_share = sum(f.stat().st_size for f, _ in code) / source_bytes(rec.TRAIN)
    arm_share = (
        2 * sum(f.stat().st_size for f, _ in code) + source_bytes("builtin:python-code")
    ) / (source_bytes(cfg["data"]))
    assert arm_share > mixed_share + 0.05
    with pytest.raises(SystemExit, match="run it as curve --arm code-mix"):
        rec.compare(
            argparse.Namespace(tokens=125000, arms="code-mix"), tmp_path, "t", None, tmp_path
        )


def test_the_fp32_arm_distils_the_default_recipe_in_float32(rec, tmp_path):
    """The fp32 arm: the long-correction teacher (curve-only), then the default recipe with
    `distill --dtype float32` (no bf16 autocast) and nothing else changed."""
    cfg = rec.arm_config("fp32", tmp_path, "teacher")
    assert "fp32" in rec.CURVE_ONLY and cfg == {**rec.BASE, "dtype": "float32"}
    flags = rec.flags(cfg)
    assert flags[flags.index("--dtype") + 1] == "float32"


def test_the_cxx_diagnostic_arm_adds_cxx_headers_and_reads_no_held_out_file(rec, tmp_path):
    """The cxx-diagnostic arm (curve-only, not a recipe) trains on builtin:mixed plus torch's
    C++ headers, about a third of the bytes, and reads no file of a held-out domain."""
    from minitron_deploy.data.corpora import corpus_files
    from minitron_deploy.data.text import source_bytes, source_parts

    cfg = rec.arm_config("cxx-diagnostic", tmp_path, "teacher")
    assert "cxx-diagnostic" in rec.CURVE_ONLY and rec.C10_HEADERS.is_dir()
    read = {f for _, files in source_parts(cfg["data"]) for f, _ in files}
    held = {f for h in rec.HOLDOUT for _, files in corpus_files(rec.label(h)) for f, _ in files}
    assert any(f.suffix == ".h" for f in read) and not read & held
    share = 6 * source_bytes(str(rec.C10_HEADERS)) / source_bytes(cfg["data"])
    assert 0.2 < share < 0.5


def test_a_points_task_share_gets_its_paired_interval_from_the_items(rec, tmp_path):
    """`collect` gives each curve point's share of the teacher's accuracy a paired interval
    over items, from the per-item scores (measured or restored); a point without them keeps the
    share alone. Evaluations are stand-in files (no model runs here)."""
    work = tmp_path / "work"
    teacher = [1.0, 1.0, 0.0, 1.0] * 100
    student = [1.0, 0.0, 0.0, 1.0] * 100
    rec.write_json(work / "eval" / "teacher.tasks.json", {"tasks": {"minitron_next_line": teacher}})
    for budget in (125000, 250000):
        loss = {"perl": [2.0, 3.0]}
        summ = rec.summarize({"loss": loss, "tasks": {"minitron_next_line": student}},
                             {"loss": loss, "tasks": {"minitron_next_line": teacher}})  # fmt: skip
        row = {"student": "width", "budget": budget, "tokens": budget, "steps": 1, **summ}
        rec.write_json(work / "points" / f"width-{budget}.json", row)
    stem = work / "eval" / "curve-width-125000.tasks.json"
    rec.write_json(stem, {"tasks": {"minitron_next_line": student}})
    rows = rec.collect(work)["curve"]["width"]
    with_items, without = (r["tasks"]["minitron_next_line"] for r in rows)
    assert with_items["share"] == pytest.approx(2 / 3)
    assert with_items["share_lo"] < 2 / 3 < with_items["share_hi"]
    assert rec.share_cell(with_items).startswith("67% [")
    assert "share_lo" not in without and rec.share_cell(without) == "67%"


def test_next_line_is_split_by_the_source_of_its_items(rec, tmp_path):
    """The report splits next-line accuracy by where its items come from (the item id's
    prefix), for the teacher and each curve's last point. Items and scores are stand-in files."""
    work = tmp_path / "work"
    ids = [{"id": f"include:a{i}.h#0"} for i in range(4)] + [
        {"id": f"perl:B{i}.pm#0"} for i in range(4)
    ]
    rec.write_json(work / "items-8.json", {"minitron_next_line": ids})
    teacher = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    student = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    rec.write_json(work / "eval" / "teacher.tasks.json", {"tasks": {"minitron_next_line": teacher}})
    rec.write_json(
        work / "eval" / "curve-width-1000000.tasks.json", {"tasks": {"minitron_next_line": student}}
    )
    cur = {"width": [{"budget": 0, "tokens": 0}, {"budget": 1000000, "tokens": 999424}]}
    t_items = {"minitron_next_line": teacher}
    got = rec.next_line_sources(work, cur, t_items)
    assert got == {
        "teacher": {"include": {"right": 3, "n": 4}, "perl": {"right": 4, "n": 4}},
        "width 999,424": {"include": {"right": 1, "n": 4}, "perl": {"right": 3, "n": 4}},
    }
    t = rec.tables({"curve": {}, "compare": {}, "next_line_sources": got}, {"tasks": {}})
    rows = t["next_line_sources"]["rows"]
    assert rows[1][1:] == [
        "1 / 4 (25.0%), 33% of the teacher's",
        "3 / 4 (75.0%), 75% of the teacher's",
    ]
    (work / "items-8.json").unlink()  # no items here (a restored record): no split
    assert rec.next_line_sources(work, cur, t_items) == {}


def test_each_corrected_teacher_is_set_against_the_teacher_as_it_is(rec, tmp_path):
    """The report scores what the correction did to the teacher itself: each corrected teacher's
    evaluation (written by `curve`) against the teacher's, paired over the same windows and
    items, and the files travel with the record. Evaluations are stand-in files."""
    work = tmp_path / "work"
    t_loss = {"perl": [2.0, 3.0, 2.5, 2.0]}
    rec.write_json(work / "eval" / "teacher.loss.json", {"loss": t_loss})
    rec.write_json(
        work / "eval" / "teacher.tasks.json", {"tasks": {"minitron_next_line": [1.0, 0.0] * 200}}
    )
    rec.write_json(work / "eval" / "teacher-corrected-488.loss.json",
                   {"loss": {"perl": [1.9, 2.9, 2.4, 1.9]}})  # fmt: skip
    rec.write_json(work / "eval" / "teacher-corrected-488.tasks.json",
                   {"tasks": {"minitron_next_line": [1.0, 1.0] * 200}})  # fmt: skip
    rec.write_json(work / "eval" / "teacher-corrected-61.loss.json", {"loss": t_loss})
    got = rec.collect(work)["corrected_teachers"]
    assert list(got) == ["61", "488"]  # by correction length
    assert got["488"]["tokens"] == 488 * rec.per_step(rec.BASE)
    assert got["488"]["loss"]["held-out mean"]["diff"] == pytest.approx(-0.1)
    assert got["488"]["tasks"]["minitron_next_line"]["diff"] == pytest.approx(0.5)
    assert got["61"]["loss"]["held-out mean"]["diff"] == 0 and got["61"]["tasks"] == {}
    t = rec.tables({"curve": {}, "compare": {}, "corrected_teachers": got},
                   rec.teacher_tasks(work))["corrected_teachers"]  # fmt: skip
    assert t["rows"][1][:3] == ["corrected 488 steps", f"{488 * 2048:,}", "-0.100 [-0.100, -0.100]"]
    assert t["rows"][1][-1].startswith("100.0 (+50.0 [")
    assert "eval/teacher-corrected-488.tasks.json" in rec.part_files({"corrected_teachers": got})


def test_another_arms_curve_is_paired_with_the_default_curve_at_equal_tokens(rec, tmp_path):
    """A curve of another arm is set against its student's default curve at the same tokens,
    over the same windows and items (and on the final's windows where both were scored); points
    without a partner are left out. Evaluations are stand-in files (no model runs here)."""
    rng = random.Random(5)
    teacher, base = _pair(rng, 0.8)
    work = tmp_path / "work"
    better = {
        "loss": {d: [x - 0.1 for x in xs] for d, xs in base["loss"].items()},
        "tasks": {"minitron_next_line": [1.0] * 400},
    }
    rows = [("width", "default", 122, base), ("width-batch4", "batch4", 244, better)]
    for series, arm, steps, ev in rows:
        for budget, tokens in ((250000, 249856), (500000, 499712)):
            p = {"student": "width", "arm": arm, "budget": budget, "tokens": tokens, "steps": steps}
            if (series, budget) == ("width", 500000):
                continue  # no default point at 500k
            rec.write_json(work / "points" / f"{series}-{budget}.json", p)
            stem = work / "eval" / f"curve-{series}-{budget}"
            rec.write_json(stem.with_suffix(".loss.json"), {"loss": ev["loss"]})
            rec.write_json(stem.with_suffix(".tasks.json"), {"tasks": ev["tasks"]})
            rec.write_json(work / "eval-64" / f"{stem.name}.loss.json", {"loss": ev["loss"]})
    res = rec.collect(work)
    assert set(res["curve"]) == {"width", "width-batch4"}
    (row,) = res["curve_vs_default"]["width-batch4"]
    assert row["tokens"] == 249856 and row["arm"] == "batch4"
    for v in (row["loss"]["held-out mean"], row["loss"]["perl"], row["final"]["64"]["c-headers"]):
        assert v["diff"] == pytest.approx(-0.1) and v["lo"] <= v["diff"] <= v["hi"] < 0
    nl = row["tasks"]["minitron_next_line"]
    base_acc = sum(base["tasks"]["minitron_next_line"]) / 400
    assert nl["diff"] == pytest.approx(1 - base_acc) and nl["lo"] > 0
    res = {**res, "curve": {}}  # the stand-in points carry no curve columns
    teacher_t = {"tasks": {}, "windows": 64}
    (cells,) = rec.tables(res, teacher_t)["curve_arms"]["rows"]
    assert cells[:3] == ["width-batch4", "249,856", "extend / extend"]
    assert cells[3].startswith("-0.100 [") and cells[8].startswith("64: -0.100 [")


def test_an_arm_on_the_long_correction_teacher_is_also_set_against_that_curve(rec, tmp_path):
    """A curve-only arm that changes more than the teacher (fp32) is set against the default
    curve and against the long-correction curve (the same teacher), each over the same windows;
    the long-correction curve itself and compare's arms are set against the default only.
    Evaluations are stand-in files (no model runs here)."""
    rng = random.Random(7)
    _, base = _pair(rng, 0.8)
    work = tmp_path / "work"

    def shifted(by: float) -> dict:
        return {d: [x + by for x in xs] for d, xs in base["loss"].items()}

    rows = [("width", "default", 0.0), ("width-long-correction", "long-correction", -0.05),
            ("width-fp32", "fp32", -0.08), ("width-batch4", "batch4", 0.02)]  # fmt: skip
    for series, arm, by in rows:
        p = {"student": "width", "arm": arm, "budget": 1000000, "tokens": 999424, "steps": 488}
        rec.write_json(work / "points" / f"{series}-1000000.json", p)
        rec.write_json(work / "eval" / f"curve-{series}-1000000.loss.json", {"loss": shifted(by)})
    res = rec.collect(work)
    assert set(res["curve_vs_default"]) == {"width-long-correction", "width-fp32", "width-batch4"}
    (vs_default,) = res["curve_vs_default"]["width-fp32"]
    assert vs_default["loss"]["held-out mean"]["diff"] == pytest.approx(-0.08)
    assert set(res["curve_vs_long_correction"]) == {"width-fp32"}
    (row,) = res["curve_vs_long_correction"]["width-fp32"]
    v = row["loss"]["held-out mean"]
    assert v["diff"] == pytest.approx(-0.03) and v["lo"] <= v["diff"] <= v["hi"]
    res = {**res, "curve": {}}  # the stand-in points carry no curve columns
    tabs = rec.tables(res, {"tasks": {}, "windows": 64})
    (cells,) = tabs["curve_arms_vs_long_correction"]["rows"]
    assert cells[0] == "width-fp32" and cells[3].startswith("-0.030 [")
    assert "vs long-correction" in " ".join(tabs["curve_arms_vs_long_correction"]["columns"])


def test_a_mid_schedule_point_reads_the_evaluation_logged_at_its_step(rec, tmp_path):
    """KL and the in-domain loss of a point come from the run's summary at its end, else from
    the metrics line of that step (the once schedule evaluates at every checkpoint)."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 60, "loss": 1.0}, {"step": 61, "val_loss": 3.5, "holdout_perl_kl": 0.9}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = {"steps": 122, "teacher_val_loss": 2.4, "val_loss_after": 3.1, "holdout_perl_kl_after": 0.7}
    kl, ind = rec.logged(run, s, 61)
    assert (kl["perl"], kl["manpages"], ind) == (0.9, None, {"loss": 3.5, "teacher": 2.4})
    kl, ind = rec.logged(run, s, 122)
    assert (kl["perl"], ind) == (0.7, {"loss": 3.1, "teacher": 2.4})


def test_evaluations_travel_with_the_record_and_pair_on_a_fresh_machine(rec, tmp_path):
    """`report` commits the per-window evaluations behind the record (save_parts), and
    `restore` puts them back into a fresh work folder, so a curve of another arm measured there
    is paired with the record's default curve over the same windows."""
    import json

    rng = random.Random(5)
    teacher, base = _pair(rng, 0.8)
    arm = {"loss": {d: [x - 0.1 + rng.gauss(0, 0.01) for x in v] for d, v in base["loss"].items()}}
    old = tmp_path / "old"
    rec.write_json(old / "settings.json", {"windows": 128, "items": 400})
    rec.write_json(old / "eval" / "teacher.loss.json", teacher)
    rec.write_json(old / "eval" / "curve-width-250000.loss.json", base)
    rec.write_json(old / "eval" / "stray.loss.json", base)  # not behind the record
    point = {"student": "width", "budget": 250000, "tokens": 249856, "steps": 122}
    rec.write_json(old / "points" / "width-250000.json", point)
    res = rec.collect(old)
    results = tmp_path / "results"
    parts = results / "recovery-parts"
    (parts / "eval").mkdir(parents=True)
    (parts / "eval" / "gone.loss.json").write_text("{}")  # from an earlier record
    assert rec.save_parts(old, res, parts) == 2
    assert sorted(str(f.relative_to(parts)) for f in parts.rglob("*.json")) == [
        "eval/curve-width-250000.loss.json",
        "eval/teacher.loss.json",
    ]
    record = results / "recovery.json"
    record.write_text(json.dumps({"git_commit": "0" * 40, "date": "d", "results": res}))
    new = tmp_path / "new"
    rec.write_json(new / "settings.json", {"windows": 128, "items": 400})
    got = rec.restore(new, record, keep=set(), series={"width-lr2e-3"})
    assert got == ["curve width", "2 evaluation files"]
    # a curve of another width shape (a former STUDENTS entry) stays behind
    other = {**point, "student_args": ["--hidden-size", "8"]}
    rec.write_json(old / "points" / "width-250000.json", other)
    elsewhere = tmp_path / "elsewhere"
    rec.write_json(elsewhere / "settings.json", {"windows": 128, "items": 400})
    record2 = tmp_path / "r2" / "recovery.json"
    record2.parent.mkdir()
    old_res = rec.collect(old)
    record2.write_text(json.dumps({"git_commit": "0" * 40, "date": "d", "results": old_res}))
    assert rec.restore(elsewhere, record2, keep=set()) == [
        "not curve width (another student shape)"
    ]
    assert not (elsewhere / "points").exists()
    # the arm's curve, measured here, pairs with the restored default point's windows
    rec.write_json(new / "points" / "width-lr2e-3-250000.json", {**point, "arm": "lr2e-3"})
    rec.write_json(new / "eval" / "curve-width-lr2e-3-250000.loss.json", arm)
    vs = rec.collect(new)["curve_vs_default"]["width-lr2e-3"]
    assert vs[0]["loss"] == rec.versus(arm, base)
    assert vs[0]["loss"]["held-out mean"]["diff"] < 0  # the arm's student is the better one


def test_teacher_text_arm_samples_the_teacher_once_and_weights_it(
    rec, tiny_ckpt, tmp_path, monkeypatch
):
    """The teacher-text arm's data: the teacher's own samples (a tiny teacher here, two small
    batches), kept on disk and not made again, mixed with TRAIN at a weight that makes them
    about as many bytes."""
    from minitron_deploy.data.text import iter_documents, source_bytes, source_weight

    for k, v in {"tokens": 2 * 4 * 16, "batch": 4, "max_new_tokens": 16}.items():
        monkeypatch.setitem(rec.TEACHER_TEXT, k, v)
    cfg = rec.arm_config("teacher-text", tmp_path, str(tiny_ckpt))
    gen = tmp_path / "teacher-text"
    files = sorted(gen.glob("batch-*.jsonl"))
    assert [f.name for f in files] == ["batch-0000.jsonl", "batch-0001.jsonl"]
    assert len(list(iter_documents(str(gen)))) > 0
    train, spec = cfg["data"].split(",")
    assert train == rec.TRAIN and "teacher_text" not in cfg
    part, weight = source_weight(spec)
    assert Path(part) == gen and weight == round(source_bytes(rec.TRAIN) / source_bytes(part))
    stamp = files[0].stat().st_mtime_ns
    assert rec.arm_config("teacher-text", tmp_path, str(tiny_ckpt)) == cfg  # not sampled again
    assert files[0].stat().st_mtime_ns == stamp
    assert "--data" not in rec.flags(cfg)  # `distill` passes the data itself


def test_width_cuts_are_distilled_alike_and_set_against_the_first(rec, tmp_path, monkeypatch):
    """`shapes`: every cut of WIDTH_SHAPES pruned from the same scores and distilled for the
    same exact budget with the same recipe; each is set against the first cut over the same
    windows, the table marks the cut STUDENTS uses, and a fresh machine restores the rows.
    `sh` (the CLI) and the evaluator are stand-ins: no model runs here."""
    import argparse
    import json

    calls = []

    def stand_in_sh(args, log):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "prune":  # prune's record of what it kept (pruning.json)
            (out / "config.json").write_text("{}")
            (out / rec.PRUNING_FILE).write_text(json.dumps({"params_after": 12}))
        if args[0] == "distill":
            steps = int(args[args.index("--steps") + 1])
            summary = {"steps": steps, "final": "final", "val_loss_after": 3.5}
            (out / "summary.json").write_text(json.dumps(summary))
            return summary
        return {}

    rng = random.Random(7)
    teacher, _ = _pair(rng, 0.0)
    shift = {"h432-f1024": 1.1, "h504-f736": 1.0, "h576-f512": 1.2}

    class StandInEvaluator:
        def evaluate(self, model_dir, stem, tasks=True):
            assert not tasks
            if stem.name == "teacher":
                got = teacher
            else:
                s = shift[stem.name.removeprefix("shape-")]
                got = {"loss": {d: [x + s + rng.gauss(0, 0.02) for x in v]
                                for d, v in teacher["loss"].items()}}  # fmt: skip
            rec.write_json(stem.with_suffix(".loss.json"), {"loss": got["loss"]})
            return {"loss": got["loss"], "tasks": {}}

    monkeypatch.setattr(rec, "sh", stand_in_sh)
    work = tmp_path / "work"
    (work / "scores").mkdir(parents=True)
    (work / "scores" / "scores.json").write_text("{}")
    args = argparse.Namespace(shape_tokens=125000)
    rec.shapes(args, work, "teacher", StandInEvaluator(), tmp_path / "log")
    steps = {tuple(a[a.index("--steps") + 1 :][:1]) for a in calls if a[0] == "distill"}
    assert steps == {(str(rec.steps_for(125000, rec.BASE)),)}  # the same exact budget for all
    pruned = [a[a.index("--out") + 2 :] for a in calls if a[0] == "prune"]
    assert pruned == [[*t, "--overwrite", "--json"] for _, t in rec.WIDTH_SHAPES.values()]
    res = rec.collect(work)
    first = rec.FIRST_SHAPE
    assert "vs_first" not in res["shapes"][first]
    vs = res["shapes"]["h504-f736"]["vs_first"]["held-out mean"]
    assert vs["lo"] < -0.1 < vs["hi"] < 0  # 1.0 against 1.1, paired over the same windows
    assert res["shapes"]["h576-f512"]["vs_first"]["held-out mean"]["lo"] > 0
    assert res["shapes"][first]["parameters"] == 12
    table = rec.tables(res, {"tasks": {}, "windows": 64})["shapes"]
    marked = [r[0] for r in table["rows"] if "(the width student)" in r[0]]
    assert marked == [n + " (the width student)" for n, (_, a) in rec.WIDTH_SHAPES.items()
                      if a == rec.STUDENTS["width"]]  # fmt: skip
    n = len(calls)
    rec.shapes(args, work, "teacher", StandInEvaluator(), tmp_path / "log")
    assert len(calls) == n  # resumable: nothing runs again
    record = tmp_path / "results" / "recovery.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"git_commit": "0" * 40, "date": "d", "results": res}))
    fresh = tmp_path / "fresh"
    rec.write_json(fresh / "settings.json", {"windows": 64, "items": 400})
    got = rec.restore(fresh, record, keep=set())
    assert got == [f"shape {c}" for c in rec.WIDTH_SHAPES]
    again = rec.collect(fresh)["shapes"]["h504-f736"]
    assert again["vs_first"] == res["shapes"]["h504-f736"]["vs_first"]  # travels as numbers


def test_arms_are_compared_at_one_budget(rec, tmp_path):
    """A comparison at another budget does not restore the record's arms (their 'vs default'
    is at the record's budget), and a work folder never mixes budgets in one table."""
    import json

    record = ROOT / "benchmarks" / "results" / "recovery.json"
    d = json.loads(record.read_text())
    (budget,) = {r["budget"] for r in d["results"]["compare"].values()}
    work = tmp_path / "work"
    rec.write_json(work / "settings.json", {"windows": 128, "items": 400})
    got = rec.restore(work, record, keep={"default"}, budget=budget * 5)
    assert not (work / "arms").exists()
    assert {g for g in got if g.startswith("not arm")} == {
        f"not arm {n} (budget {budget:,}, not {budget * 5:,})" for n in d["results"]["compare"]
    } - {f"not arm default (budget {budget:,}, not {budget * 5:,})"}
    rec.restore(work, record, keep={"default"}, budget=budget)  # the record's own budget
    assert rec.one_budget(work) == budget == rec.collect(work)["compare_budget"]
    with pytest.raises(SystemExit, match="arms are compared at one budget"):
        rec.one_budget(work, budget * 5)
