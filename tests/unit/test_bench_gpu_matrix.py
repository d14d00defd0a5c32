"""benchmarks/gpu_matrix.py: its CPU-runnable dry run (tiny shapes) and the summary it prints."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def gpu_matrix():
    spec = importlib.util.spec_from_file_location("gpu_matrix", REPO / "benchmarks/gpu_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shapes_are_the_published_ones(gpu_matrix):
    from minitron_deploy.model.shapes import LlamaShape

    full = {k: LlamaShape.from_config(v) for k, v in gpu_matrix.configs(False).items()}
    assert full["llama-3.1-8b"].num_parameters == pytest.approx(8.03e9, rel=0.01)
    assert full["minitron-4b-width"].num_parameters == pytest.approx(4.51e9, rel=0.01)
    assert full["minitron-4b-depth"].num_parameters == pytest.approx(4.54e9, rel=0.01)
    assert full["minitron-4b-width"].head_dim * 32 != 3072  # head_dim stays explicit


def test_dry_run_bf16_and_fp8_with_sequential_mode(gpu_matrix, capsys):
    argv = ["--dry-run", "--pairs", "4/2", "--base-batch", "1", "--pruned-batch", "2"]
    assert gpu_matrix.main(argv + ["--warmup", "0", "--sequential"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = res["results"]
    assert len(rows) == 2 * 3  # (bf16, fp8) x 3 shapes x 1 pair
    assert {r["weights"] for r in rows} == {"bfloat16", "fp8"}
    assert all(r["batch"] == (1 if r["model"] == "llama-3.1-8b" else 2) for r in rows)
    s = res["summary"]
    assert s["minitron-4b-depth (bf16)"]["seed_trtllm_h100"] == 2.7
    assert s["minitron-4b-depth (bf16)"]["compute_ideal"] > 1.0
    assert "fp8 vs bf16 (llama-3.1-8b)" in s
    for r in rows:  # speedups in sequential mode are still relative to the 8B of that dtype
        base = next(
            x for x in rows if x["model"] == "llama-3.1-8b" and x["weights"] == r["weights"]
        )
        assert r["speedup_vs_base"] == pytest.approx(r["output_tok_s"] / base["output_tok_s"])
