"""Triton model repositories: typed configs that Triton's own protobuf schema reads back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import sha256_tree
from minitron_deploy.triton import PackageConfig, package_triton
from minitron_deploy.triton.pbtxt import ModelSpec, TensorSpec, parse, parse_file, render_spec

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _configs(repo: Path) -> dict[str, object]:
    found = {p.parent.name: parse_file(p) for p in repo.rglob("config.pbtxt")}
    assert found, f"no config.pbtxt under {repo}"
    return found


def test_render_round_trips_through_triton_schema():
    spec = ModelSpec(
        name="m",
        backend="python",
        max_batch_size=5,
        inputs=(TensorSpec("a", "STRING", (1,)), TensorSpec("b", "INT32", (-1, 3), True)),
        outputs=(TensorSpec("c", "FP32", (2,)),),
        decoupled=True,
        instance_count=3,
        max_queue_delay_us=77,
        parameters={"k": "v w"},
    )
    msg = parse(render_spec(spec))
    assert (msg.name, msg.backend, msg.max_batch_size) == ("m", "python", 5)
    assert [
        (t.name, pb.DataType.Name(t.data_type), list(t.dims), t.optional) for t in msg.input
    ] == [
        ("a", "TYPE_STRING", [1], False),
        ("b", "TYPE_INT32", [-1, 3], True),
    ]
    assert msg.model_transaction_policy.decoupled
    assert msg.instance_group[0].count == 3
    assert msg.dynamic_batching.max_queue_delay_microseconds == 77
    assert msg.parameters["k"].string_value == "v w"
    with pytest.raises(InputError):
        render_spec(ModelSpec("m", "python", 1, (TensorSpec("a", "STR"),), ()))


def test_unfilled_numeric_template_variable_does_not_parse():
    with pytest.raises(InputError, match="invalid Triton model config"):
        parse('name: "x"\nmax_batch_size: ${triton_max_batch_size}\n')


@pytest.mark.parametrize("decoupled", [False, True])
def test_package_torch_layout(tiny_ckpt, tmp_path, decoupled):
    cfg = PackageConfig(backend="torch", max_batch_size=6, decoupled=decoupled, max_tokens=9)
    summary = package_triton(tiny_ckpt, tmp_path / "repo", cfg)
    repo = Path(summary["repo"])
    assert summary["models"] == ["minitron_llm"] and summary["layout"] == "python-backend"
    msg = _configs(repo)["minitron_llm"]
    assert msg.backend == "python" and msg.max_batch_size == 0  # batches itself, as llmapi
    assert msg.model_transaction_policy.decoupled is decoupled
    assert msg.parameters["max_batch_size"].string_value == "6"
    assert msg.parameters["default_max_tokens"].string_value == "9"
    assert msg.parameters["model_dir"].string_value == "model"
    version = repo / "minitron_llm" / "1"
    assert (version / "model.py").is_file()
    assert sha256_tree(version / "model") == sha256_tree(tiny_ckpt)
    # same file system: the weights are hard links (any checkpoint size packages in no time)
    (w,) = (version / "model").glob("*.safetensors")
    assert w.stat().st_ino == (tiny_ckpt / w.name).stat().st_ino


def test_package_trtllm_llmapi(tiny_ckpt, tmp_path):
    src = tmp_path / "llmapi"
    src.mkdir()
    for f in ("model.py", "helpers.py"):
        (src / f).write_text(f"# stand-in for TensorRT-LLM's {f}\n")
    cfg = PackageConfig(
        backend="trtllm",
        max_batch_size=32,
        decoupled=True,
        tensor_parallel_size=2,
        kv_cache_free_gpu_mem_fraction=0.5,
        llmapi_src=str(src),
    )
    summary = package_triton(tiny_ckpt, tmp_path / "repo", cfg)
    repo = Path(summary["repo"])
    assert summary["layout"] == "llmapi" and summary["models"] == ["tensorrt_llm"]
    msg = _configs(repo)["tensorrt_llm"]
    assert msg.backend == "python" and msg.max_batch_size == 0
    names = {t.name for t in msg.input}
    assert {"text_input", "sampling_param_max_tokens", "streaming"} <= names
    y = yaml.safe_load((repo / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert y["model"] == str(Path(tiny_ckpt).resolve()) and y["backend"] == "pytorch"
    assert y["tensor_parallel_size"] == 2 and y["max_batch_size"] == 32
    assert y["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5}
    assert y["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    assert (repo / "tensorrt_llm" / "1" / "helpers.py").is_file()


def test_package_trtllm_without_model_py_explains_where_it_comes_from(tiny_ckpt, tmp_path):
    summary = package_triton(tiny_ckpt, tmp_path / "r", PackageConfig(backend="trtllm"))
    readme = (Path(summary["repo"]) / "README.md").read_text()
    assert "triton_backend/all_models/llmapi/tensorrt_llm/1/" in readme
    assert not (tmp_path / "r" / "tensorrt_llm" / "1" / "model.py").exists()


def test_not_a_checkpoint_writes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="config.json"):
        package_triton(tmp_path / "src", tmp_path / "repo", PackageConfig())
    assert not (tmp_path / "repo").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo")]


def test_failure_midway_leaves_nothing(tiny_ckpt, tmp_path):
    bad = PackageConfig(backend="trtllm", llmapi_src=str(tmp_path))  # no model.py there
    with pytest.raises(InputError, match="llmapi_src"):
        package_triton(tiny_ckpt, tmp_path / "repo", bad)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("bad", [{"max_batch_size": 0}, {"max_batch_size": -3}, {"x": 1}])
def test_config_rejects_bad_values(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PackageConfig(**bad)


def test_cli_bad_input_exit_codes(tiny_ckpt, tmp_path, capsys):
    from minitron_deploy.cli import main

    def cli(*args: str) -> tuple[int, str]:
        code = main(["package", "triton", *args])
        return code, capsys.readouterr().err

    code, err = cli("--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a Hugging Face checkpoint" in err
    code, err = cli(
        "--model", str(tiny_ckpt), "--out", str(tmp_path / "o"), "--max-batch-size", "0"
    )
    assert code == 2 and "--max-batch-size" in err
    assert not (tmp_path / "o").exists()
    code, _ = cli("--model", str(tiny_ckpt), "--out", str(tmp_path / "o"), "--json")
    assert code == 0 and (tmp_path / "o" / "minitron_llm" / "config.pbtxt").is_file()
