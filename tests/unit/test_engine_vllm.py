"""The `vllm` engine's plumbing, without vLLM: options, refusals before anything starts, the
JSON-lines protocol against a STAND-IN worker, the search's engine check, and the Triton vLLM
repository. vLLM itself is exercised in tests/compat/test_vllm.py (when `.venv-vllm` exists)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from minitron_deploy.cli import main
from minitron_deploy.engines.registry import ENGINES
from minitron_deploy.engines.vllm_engine import VllmEngine, VllmOptions, VllmWorker
from minitron_deploy.errors import ConfigError, DependencyError, InputError, StageError

# A STAND-IN for the vLLM venv's python: answers `-c` probes as a python with vllm would, and
# otherwise speaks the worker protocol with made-up tokens (each row repeats its last prompt
# id, or emits EOS id 2 at step 3 when the prompt starts with 2). It runs no model.
STANDIN = r"""#!{python}
import json, os, sys
if sys.argv[1] == "-c":
    print("True")
    raise SystemExit(0)
env = {{k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "OMP_"))}}
print(json.dumps({{"ok": True, "vllm": "stand-in", "platform": "cpu", "env": env}}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == "quit":
        print(json.dumps({{"ok": True}}), flush=True)
        break
    if op == "load":
        if "refuse" in req["model"]:
            print(json.dumps({{"ok": False, "kind": "input", "error": "head_dim 16"}}), flush=True)
            continue
        print(json.dumps({{"ok": True, "load_seconds": 0.1, "seen": req}}), flush=True)
    elif op == "generate":
        if req["max_tokens"] == 13:
            print("vLLM crashed here", file=sys.stderr, flush=True)
            raise SystemExit(3)
        rows = []
        for p in req["prompts"]:
            row = [p[-1]] * req["max_tokens"]
            if p[0] == 2 and len(row) > 3:
                row[3] = 2
            rows.append(row)
        print(json.dumps({{"ok": True, "tokens": rows, "seconds": 0.01}}), flush=True)
    elif op == "throughput":
        n, osl = len(req["prompts"]), req["max_tokens"]
        print(json.dumps({{"ok": True, "seconds": 0.5, "requests": n, "output_tokens": n * osl,
                           "min_tokens": osl}}), flush=True)
    else:
        print(json.dumps({{"ok": True}}), flush=True)
"""


@pytest.fixture
def standin_python(tmp_path, monkeypatch):
    path = tmp_path / "standin-vllm-python"
    path.write_text(STANDIN.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("MINITRON_VLLM_PYTHON", str(path))
    from minitron_deploy.engines import vllm_engine

    vllm_engine._has_vllm.cache_clear()
    return path


@pytest.fixture
def no_vllm(monkeypatch, tmp_path):
    monkeypatch.setenv("MINITRON_VLLM_PYTHON", str(tmp_path / "nowhere" / "python"))


@pytest.fixture(scope="module")
def fp8_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with a Model-Optimizer FP8 marker (enough for the refusal)."""
    d = tmp_path_factory.mktemp("fp8") / "m"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_registry_record_and_typed_options():
    spec = ENGINES["vllm"]
    assert spec.cpu and spec.fp8 and spec.probe and spec.modules == ()
    assert spec.load() is VllmEngine
    with pytest.raises(ConfigError, match="thread"):
        VllmOptions.parse({"thread": 2})
    with pytest.raises(ConfigError, match="kv_cache_gb"):
        VllmOptions.parse({"kv_cache_gb": 0})
    from minitron_deploy.bench.config import BenchConfig

    with pytest.raises(ValueError, match="engine_opts for vllm: thread"):
        BenchConfig(engine="vllm", engine_opts={"thread": 2})
    assert BenchConfig(engine="vllm", engine_opts={"threads": 2}).engine_opts == {"threads": 2}


def test_fp8_on_cpu_is_refused_before_anything_starts(fp8_ckpt, no_vllm, capsys):
    with pytest.raises(InputError, match="static_scaled_fp8_quant"):
        VllmEngine(fp8_ckpt)
    assert main(["bench", "--model", str(fp8_ckpt), "--engine", "vllm", "--matrix", "8/4"]) == 2
    err = capsys.readouterr().err
    assert "FP8 checkpoint" in err and "empty stub on CPU" in err


def test_missing_venv_is_a_dependency_error_naming_make_vllm(tiny_ckpt, no_vllm, capsys):
    assert ENGINES["vllm"].missing() == ["a vLLM venv (.venv-vllm: `make vllm`)"]
    with pytest.raises(DependencyError, match="make vllm"):
        VllmEngine(tiny_ckpt)
    assert main(["bench", "--model", str(tiny_ckpt), "--engine", "vllm", "--matrix", "8/4"]) == 1
    assert "make vllm" in capsys.readouterr().err


def test_vllm_options_on_another_engine_exit_2(tiny_ckpt, capsys):
    args = ["bench", "--model", str(tiny_ckpt), "--engine", "torch", "--vllm-threads", "1"]
    assert main(args) == 2
    assert "--vllm-threads apply to --engine vllm only" in capsys.readouterr().err


def test_search_engine_check_names_the_missing_venv(no_vllm):
    from minitron_deploy.bench.config import BenchConfig
    from minitron_deploy.search.run import check_engine

    with pytest.raises(InputError, match=r"make vllm"):
        check_engine(BenchConfig(engine="vllm"))


def test_protocol_against_the_stand_in(tiny_ckpt, standin_python):
    e = VllmEngine(tiny_ckpt, dtype="float32", threads=1, kv_cache_gb=3)
    try:
        env = e.worker.hello["env"]
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
        assert len(env["VLLM_CPU_OMP_THREADS_BIND"].split(",")) == 1
        assert env["OMP_NUM_THREADS"] == "1"
        e.prepare([(8, 4)], batch=6)
        out = e.generate([[5, 6, 7], [2, 9, 9]], 6, ignore_eos=True)
        assert out == [[7] * 6, [9, 9, 9, 2, 9, 9]]
        assert e.generate([[5, 6, 7], [2, 9, 9]], 6) == [[7] * 6, [9, 9, 9, 2]]  # cut at EOS
        assert e.describe()["max_num_seqs"] == 6 and e.describe()["dtype"] == "float32"
        r = e.throughput(8, 4, 6)
        assert r["req_s"] == pytest.approx(12.0) and r["output_tok_s"] == pytest.approx(48.0)
        with pytest.raises(InputError, match="exceeds the model's max_position_embeddings"):
            e.generate([[5]], 5000)
        with pytest.raises(StageError, match="exited .*vLLM crashed here"):
            e.generate([[5]], 13)
    finally:
        e.close()
    assert e.worker.proc.poll() is not None


def test_a_shared_worker_serves_models_in_turn(tiny_ckpt, tmp_path, standin_python):
    refused = tmp_path / "refuse"
    shutil.copytree(tiny_ckpt, refused)
    with VllmWorker(VllmOptions()) as w:
        a = VllmEngine(tiny_ckpt, dtype="float32", worker=w)
        assert a.generate([[4, 5]], 2, ignore_eos=True) == [[5, 5]]
        a.close()
        b = VllmEngine(refused, dtype="float32", worker=w)
        with pytest.raises(InputError, match="vLLM cannot run this: head_dim 16"):
            b.generate([[4, 5]], 2)
        assert w.proc.poll() is None
    assert w.proc.poll() is not None


def test_bench_cli_runs_the_matrix_through_the_engine(tiny_ckpt, tmp_path, standin_python):
    """The matrix with --engine vllm (the STAND-IN worker reports 0.5 s per request set)."""
    out = tmp_path / "b"
    args = ["bench", "--model", f"base={tiny_ckpt}", "--model", f"same={tiny_ckpt}"]
    args += ["--engine", "vllm", "--matrix", "8/4,16/4", "--batch", "4", "--out", str(out)]
    assert main([*args, "--vllm-threads", "1", "--json"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["engine"] for r in res["results"]} == {"vllm"}
    assert len(res["results"]) == 4
    assert all(r["output_tok_s"] == pytest.approx(4 * 4 / 0.5) for r in res["results"])
    assert res["engines"]["base"]["options"]["threads"] == 1
    assert list(out.glob("*.png"))


def test_package_triton_vllm_backend(tiny_ckpt, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from minitron_deploy.triton import PackageConfig, package_triton
    from minitron_deploy.triton.pbtxt import parse_file

    cfg = PackageConfig(backend="vllm", max_batch_size=16, dtype="bfloat16", device="cuda")
    summary = package_triton(tiny_ckpt, tmp_path / "repo", cfg)
    assert summary["layout"] == "vllm-backend" and summary["models"] == ["vllm_model"]
    root = tmp_path / "repo" / "vllm_model"
    msg = parse_file(root / "config.pbtxt")
    assert msg.backend == "vllm" and msg.max_batch_size == 0
    assert msg.model_transaction_policy.decoupled  # upstream's model.py asserts it
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in msg.instance_group] == ["KIND_MODEL"]
    assert not msg.input and not msg.output  # the backend's auto_complete_config adds them
    args = json.loads((root / "1" / "model.json").read_text())
    assert args["model"] == str(Path(tiny_ckpt).resolve()) and os.path.isabs(args["model"])
    assert args["max_num_seqs"] == 16 and args["dtype"] == "bfloat16"
    assert args["gpu_memory_utilization"] == 0.9
    with pytest.raises(InputError, match="engine_dir"):
        package_triton(tiny_ckpt, tmp_path / "r2", PackageConfig(backend="vllm", engine_dir="x"))
    assert not (tmp_path / "r2").exists()


def test_plan_names_the_missing_venv_of_a_vllm_bench(no_vllm, tmp_path, capsys):
    """A profile's `bench.engine: vllm`: the plan marks the bench stage unavailable and why."""
    from tests.conftest import REPO

    prof = str(REPO / "profiles" / "ci-tiny.yaml")
    args = ["plan", prof, "--set", "bench.engine=vllm", "--workdir", str(tmp_path / "wd")]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["plan"]
    [bench] = [r for r in rows if r["stage"] == "bench"]
    assert bench["status"] == "unavailable" and "make vllm" in bench["why"]
