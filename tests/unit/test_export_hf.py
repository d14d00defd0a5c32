"""HF BF16 export: reload in stock transformers gives identical logits; bad input writes nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from minitron_deploy.export.format import ExportSettings


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    """Width-pruned shape: hidden 48 != 6 heads x head_dim 16 (= 96)."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("w") / "pruned", seed=3, hidden_size=48)


@pytest.mark.parametrize("which", ["tiny_ckpt", "tiny_tied_ckpt", "pruned_ckpt"])
def test_hf_export_reloads_in_stock_transformers_with_identical_logits(which, request, tmp_path):
    import torch

    from minitron_deploy.export import export_model
    from minitron_deploy.export.hf import load_hf, logits_of
    from minitron_deploy.export.verify import probe_tokens
    from minitron_deploy.model.io import load_llama

    src = request.getfixturevalue(which)
    out = tmp_path / "hf"
    summary = export_model(src, out, "hf", ExportSettings(verify=False))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head_dim"] == 16 and cfg["architectures"] == ["LlamaForCausalLM"]
    for name in ("tokenizer.json", "generation_config.json", "provenance.json"):
        assert (out / name).is_file() and name in summary["files"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["export"]["format"] == "hf" and prov["source"]["sha256"]
    reloaded = load_hf(out)
    for p in reloaded.parameters():
        assert p.dtype == torch.float32  # loaded as float32 from bf16 files
    ref = load_llama(src, dtype="bfloat16").float()
    tokens = probe_tokens(cfg["vocab_size"])
    assert torch.equal(logits_of(ref, tokens), logits_of(reloaded, tokens))


def test_export_model_verify_reports_exact_match(pruned_ckpt, tmp_path):
    from minitron_deploy.export import export_model

    s = export_model(pruned_ckpt, tmp_path / "hf", "hf")
    assert s["verify"]["max_abs_diff"] == 0.0 and s["verify"]["top1_agreement"] == 1.0


def _drop_tensor(src, dest, name):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    f = dest / "model.safetensors"
    sd = load_file(str(f))
    del sd[name]
    save_file(sd, str(f))
    return dest


@pytest.mark.parametrize(
    "fmt,kw,given,match",
    [
        ("hf-fp8", {"dtype": "fp8"}, (), "calibration data"),
        ("trtllm-ckpt", {"dtype": "fp8"}, (), "calibration data"),
        ("trtllm-ckpt", {"tp_size": 4}, (), "does not divide"),
        ("trtllm-ckpt", {"tp_size": 3}, (), "does not divide"),
        ("hf", {"tp_size": 2}, ("tp_size",), "does not apply"),
        ("hf", {"dtype": "fp8"}, ("dtype",), "does not apply"),
        ("gguf", {}, (), "unknown export format"),
    ],
)
def test_bad_requests_raise_input_error_and_write_nothing(
    tiny_ckpt, tmp_path, fmt, kw, given, match
):
    from minitron_deploy.errors import InputError
    from minitron_deploy.export import export_model

    with pytest.raises(InputError, match=match):
        export_model(tiny_ckpt, tmp_path / "out", fmt, ExportSettings(**kw), given=set(given))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["hf", "trtllm-ckpt", "onnx"])
def test_missing_tensor_is_an_input_error_and_writes_nothing(tiny_ckpt, tmp_path, fmt):
    from minitron_deploy.errors import InputError
    from minitron_deploy.export import export_model

    src = _drop_tensor(tiny_ckpt, tmp_path / "src", "model.layers.2.mlp.up_proj.weight")
    with pytest.raises(InputError, match="missing"):
        export_model(src, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_failure_inside_a_writer_leaves_nothing_behind(tiny_ckpt, tmp_path, monkeypatch):
    import minitron_deploy.export as ex
    from minitron_deploy.export.registry import FORMATS

    def broken(src, dest, *args):
        (dest / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(FORMATS, "hf", dataclasses.replace(FORMATS["hf"], write=broken))
    with pytest.raises(RuntimeError):
        ex.export_model(tiny_ckpt, tmp_path / "out", "hf")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_prints_json_summary_last(tiny_ckpt, tmp_path, capsys):
    from minitron_deploy.cli import main

    out = tmp_path / "hf"
    assert (
        main(["export", "--model", str(tiny_ckpt), "--format", "hf", "--out", str(out), "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "hf" and summary["verify"]["max_abs_diff"] == 0.0
    assert (out / "model.safetensors").is_file()
    rc = main(
        ["export", "--model", str(tiny_ckpt), "--format", "hf-fp8", "--out", str(tmp_path / "x")]
    )
    assert rc == 2 and "calib" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_config_is_strict():
    from pydantic import ValidationError

    from minitron_deploy.export import ExportConfig

    cfg = ExportConfig(formats=["hf", "onnx"], tp_size=2)
    assert cfg.calib_samples == 512 and cfg.trtllm_dtype == "fp8"
    with pytest.raises(ValidationError):
        ExportConfig(formats=["gguf"])
    with pytest.raises(ValidationError):
        ExportConfig(tp=2)  # unknown field
    for name, field in ExportConfig.model_fields.items():
        assert field.description, name
