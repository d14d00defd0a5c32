"""The throughput matrix: config checks, interleaved runs, ideals, reports, CLI."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from minitron_deploy.errors import InputError


@pytest.fixture(scope="module")
def shallow_ckpt(tmp_path_factory):
    """A depth-pruned shape of the tiny model: 2 of 5 layers."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("d") / "depth", num_hidden_layers=2)


def test_parse_matrix_specs():
    from minitron_deploy.bench import parse_matrix

    assert parse_matrix("16/8") == [(16, 8)]
    assert parse_matrix(" 128/128, 2048/128 ") == [(128, 128), (2048, 128)]
    assert parse_matrix(None, "cuda") == [(128, 128), (128, 2048), (2048, 128), (2048, 2048)]
    assert parse_matrix("default", "cpu") == [(128, 128), (128, 512), (512, 128)]
    for bad in ("16x8", "16/0", "", "a/b"):
        with pytest.raises(InputError):
            parse_matrix(bad)


def test_bench_config_is_strict():
    from minitron_deploy.bench import BenchConfig

    cfg = BenchConfig(isl_osl="16/8")
    assert cfg.isl_osl == ((16, 8),) and cfg.batches(3) == [32, 64, 64]
    assert BenchConfig(batch=8).batches(2) == [8, 8]
    with pytest.raises(ValidationError):
        BenchConfig(repeats=2)
    with pytest.raises(ValidationError, match="batch"):
        BenchConfig(batch=[0])
    with pytest.raises(ValidationError):
        BenchConfig(engines="torch")  # extra field
    with pytest.raises(InputError, match="batch sizes"):
        BenchConfig(batch=[1, 2, 3]).batches(2)
    assert all(f.description for f in BenchConfig.model_fields.values())


def test_matrix_torch_engine_interleaved_with_ideals_and_reports(tiny_ckpt, shallow_ckpt, tmp_path):
    from minitron_deploy.bench import BenchConfig, run_matrix, write_reports
    from minitron_deploy.bench.matrix import request_flops
    from minitron_deploy.model.io import read_config
    from minitron_deploy.model.shapes import LlamaShape

    cfg = BenchConfig(isl_osl="8/4", batch=[2, 4], dtype="float32", warmup=0)
    res = run_matrix([("base", tiny_ckpt), ("depth", shallow_ckpt)], cfg)
    base, depth = res["results"]
    assert (base["model"], base["batch"], depth["batch"]) == ("base", 2, 4)
    assert base["speedup_vs_base"] == 1.0 and base["ideal_speedup"] == 1.0
    sb, sd = (LlamaShape.from_config(read_config(p)) for p in (tiny_ckpt, shallow_ckpt))
    assert depth["ideal_speedup"] == pytest.approx(
        request_flops(sb, 8, 4) / request_flops(sd, 8, 4)
    )
    assert 1.0 < depth["ideal_speedup"] < 2.5
    assert depth["ideal_speedup_memory"] == pytest.approx(2 * sb.num_parameters / sd.num_parameters)
    for r in (base, depth):
        assert r["repeats"] == 3 and len(r["times_s"]) == 3
        assert r["req_s_min"] <= r["req_s"] <= r["req_s_max"]
        assert r["output_tok_s"] == pytest.approx(r["req_s"] * 4)
        assert r["req_s_lo"] <= r["req_s"] <= r["req_s_hi"]
        assert r["interval_coverage"] == pytest.approx(0.75)  # 3 repeats: [min, max]
    # the speedup: the median of per-round ratios (rounds interleaved), each round over the
    # base's rounds before and after it (the closing one after the last), with their range
    b_tok = [2 * 4 / tb for tb in base["times_s"]]
    after = [*b_tok[1:], base["closing_tok_s"]]
    ratios = sorted(
        (4 * 4 / td) / (b * a) ** 0.5
        for td, b, a in zip(depth["times_s"], b_tok, after, strict=True)
    )
    assert depth["speedup_vs_base"] == pytest.approx(ratios[1], rel=1e-3)
    assert depth["speedup_lo"] == pytest.approx(ratios[0], rel=1e-3)
    assert depth["speedup_hi"] == pytest.approx(ratios[2], rel=1e-3)
    files = write_reports(res, tmp_path / "out")
    names = sorted(f.name for f in files)
    assert names == ["report.md", "results.json", "throughput_torch_float32.png"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"][1]["model"] == (
        "depth"
    )
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| depth | torch | float32 | 8/4 | 4 |" in md
    lo, hi = depth["speedup_lo"], depth["speedup_hi"]
    assert f"{depth['speedup_vs_base']:,.2f}x [{lo:,.2f}, {hi:,.2f}]" in md
    assert (tmp_path / "out" / "throughput_torch_float32.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="already exists"):
        write_reports(res, tmp_path / "out")


def test_matrix_bad_input(tiny_ckpt):
    from minitron_deploy.bench import BenchConfig, run_matrix

    with pytest.raises(InputError, match="no models"):
        run_matrix([], BenchConfig())
    with pytest.raises(InputError, match="unique"):
        run_matrix([("a", tiny_ckpt), ("a", tiny_ckpt)], BenchConfig(isl_osl="4/4"))
    with pytest.raises(InputError, match="max_position_embeddings"):
        run_matrix([("a", tiny_ckpt)], BenchConfig(isl_osl="1000/100", batch=1, warmup=0))


def test_cli_bench_json_and_generate(tiny_ckpt, shallow_ckpt, tmp_path, capsys):
    from minitron_deploy.cli import main

    rc = main(
        ["bench", "--model", f"b={tiny_ckpt}", "--model", str(shallow_ckpt), "--matrix", "6/3"]
        + ["--batch", "2", "--warmup", "0", "--out", str(tmp_path / "o"), "--json"]
    )
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["model"] for r in last["results"]] == ["b", "depth"]
    assert (tmp_path / "o" / "report.md").is_file()

    rc = main(
        ["generate", "--model", str(tiny_ckpt), "--prompt", "def main(argv):"]
        + ["--max-new-tokens", "5", "--ignore-eos", "--json"]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["token_ids"]) == 5 and isinstance(out["text"], str)

    assert main(["bench", "--model", str(tiny_ckpt), "--batch", "0"]) == 2
    assert main(["bench", "--model", str(tiny_ckpt), "--repeats", "2"]) == 2
    assert main(["bench", "--model", str(tmp_path / "nope")]) == 2
    assert "batch" in capsys.readouterr().err
