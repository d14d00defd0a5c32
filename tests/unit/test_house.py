"""The house: no import cycles, every profile setting reaches the node that uses it, keys follow
the code that makes an artifact, and the command line never rewrites what the user asked."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from minitron_deploy.cli import main
from minitron_deploy.pipeline import Pipeline
from minitron_deploy.profile import load_profile

PACKAGE = Path(__file__).resolve().parents[2] / "minitron_deploy"


def _import_graph() -> dict[str, set[str]]:
    """module -> modules of the package it imports (anywhere in the file)."""
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f

    def target(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for n in names:
                t = target(n)
                if t and t != m and not m.startswith(t + "."):
                    edges[m].add(t)
    return edges


def test_the_package_has_no_import_cycle():
    edges = _import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t) :] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles[:5]


PROFILE = """\
name: settings
source: builtin:tiny-llama
seed: 7
data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics, val_fraction: 0.3}
importance: {num_samples: 4, seq_len: 16, layer_loss_blocks: [1], val_samples: 3}
variants:
  - name: base
    export: {formats: [hf-fp8]}
  - name: width
    prune: {hidden_size: 48}
    distill: {steps: 2, seed: 11}
  - name: depth
    prune: {num_layers: 4}
bench: {engine: torch, isl_osl: "8/4", batch: [5, 6, 7]}
"""


@pytest.fixture()
def pipe(tmp_path):
    p = tmp_path / "settings.yaml"
    p.write_text(PROFILE)
    return Pipeline(load_profile(p), tmp_path / "wd", p)


def test_profile_seed_is_the_default_of_every_section(pipe):
    assert pipe.by_id["width/importance"].config.importance.seed == 7
    assert pipe.by_id["width/distill"].config.distill.seed == 11  # the section's own wins
    assert pipe.by_id["base/export:hf-fp8"].config.settings.seed == 7
    assert pipe.by_id["bench"].config.bench.seed == 7


def test_val_fraction_and_validation_reach_every_stage(pipe):
    imp = pipe.by_id["width/importance"]
    data = pipe.by_id[imp.inputs["calibration"]]
    assert data.stage == "data" and data.config.val_fraction == 0.3
    assert imp.config.calibration == "train"
    # layer_loss_blocks in the profile: the importance stage gets validation text
    assert imp.config.validation == "validation" and imp.inputs["validation"] == data.id
    distill = pipe.by_id["width/distill"]
    assert distill.config.training == "train" and distill.config.validation == "validation"
    assert distill.inputs["training"] == distill.inputs["validation"] == data.id  # one source
    assert pipe.by_id["base/export:hf-fp8"].inputs["calibration"] == data.id
    assert [n.id for n in pipe.nodes if n.stage == "data"] == [data.id]  # prepared once
    # depth 5 -> 4 drops one layer: its loss ranking comes with the scores (blocks of 1)
    assert pipe.by_id["depth/prune"].config.validation is None
    assert "validation" not in pipe.by_id["depth/prune"].inputs


def test_profile_bench_batch_is_honoured(pipe, tmp_path):
    assert pipe.by_id["bench"].config.bench.batch == (5, 6, 7)
    p = tmp_path / "one.yaml"
    p.write_text(PROFILE.replace("batch: [5, 6, 7]", "batch: 9"))
    one = Pipeline(load_profile(p), tmp_path / "wd2", p)
    assert one.by_id["bench"].config.bench.batch == (9, 9, 9)
    p.write_text(PROFILE.replace(", batch: [5, 6, 7]", ""))
    default = Pipeline(load_profile(p), tmp_path / "wd3", p)
    assert default.by_id["bench"].config.bench.batch == (32, 64, 64)


def test_a_wrong_number_of_bench_batches_is_refused(tmp_path):
    from minitron_deploy.profile import ProfileErrors

    p = tmp_path / "two.yaml"
    p.write_text(PROFILE.replace("batch: [5, 6, 7]", "batch: [5, 6]"))
    with pytest.raises(ProfileErrors, match="2 batch sizes for 3 benchmarked variants"):
        load_profile(p)


def test_code_digests_follow_the_modules_a_stage_reads(pipe, monkeypatch):
    import minitron_deploy.pipeline.codehash as codehash

    before = {n.id: n.key for n in pipe.nodes}
    real = codehash._file_digest

    def edited(path: str, mtime_ns: int, size: int) -> str:
        if path.endswith("compress/metrics.py"):
            return "an edited metric"
        return real(path, mtime_ns, size)

    monkeypatch.setattr(codehash, "_file_digest", edited)
    pipe._compute_keys()
    changed = {n.id for n in pipe.nodes if n.key != before[n.id]}
    # importance reads the metrics; prune checks scores against them; everything after
    # them depends on their artifacts.
    assert {"width/importance", "width/prune", "width/distill", "bench"} <= changed
    assert "source" not in changed and "base/export:hf-fp8" not in changed


def _distill_argv(tiny, text, out, *extra):
    return [
        "distill", "--teacher", str(tiny), "--student", str(tiny), "--data", str(text),
        "--out", str(out), "--global-batch", "2", "--micro-batch", "2", "--seq-len", "16",
        "--eval-every", "0", "--eval-samples", "2", "--checkpoint-every", "1",
        "--warmup-steps", "0", "--ce-weight", "1", "--no-teacher-check", "--no-progress",
        *extra,
    ]  # fmt: skip


def test_resume_with_other_settings_is_refused_and_extend_is_explicit(
    tiny_ckpt, text_dir, tmp_path, capsys
):
    import json

    out = tmp_path / "kd"
    assert main(_distill_argv(tiny_ckpt, text_dir, out, "--steps", "2")) == 0
    capsys.readouterr()
    # the same run again: nothing to do, said so
    assert main(_distill_argv(tiny_ckpt, text_dir, out, "--steps", "2", "--resume")) == 0
    assert "already holds this finished run" in capsys.readouterr().err
    # more steps without --extend: refused, naming the difference
    assert main(_distill_argv(tiny_ckpt, text_dir, out, "--steps", "4", "--resume")) == 2
    err = capsys.readouterr().err
    assert "config.steps: 2 -> 4" in err and "--extend" in err
    # another learning rate: refused even with --extend
    argv = _distill_argv(tiny_ckpt, text_dir, out, "--steps", "4", "--resume", "--extend")
    assert main([*argv, "--lr", "3e-4"]) == 2
    assert "config.lr" in capsys.readouterr().err
    # --extend continues the finished run to 4 steps
    assert main(argv) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_min_lr_is_never_rewritten(tiny_ckpt, text_dir, tmp_path, capsys):
    argv = _distill_argv(tiny_ckpt, text_dir, tmp_path / "a", "--steps", "1")
    assert main([*argv, "--lr", "1e-4", "--min-lr", "1e-3"]) == 2
    assert "min_lr=0.001 must not exceed lr=0.0001" in capsys.readouterr().err
    # a small --lr alone is fine: the final LR defaults to lr / 10
    assert main([*_distill_argv(tiny_ckpt, text_dir, tmp_path / "b", "--steps", "1"),
                 "--lr", "1e-6"]) == 0  # fmt: skip


def test_bench_out_is_checked_before_the_matrix_runs(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import minitron_deploy.bench as bench

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.json").write_text("{}")
    monkeypatch.setattr(bench, "run_matrix", lambda *a, **k: pytest.fail("matrix ran"))
    argv = ["bench", "--model", str(tiny_ckpt), "--matrix", "8/4", "--out", str(busy)]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_defaults_typo_is_reported_once_at_its_line_with_a_suggestion(tmp_path):
    from minitron_deploy.profile import ProfileErrors

    p = tmp_path / "typo.yaml"
    p.write_text(
        textwrap.dedent(
            """\
            name: typo
            source: builtin:tiny-llama
            defaults:
              distill:
                stesp: 3
            variants:
              - nmae: base
              - name: width
                prune: {hiden_size: 48}
                distill: {}
              - name: depth
                distill: {}
            """
        )
    )
    with pytest.raises(ProfileErrors) as e:
        load_profile(p)
    problems = e.value.problems
    assert problems == [
        "defaults.distill.stesp (line 5): unknown key; did you mean 'steps'?",
        "variants[0].nmae (line 7): unknown key; did you mean 'name'?",
        "variants[1].prune.hiden_size (line 9): unknown key; did you mean 'hidden_size'?",
    ], problems
