"""Built-in corpora and held-out domains: roff to text, capped domains, content keys, the
profile's hold-out rules, and held-out losses in `eval` and the distillation summary."""

from __future__ import annotations

import gzip
import json

import pytest

from minitron_deploy.data import corpora
from minitron_deploy.data.refs import holdout_label
from minitron_deploy.data.text import iter_documents, source_digest, source_parts
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.testing import rel_tolerance

ROFF = r""".\" a comment
.TH DEMO 1
.SH NAME
demo \- print \fBbold\fR words
.SH DESCRIPTION
.B demo
reads \fIfiles\fP and writes \(lqtext\(rq.
.PP
Second paragraph\(emwith a dash.
.IP "\-v" 4
Be verbose.
"""


def test_roff_to_text_keeps_words_and_drops_markup():
    text = corpora.roff_to_text(ROFF)
    assert "comment" not in text and "\\f" not in text and ".TH" not in text
    assert "NAME\ndemo - print bold words" in text
    assert 'DESCRIPTION\ndemo\nreads files and writes "text".' in text
    assert "Second paragraph-with a dash." in text
    assert "\n-v\nBe verbose." in text  # the .IP tag without its indent


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """Stand-in /usr/share/{man,doc,common-licenses} trees (named so: not the machine's)."""
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    for i in range(6):
        (man / f"tool{i}.1.gz").write_bytes(
            gzip.compress(ROFF.replace("demo", f"tool{i}").encode())
        )
    doc = tmp_path / "doc" / "pkg"
    doc.mkdir(parents=True)
    (doc / "README.md").write_text("A package readme.\n\nIt has two paragraphs.")
    (doc / "changelog.gz").write_bytes(gzip.compress(b"not docs"))
    (doc / "copyright").write_text("Permission is hereby granted, free of charge.")
    lic = tmp_path / "licenses"
    lic.mkdir()
    (lic / "MIT").write_text("The MIT licence text.")
    monkeypatch.setattr(corpora, "MAN_ROOT", tmp_path / "man")
    monkeypatch.setattr(corpora, "DOC_ROOT", tmp_path / "doc")
    monkeypatch.setattr(corpora, "LICENSE_ROOT", lic)
    return tmp_path


def test_domains_read_their_files(fake_system):
    man = list(iter_documents("builtin:manpages"))
    assert len(man) == 6 and man[0].id.startswith("man:man1/tool0.1.gz#")
    assert "tool3 - print bold words" in man[3].text
    docs = [d.id for d in iter_documents("builtin:package-docs")]
    assert docs == ["doc:pkg/README.md#0"]  # not the changelog, not the copyright file
    lic = {d.id: d.text for d in iter_documents("builtin:licenses")}
    assert lic == {
        "license:MIT#0": "The MIT licence text.",
        "copyright:pkg#0": "Permission is hereby granted, free of charge.",
    }
    mixed = {d.id.split(":")[0] for d in iter_documents("builtin:mixed")}
    assert {"pydoc", "doc", "license", "copyright", "stdlib"} <= mixed and "man" not in mixed


def test_a_cap_takes_a_fixed_spread_subset(fake_system, monkeypatch):
    files = corpora._manpages()
    size = files[0][0].stat().st_size
    monkeypatch.setattr(corpora, "MB", size * 2 + 1)  # room for two files per "MB"
    picked = corpora._capped(files, 1)
    assert len(picked) == 2
    again = corpora._capped(list(reversed(files)), 1)
    assert sorted(again) == sorted(picked)  # chosen by content of the ids, not listing order
    assert [rel for _, rel in picked] == sorted(rel for _, rel in picked)  # reading order kept


def test_builtin_content_enters_the_digest(fake_system):
    before = source_digest("builtin:manpages")
    assert len(source_parts("builtin:manpages")[0][1]) == 6
    f = fake_system / "man" / "man1" / "tool2.1.gz"
    f.write_bytes(gzip.compress(b".SH NAME\nchanged"))
    assert source_digest("builtin:manpages") != before


def test_holdout_labels():
    assert holdout_label("builtin:manpages") == "manpages"
    assert holdout_label("/data/other docs.jsonl") == "other-docs"
    assert holdout_label("some/folder/") == "folder"


def _profile(tmp_path, holdout):
    p = tmp_path / "p.yaml"
    p.write_text(
        "name: t\nsource: builtin:tiny-llama\n"
        "data: {calibration: builtin:pydoc-topics, training: builtin:mixed, "
        f"holdout: {holdout}}}\n"
        "variants:\n  - name: v\n    prune: {num_layers: 1}\n    distill: {steps: 1}\n"
    )
    return p


def test_a_holdout_read_by_training_is_refused(tmp_path):
    from minitron_deploy.errors import ConfigError
    from minitron_deploy.profile.load import load_profile

    with pytest.raises(ConfigError) as e:
        load_profile(_profile(tmp_path, "[builtin:licenses]"))
    assert "data.holdout.0" in str(e.value) or "holdout" in str(e.value)
    assert "also read by data.training" in str(e.value)
    with pytest.raises(ConfigError, match="both named 'manpages'"):
        load_profile(_profile(tmp_path, "[builtin:manpages, builtin:manpages]"))
    load_profile(_profile(tmp_path, "[builtin:manpages]"))  # kept out: fine


def test_graph_gives_distill_each_holdout(tmp_path):
    from minitron_deploy.pipeline.graph import build_graph
    from minitron_deploy.profile.load import load_profile

    prof = load_profile(_profile(tmp_path, "[builtin:manpages]"))
    nodes = {n.id: n for n in build_graph(prof, tmp_path)}
    d = nodes["v/distill"]
    assert d.config.holdout == ("manpages",)
    assert nodes[d.inputs["holdout:manpages"]].config.source == "builtin:manpages"


@pytest.mark.numerics
def test_distill_and_eval_report_each_held_out_domain(tiny_ckpt, text_dir, tmp_path):
    from minitron_deploy.cli import main
    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.distill import DistillConfig, run_distillation

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text(corpora.roff_to_text(ROFF) * 40)
    cfg = DistillConfig(
        steps=2, global_batch=2, micro_batch=2, seq_len=32, warmup_steps=0, eval_samples=2,
        teacher_check=False, checkpoint_every=0,
    )  # fmt: skip
    s = run_distillation(
        tiny_ckpt,
        tiny_ckpt,
        tmp_path / "run",
        cfg,
        train_data=str(text_dir),
        holdout={"other": DataRef(source=str(other))},
        progress=False,
    )
    # The teacher distilled into itself: KL starts at 0 and the teacher's loss is the student's,
    # up to rounding. Under `auto` = bf16 the teacher computes in bf16 weights and the student in
    # fp32 master weights under bf16 autocast (6.9e-5 KL measured), so the bound is eps-derived.
    tol = rel_tolerance(compute_dtype("auto"), steps=0)
    assert s["holdout_other_kl_before"] == pytest.approx(0.0, abs=tol)
    assert s["holdout_other_loss_before"] == pytest.approx(s["teacher_holdout_other_loss"], rel=tol)
    assert s["holdout_other_loss_before"] != pytest.approx(s["val_loss_before"], rel=1e-3)
    assert "holdout_other_loss_after" in s
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "holdout_other_loss" in recs[0] and "holdout_other_loss" in recs[-1]

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["eval", "--model", str(tiny_ckpt), "--data", str(text_dir), "--holdout",
                   str(other), "--num-samples", "2", "--seq-len", "32", "--json"])  # fmt: skip
    assert rc == 0
    res = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert res["holdout"]["other"]["loss"] == pytest.approx(s["holdout_other_loss_before"], rel=0.2)
    assert res["holdout"]["other"]["tokens"] == 2 * 31
