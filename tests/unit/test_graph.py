"""The stage graph: node order, `from` chains, --only, keys, the speedup gate."""

from __future__ import annotations

import textwrap

import pytest

from minitron_deploy.errors import MinitronError
from minitron_deploy.pipeline import Pipeline
from minitron_deploy.pipeline.stages.bench import speedup_gate
from minitron_deploy.profile import load_profile

CHAIN = """\
name: chain
source: builtin:tiny-llama
data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}
variants:
  - name: base
  - name: mid
    prune: {intermediate_size: 160}
    distill: {steps: 2, global_batch: 2, micro_batch: 1, teacher_check: false}
  - name: small
    from: mid
    prune: {hidden_size: 48}
    bench: {min_speedup: 1.5}
bench: {engine: torch, isl_osl: "8/4"}
"""


@pytest.fixture()
def pipe(tmp_path):
    p = tmp_path / "chain.yaml"
    p.write_text(CHAIN)
    return Pipeline(load_profile(p), tmp_path / "wd", p), p


def test_nodes_in_dependency_order_and_chain(pipe):
    pipeline, _ = pipe
    ids = [n.id for n in pipeline.nodes]
    for n in pipeline.nodes:
        for dep in n.inputs.values():
            assert ids.index(dep) < ids.index(n.id)
    small_imp = pipeline.by_id["small/importance"]
    # iterative: starts from mid's result; one data node serves calibration and training
    assert small_imp.inputs == {"model": "mid/distill", "calibration": "data:calibration"}
    assert pipeline.by_id["mid/distill"].inputs["training"] == "data:calibration"
    assert pipeline.by_id["bench"].inputs == {
        "base": "source",
        "mid": "mid/distill",
        "small": "small/prune",
    }


def test_only_selects_ancestors(pipe):
    pipeline, _ = pipe
    ids = {n.id for n in pipeline.select("small")}
    assert {"source", "mid/importance", "mid/prune", "mid/distill", "small/prune"} <= ids
    assert "bench" not in ids
    with pytest.raises(MinitronError, match="no variant named"):
        pipeline.select("nope")


def test_keys_change_only_downstream(pipe, tmp_path):
    pipeline, path = pipe
    before = {n.id: n.key for n in pipeline.nodes}
    changed = Pipeline(
        load_profile(path, ["variants.small.prune.hidden_size=60"]), tmp_path / "wd", path
    )
    after = {n.id: n.key for n in changed.nodes}
    diff = {k for k in before if before[k] != after[k]}
    assert diff == {"small/prune", "bench"}


def test_text_enters_keys_by_content_not_path(tmp_path):
    """Editing a calibration file changes the importance key and everything downstream;
    moving the corpus (or naming it by another path) changes nothing."""
    import shutil

    corpus = tmp_path / "a" / "corpus"
    corpus.mkdir(parents=True)
    for i in range(6):
        (corpus / f"{i}.txt").write_text(f"document {i} " * 200)
    profile = tmp_path / "p.yaml"

    def keys(calibration: str) -> dict[str, str]:
        text = CHAIN.replace(
            "data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}",
            f"data: {{calibration: {calibration}, training: builtin:pydoc-topics}}",
        )
        profile.write_text(text)
        return {n.id: n.key for n in Pipeline(load_profile(profile), tmp_path / "wd").nodes}

    base = keys(str(corpus))
    moved = tmp_path / "b" / "elsewhere"
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    (tmp_path / "b" / "corpus").rename(moved)
    assert keys(str(moved)) == base  # moved: every key the same
    (moved / "3.txt").write_text("an edited document " * 200)
    edited = keys(str(moved))
    changed = {k for k in base if base[k] != edited[k]}
    readers = {"mid/importance", "mid/prune", "mid/distill", "small/importance", "small/prune"}
    assert changed == {"data:calibration", *readers, "bench"}


def test_plan_reports_every_stage_to_run(pipe):
    pipeline, _ = pipe
    rows = pipeline.plan()
    assert [r["node"] for r in rows] == [n.id for n in pipeline.nodes]
    assert {r["status"] for r in rows} == {"to run"}


def test_speedup_gate(pipe):
    pipeline, _ = pipe
    bench = pipeline.by_id["bench"]
    assert bench.config.gate == {"small": 1.5}  # hashed: the matrix adds rounds for it
    row = {"model": "small", "isl": 8, "osl": 4, "speedup_vs_base": 1.2, "repeats": 6}
    row.update(speedup_lo=1.1, speedup_hi=1.3, speedup_coverage=0.97)
    metrics = {"results": [row]}
    fails = speedup_gate(bench, metrics)
    assert len(fails) == 1 and "small" in fails[0] and "[1.10, 1.30]" in fails[0]
    assert fails[0].startswith("speedup gate: ") and "min 1.5x: fail" in fails[0]
    row.update(speedup_vs_base=1.7, speedup_lo=1.6, speedup_hi=1.8)
    assert speedup_gate(bench, metrics) == []
    row.update(speedup_lo=1.4)  # the interval straddles 1.5
    (msg,) = speedup_gate(bench, metrics)
    assert msg.startswith("speedup gate inconclusive") and "[1.40, 1.80]" in msg


def test_unknown_override_variant(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(CHAIN))
    with pytest.raises(MinitronError, match="no variant named 'wide'"):
        load_profile(p, ["variants.wide.distill.steps=3"])


CORRECTED = """\
name: corrected
source: builtin:tiny-llama
data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}
defaults:
  distill: {steps: 2, global_batch: 2, micro_batch: 1, seq_len: 32, eval_every: 0,
            eval_samples: 2, teacher_check: false}
variants:
  - name: base
  - name: corrected
    distill: {teacher_correction: true, lr: 1.0e-5, min_lr: 1.0e-6}
    bench: {enabled: false}
  - name: width
    prune: {hidden_size: 48}
    distill: {}
    teacher: corrected
bench: {engine: torch, isl_osl: "8/4"}
"""


def test_teacher_names_the_distillation_teacher(tmp_path):
    """`teacher:` (the demo's teacher-correction recipe): the student is pruned from its parent
    and distilled from the named variant's model; the teacher's settings enter the key."""
    p = tmp_path / "c.yaml"
    p.write_text(CORRECTED)
    pipe = Pipeline(load_profile(p), tmp_path / "wd", p)
    by = pipe.by_id
    assert by["corrected/distill"].inputs["teacher"] == "source"
    assert by["corrected/distill"].config.distill.teacher_correction
    assert by["width/importance"].inputs["model"] == "source"
    assert by["width/prune"].inputs["model"] == "source"
    assert by["width/distill"].inputs["teacher"] == "corrected/distill"
    assert by["width/distill"].inputs["student"] == "width/prune"
    assert "corrected" not in by["bench"].inputs
    other = Pipeline(
        load_profile(p, ["variants.corrected.distill.lr=2.0e-5"]), tmp_path / "wd", p
    ).by_id
    assert other["width/distill"].key != by["width/distill"].key
    assert other["width/prune"].key == by["width/prune"].key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("teacher: corrected", "teacher: nobody"), "teacher='nobody' must name an earlier"),
        (("    distill: {}\n    teacher", "    teacher"), "this variant has none"),
        (
            ("min_lr: 1.0e-6}\n", "min_lr: 1.0e-6}\n    prune: {hidden_size: 48}\n"),
            "teacher correction fine-tunes the parent itself",
        ),
    ],
)
def test_teacher_mistakes_are_one_clear_message(tmp_path, change, message):
    p = tmp_path / "c.yaml"
    text = CORRECTED.replace(*change)
    assert text != CORRECTED
    p.write_text(text)
    with pytest.raises(MinitronError, match=message):
        load_profile(p)
