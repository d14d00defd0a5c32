"""A run this machine cannot hold is refused by validate / plan / run before anything runs
(exit 2, with the numbers): too little memory even streamed or one layer at a time, or too
little free disk for the artifacts. `MINITRON_HOST_MEMORY_GB` stands in for a smaller machine
and a patched `free_disk_bytes` for a full disk."""

from __future__ import annotations

import json

from minitron_deploy.cli import main
from minitron_deploy.model import footprint
from minitron_deploy.model.shapes import KNOWN_SHAPES, LlamaShape


def _profile(tmp_path, source: str, hidden: int = 6144) -> str:
    p = tmp_path / "p.yaml"
    p.write_text(
        f"name: big\nsource: {source}\ndata:\n  calibration: builtin:pydoc-topics\n"
        "  training: builtin:pydoc-topics\nimportance: {num_samples: 1024, seq_len: 512}\n"
        f"variants:\n  - name: width\n    prune: {{hidden_size: {hidden}}}\n"
        "    export: {formats: [hf]}\n"
    )
    return str(p)


def _config_only_70b(tmp_path):
    """A folder with the published 70B shape's config.json (validate reads only the config)."""
    d = tmp_path / "llama70b"
    d.mkdir()
    cfg = {**KNOWN_SHAPES["llama-3.1-70b"], "model_type": "llama", "torch_dtype": "bfloat16"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_validate_refuses_a_model_that_cannot_fit_layer_by_layer(tmp_path, monkeypatch, capsys):
    prof = _profile(tmp_path, str(_config_only_70b(tmp_path)))
    s = LlamaShape.from_config(KNOWN_SHAPES["llama-3.1-70b"])
    need = footprint.layer_sequential_peak_bytes(s, 1024, 512, 8)
    assert need > 8e9 > footprint.streamed_peak_bytes(s)  # importance cannot fit, prune can
    monkeypatch.setenv("MINITRON_HOST_MEMORY_GB", "8")
    assert main(["validate", prof]) == 2
    err = capsys.readouterr().err
    assert "width/importance needs at least" in err and f"{need / 1e9:.1f} GB" in err
    assert "this machine has 8.0 GB" in err
    assert "width/prune" not in err  # streamed, it fits
    monkeypatch.setenv("MINITRON_HOST_MEMORY_GB", "64")
    assert main(["validate", prof]) == 0


def test_plan_refuses_too_little_disk_and_writes_nothing(tmp_path, monkeypatch, capsys):
    prof = _profile(tmp_path, "builtin:tiny-llama", hidden=48)
    work = tmp_path / "work"
    monkeypatch.setattr(footprint, "free_disk_bytes", lambda path: 1000)
    assert main(["plan", prof, "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "GB free" in err and "write about" in err
    assert main(["run", prof, "--workdir", str(work)]) == 2
    assert not list((work / "cache").glob("*/*")) if (work / "cache").exists() else True
    monkeypatch.undo()
    assert main(["plan", prof, "--workdir", str(work), "--json"]) == 0


def test_plan_for_another_machine_shows_the_needs_without_refusing(tmp_path, monkeypatch, capsys):
    """--source-shape plans for the machine that will run it: each stage's least memory is
    listed (the 8B recipe's prune needs ~3.6 GB), nothing is refused for this one's memory."""
    monkeypatch.setenv("MINITRON_HOST_MEMORY_GB", "1")
    prof = "profiles/llama-3.1-8b-minitron-4b.yaml"
    args = ["plan", prof, "--source-shape", "llama-3.1-8b", "--json"]
    assert main([*args, "--workdir", str(tmp_path / "w")]) == 0
    rows = {r["node"]: r for r in json.loads(capsys.readouterr().out.splitlines()[-1])["plan"]}
    s = LlamaShape.from_config(KNOWN_SHAPES["llama-3.1-8b"])
    assert rows["width/prune"]["est_peak_bytes"] == footprint.streamed_peak_bytes(
        s, read_back=False
    )
    assert 3e9 < rows["width/prune"]["est_peak_bytes"] < 4e9
    assert rows["width/distill"]["est_peak_bytes"] is None  # sized by `distill --estimate`
