"""TensorRT-LLM driver, run against STAND-IN `trtllm-bench` / `trtllm-build` scripts on PATH.

The stand-ins are not TensorRT-LLM: they check the command lines and inputs the way the real
tools read them (flags of `trtllm-bench ... throughput`, the JSONL dataset, the engine's
build_config.max_seq_len) and write a report in trtllm-bench's `--report_json` format.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from minitron_deploy.errors import DependencyError, InputError, StageError

STANDIN_BENCH = r"""
import argparse, json, os, sys
log = os.environ["STANDIN_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(["trtllm-bench"] + sys.argv[1:]) + "\n")
g = argparse.ArgumentParser()
g.add_argument("--model", required=True)
g.add_argument("--model_path", required=True)
g.add_argument("cmd", choices=["throughput"])
g.add_argument("--dataset", required=True)
g.add_argument("--backend", choices=["pytorch", "tensorrt", "_autodeploy"], default="pytorch")
g.add_argument("--engine_dir")
g.add_argument("--max_batch_size", type=int)
g.add_argument("--concurrency", type=int, default=-1)
g.add_argument("--eos_id", type=int, default=-1)
g.add_argument("--warmup", type=int, default=2)
g.add_argument("--max_seq_len", type=int)
g.add_argument("--report_json", required=True)
a = g.parse_args()
# trtllm-bench reads an HF config (model_type), safetensors and tokenizer from --model_path
mcfg = json.load(open(os.path.join(a.model_path, "config.json")))
assert "model_type" in mcfg, "model_path is not an HF checkpoint"
assert os.path.isfile(os.path.join(a.model_path, "tokenizer.json")), "no tokenizer"
reqs = [json.loads(line) for line in open(a.dataset)]
assert reqs and all(set(r) == {"task_id", "input_ids", "output_tokens"} for r in reqs)
isl = {len(r["input_ids"]) for r in reqs}; osl = {r["output_tokens"] for r in reqs}
assert len(isl) == 1 and len(osl) == 1, "ISL/OSL must be exact"
isl, osl = isl.pop(), osl.pop()
if a.backend == "tensorrt":
    assert a.engine_dir and a.max_seq_len is None, "engine needed; max_seq_len is build-time"
    bc = json.load(open(os.path.join(a.engine_dir, "config.json")))["build_config"]
    assert bc["max_seq_len"] >= isl + osl and bc["max_batch_size"] >= a.max_batch_size
seconds = len(reqs) * (isl + osl) / 1e5  # a made-up, deterministic speed
perf = {
    "total_latency_ms": seconds * 1e3,
    "avg_request_latency_ms": seconds * 1e3 / 2,
    "request_throughput_req_s": len(reqs) / seconds,
    "system_output_throughput_tok_s": len(reqs) * osl / seconds,
    "system_total_throughput_tok_s": len(reqs) * (isl + osl) / seconds,
}
json.dump({"engine": {"model": a.model, "backend": a.backend}, "performance": perf},
          open(a.report_json, "w"))
"""

STANDIN_BUILD = r"""
import argparse, json, os, sys
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps(["trtllm-build"] + sys.argv[1:]) + "\n")
g = argparse.ArgumentParser()
g.add_argument("--checkpoint_dir", required=True)
g.add_argument("--output_dir", required=True)
for k in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens"):
    g.add_argument("--" + k, type=int, required=True)
for k in ("gemm_plugin", "gpt_attention_plugin", "remove_input_padding", "paged_kv_cache",
          "context_fmha", "use_fp8_context_fmha"):
    g.add_argument("--" + k)
a = g.parse_args()
cfg = json.load(open(os.path.join(a.checkpoint_dir, "config.json")))
assert cfg["architecture"] == "LlamaForCausalLM"
assert os.path.isfile(os.path.join(a.checkpoint_dir, "rank0.safetensors"))
q = cfg["quantization"]
if q["quant_algo"] == "FP8":
    assert a.gemm_plugin is None
# FP8 context FMHA only with an FP8 KV cache in the checkpoint. Without the flag trtllm-build
# 1.x enables it for every FP8 checkpoint (PluginConfig default True, builder.build keeps it
# for quant_algo FP8), so the effective setting is judged, not the flag alone.
fmha = a.use_fp8_context_fmha or ("enable" if q["quant_algo"] == "FP8" else "disable")
assert (fmha == "enable") == (q["kv_cache_quant_algo"] == "FP8"), (fmha, q)
os.makedirs(a.output_dir, exist_ok=True)
bc = {k: v for k, v in vars(a).items() if k not in ("checkpoint_dir", "output_dir")}
json.dump({"version": "standin", "pretrained_config": cfg, "build_config": bc},
          open(os.path.join(a.output_dir, "config.json"), "w"))
open(os.path.join(a.output_dir, "rank0.engine"), "wb").close()
"""


@pytest.fixture()
def standins(tmp_path, monkeypatch):
    """Put stand-in trtllm-bench and trtllm-build on PATH; returns the command log path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (("trtllm-bench", STANDIN_BENCH), ("trtllm-build", STANDIN_BUILD)):
        p = bindir / name
        p.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        p.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return log


def _calls(log) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _legacy_checkpoint(path, quant_algo=None, kv_algo=None, source=None):
    import torch
    from safetensors.torch import save_file

    path.mkdir()
    cfg = {
        "architecture": "LlamaForCausalLM",
        "dtype": "bfloat16",
        "vocab_size": 301,
        "max_position_embeddings": 1024,
        "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_algo},
    }
    (path / "config.json").write_text(json.dumps(cfg))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(path / "rank0.safetensors"))
    if source is not None:  # as our exporter records it
        (path / "provenance.json").write_text(json.dumps({"source": {"path": str(source)}}))
    return path


def test_dataset_and_command_line(tmp_path):
    from minitron_deploy.engines.trtllm import bench_command, synthetic_rows, write_dataset

    rows = synthetic_rows(7, 3, vocab_size=50, seed=1)
    assert rows == synthetic_rows(7, 3, vocab_size=50, seed=1)  # reproducible
    ds = write_dataset(tmp_path / "d.jsonl", rows, 5)
    lines = [json.loads(x) for x in ds.read_text().splitlines()]
    assert [x["task_id"] for x in lines] == [0, 1, 2]
    assert all(len(x["input_ids"]) == 7 and x["output_tokens"] == 5 for x in lines)
    assert all(0 <= t < 50 for x in lines for t in x["input_ids"])
    cmd = bench_command("m", "/ckpt", ds, "r.json", batch=64)
    assert cmd[:6] == ["trtllm-bench", "--model", "m", "--model_path", "/ckpt", "throughput"]
    joined = " ".join(cmd)
    for flag in ("--backend pytorch", "--max_batch_size 64", "--concurrency 64", "--eos_id -1"):
        assert flag in joined
    assert "--engine_dir" not in cmd


def test_pytorch_backend_with_standin_trtllm_bench(standins, tiny_ckpt, tmp_path):
    from minitron_deploy.engines import get_engine

    eng = get_engine("trtllm", tiny_ckpt, work_dir=tmp_path / "w", model_name="tiny")
    out = eng.throughput(isl=16, osl=8, batch=4, num_requests=8)
    # the stand-in's made-up speed: 8 requests x 24 tokens at 1e5 tokens/s
    assert out["req_s"] == pytest.approx(8 / (8 * 24 / 1e5))
    assert out["output_tok_s"] == pytest.approx(out["req_s"] * 8)
    (call,) = _calls(standins)
    assert call[call.index("--backend") + 1] == "pytorch"
    assert call[call.index("--model_path") + 1] == str(tiny_ckpt)
    assert eng.describe()["backend"] == "pytorch"
    with pytest.raises(InputError, match="max_position_embeddings"):
        eng.throughput(isl=1000, osl=100, batch=1)


@pytest.mark.parametrize("quant,kv", [(None, None), ("FP8", None), ("FP8", "FP8")])
def test_legacy_engine_build_with_standin_trtllm_build_and_bench(
    standins, tiny_ckpt, tmp_path, quant, kv
):
    from minitron_deploy.engines import get_engine

    ckpt = _legacy_checkpoint(tmp_path / "ckpt", quant, kv)
    eng = get_engine("trtllm", ckpt, work_dir=tmp_path / "w", hf_dir=tiny_ckpt)
    assert eng.describe()["profile"].endswith("fp8.yaml" if quant else "bf16.yaml")
    out = eng.throughput(isl=32, osl=16, batch=8, num_requests=8)
    assert out["output_tok_s"] > 0
    build, bench = _calls(standins)
    b = dict(zip(build[1::2], build[2::2], strict=False))
    assert b["--max_batch_size"] == "8" and b["--max_input_len"] == "32"
    assert b["--max_seq_len"] == "48" and b["--max_num_tokens"] == "8192"
    assert ("--gemm_plugin" in b) == (quant is None)
    assert b["--use_fp8_context_fmha"] == ("enable" if kv == "FP8" else "disable")
    assert bench[bench.index("--backend") + 1] == "tensorrt"
    assert bench[bench.index("--engine_dir") + 1] == b["--output_dir"]
    assert bench[bench.index("--model_path") + 1] == str(tiny_ckpt)  # the HF folder


def test_legacy_checkpoint_without_its_hf_folder_is_refused(tmp_path):
    from minitron_deploy.engines import get_engine

    ckpt = _legacy_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InputError, match="--hf-dir"):
        get_engine("trtllm", ckpt)


def test_cli_bench_on_a_legacy_checkpoint_builds_one_engine(standins, tiny_ckpt, tmp_path, capsys):
    """Through the CLI, stand-in tools: the HF folder comes from the checkpoint's provenance,
    one engine serves both pairs and every repeat."""
    from minitron_deploy.cli import main

    ckpt = _legacy_checkpoint(tmp_path / "ckpt", source=tiny_ckpt)
    argv = ["bench", "--model", str(ckpt), "--engine", "trtllm", "--matrix", "16/8,32/16"]
    assert main([*argv, "--batch", "4", "--num-requests", "8", "--json"]) == 0
    calls = _calls(standins)
    builds = [c for c in calls if c[0] == "trtllm-build"]
    benches = [c for c in calls if c[0] == "trtllm-bench"]
    assert len(builds) == 1 and len(benches) == 2 * 3
    b = dict(zip(builds[0][1::2], builds[0][2::2], strict=False))
    assert b["--max_input_len"] == "32" and b["--max_seq_len"] == "48"  # covers both pairs
    assert {c[c.index("--model_path") + 1] for c in benches} == {str(tiny_ckpt)}
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]
    assert [(r["isl"], r["osl"]) for r in rows] == [(16, 8), (32, 16)]


def test_cli_generate_on_a_legacy_checkpoint(standins, tiny_ckpt, tmp_path, monkeypatch, capsys):
    """`generate --engine trtllm` on a legacy checkpoint: the engine is built, then TensorRT-LLM's
    TensorRT-engine LLM runs it with the HF folder's tokenizer. `tensorrt_llm` here is a
    STAND-IN module recording what it is given (the real one needs a GPU)."""
    import types

    seen = {}

    class StandinLLM:
        def __init__(self, model, tokenizer):
            seen["model"], seen["tokenizer"] = model, tokenizer

        def generate(self, rows, sp):
            seen["sampling"] = sp
            out = types.SimpleNamespace(token_ids=[7, 8, 9][: sp.max_tokens])
            return [types.SimpleNamespace(outputs=[out]) for _ in rows]

        def shutdown(self):
            seen["closed"] = True

    class StandinSamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    pkg = types.ModuleType("tensorrt_llm")
    pkg.SamplingParams = StandinSamplingParams
    trt = types.ModuleType("tensorrt_llm._tensorrt_engine")
    trt.LLM = StandinLLM
    monkeypatch.setitem(sys.modules, "tensorrt_llm", pkg)
    monkeypatch.setitem(sys.modules, "tensorrt_llm._tensorrt_engine", trt)
    ckpt = _legacy_checkpoint(tmp_path / "ckpt")
    argv = ["generate", "--model", str(ckpt), "--engine", "trtllm", "--hf-dir", str(tiny_ckpt)]
    assert main_cli([*argv, "--prompt", "def main(", "--max-new-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["token_ids"] == [7, 8, 9]
    (build,) = _calls(standins)
    assert seen["model"] == build[build.index("--output_dir") + 1]  # the built engine
    assert seen["tokenizer"] == str(tiny_ckpt) and seen["closed"]
    assert seen["sampling"].top_k == 1 and seen["sampling"].max_tokens == 3


def main_cli(argv):
    from minitron_deploy.cli import main

    return main(argv)


def test_matrix_with_standin_trtllm_bench(standins, tiny_ckpt, tmp_path):
    from minitron_deploy.bench import BenchConfig, run_matrix

    cfg = BenchConfig(engine="trtllm", isl_osl="16/8,8/8", batch=[4, 8], num_requests=8)
    res = run_matrix([("base", tiny_ckpt), ("copy", tiny_ckpt)], cfg)
    rows = res["results"]
    # 2 models x 2 pairs x 3 repeats, and the base's closing round per pair
    assert len(rows) == 4 and len(_calls(standins)) == 4 * 3 + 2
    assert all(r["engine"] == "trtllm" and r["spread"] == 0 for r in rows)
    assert all(r["ideal_speedup"] == pytest.approx(1.0) for r in rows)


def test_missing_tool_and_bad_report(tiny_ckpt, tmp_path, monkeypatch):
    from minitron_deploy.engines import get_engine
    from minitron_deploy.engines.trtllm import parse_report

    monkeypatch.setenv("PATH", str(tmp_path))
    eng = get_engine("trtllm", tiny_ckpt, work_dir=tmp_path / "w")
    with pytest.raises(DependencyError, match="trtllm-bench is not on PATH"):
        eng.throughput(8, 8, 2)
    (tmp_path / "r.json").write_text(json.dumps({"performance": {"total_latency_ms": 1}}))
    with pytest.raises(StageError, match="trtllm-bench report"):
        parse_report(tmp_path / "r.json")


def test_engine_profiles_ship_in_the_wheel(tmp_path):
    """The profiles are package data: found through importlib.resources, and in a built wheel
    (the Docker image copies the package, so it has them too)."""
    import subprocess
    import zipfile
    from pathlib import Path

    from minitron_deploy.engines.trtllm import load_profile, profiles_dir

    assert {p.name for p in profiles_dir().glob("*.yaml")} == {"bf16.yaml", "fp8.yaml"}
    assert "use_fp8_context_fmha" not in load_profile(profiles_dir() / "fp8.yaml")["build"]
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".",
         "-w", str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("minitron_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in (
        "engines/profiles/bf16.yaml",
        "engines/profiles/fp8.yaml",
        "triton/model_py/torch_model.py",
    ):
        assert f"minitron_deploy/{f}" in names, f
    dockerfile = (repo / "Dockerfile").read_text()
    assert "COPY minitron_deploy ./minitron_deploy" in dockerfile
