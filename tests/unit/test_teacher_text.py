"""`data sample` / `distill.teacher_text`: a model's own text as resumable JSONL batches, refused
when a folder holds other settings, usable as a weighted data source (tiny model, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minitron_deploy.data.text import iter_documents
from minitron_deploy.distill.teacher_text import SETTINGS, SampleSettings, sample_text
from minitron_deploy.errors import InputError

CLI = [sys.executable, "-m", "minitron_deploy.cli"]


def test_samples_are_batches_of_jsonl_resumed_and_reproducible(tiny_ckpt, tmp_path):
    s = SampleSettings(tokens=3 * 4 * 12, batch=4, max_new_tokens=12, seed=3)
    out = tmp_path / "gen"
    res = sample_text(tiny_ckpt, out, s, progress=False)
    files = sorted(out.glob("batch-*.jsonl"))
    assert [f.name for f in files] == [f"batch-{b:04d}.jsonl" for b in range(3)]
    assert res["made"] == 3 and 0 < res["tokens"] <= 3 * 4 * 12
    rows = [json.loads(x) for x in files[1].read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["text"], str) for r in rows)
    # the settings file is not text of the source; every batch's rows are its documents
    docs = list(iter_documents(str(out)))
    assert docs and all(".sample" not in d.id for d in docs)
    # an interrupted run: the missing batch is sampled again, the same as before
    first = files[1].read_bytes()
    files[1].unlink()
    again = sample_text(tiny_ckpt, out, s, progress=False)
    assert again["made"] == 1 and files[1].read_bytes() == first
    assert sample_text(tiny_ckpt, out, s, progress=False)["made"] == 0


def test_other_settings_and_bad_settings_are_refused(tiny_ckpt, tmp_path):
    out = tmp_path / "gen"
    sample_text(tiny_ckpt, out, SampleSettings(tokens=8, batch=2, max_new_tokens=4), progress=False)
    with pytest.raises(InputError, match="other settings"):
        sample_text(tiny_ckpt, out, SampleSettings(tokens=8, batch=2, max_new_tokens=4, seed=1))
    (out / SETTINGS).unlink()
    with pytest.raises(InputError, match="without their settings"):
        sample_text(tiny_ckpt, out, SampleSettings(tokens=8, batch=2, max_new_tokens=4))
    for bad in ({"temperature": 0.0}, {"top_p": 1.5}, {"tokens": 0}):
        with pytest.raises(InputError):
            SampleSettings(**{"tokens": 8, **bad})


def test_cli_samples_and_refuses_bad_input_with_exit_2(tiny_ckpt, tmp_path):
    out = tmp_path / "gen"
    args = ["data", "sample", "--model", str(tiny_ckpt), "--out", str(out), "--tokens", "16"]
    args += ["--batch", "2", "--max-new-tokens", "8", "--no-progress", "--json"]
    r = subprocess.run(CLI + args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["batches"] == 1
    assert f"{out}*N" in r.stderr
    bad = [a if a != str(out) else str(tmp_path / "bad") for a in args[:-1]]
    r = subprocess.run(CLI + [*bad, "--top-p", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "top_p 0.0 must be in (0, 1]" in r.stderr
    assert not (tmp_path / "bad").exists()  # nothing half-written
