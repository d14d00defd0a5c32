"""The legacy inflight_batcher_llm ensemble, filled from (stand-in) release templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minitron_deploy.errors import InputError
from minitron_deploy.triton import PackageConfig, package_triton
from minitron_deploy.triton.legacy import ENSEMBLE_MODELS, fill
from minitron_deploy.triton.pbtxt import parse_file

pytest.importorskip("tritonclient.grpc.model_config_pb2")

# A stand-in for TensorRT-LLM's templates: the same `${var}` conventions, few tensors.
_TEMPLATE = """
name: "{name}"
backend: "{backend}"
max_batch_size: ${{triton_max_batch_size}}
model_transaction_policy {{ decoupled: ${{decoupled_mode}} }}
input [ {{ name: "x" data_type: TYPE_INT32 dims: [ -1 ] }} ]
output [ {{ name: "y" data_type: ${{logits_datatype}} dims: [ -1 ] }} ]
parameters: {{ key: "gpt_model_path" value: {{ string_value: "${{engine_dir}}" }} }}
parameters: {{ key: "tokenizer_dir" value: {{ string_value: "${{tokenizer_dir}}" }} }}
parameters: {{ key: "kv_cache_free_gpu_mem_fraction"
              value: {{ string_value: "${{kv_cache_free_gpu_mem_fraction}}" }} }}
parameters: {{ key: "lora_prefetch_dir" value: {{ string_value: "${{lora_prefetch_dir}}" }} }}
"""


def _templates(root: Path) -> Path:
    for name in ENSEMBLE_MODELS:
        (root / name / "1").mkdir(parents=True)
        backend = {"tensorrt_llm": "tensorrtllm", "ensemble": ""}.get(name, "python")
        text = _TEMPLATE.format(name=name, backend=backend)
        if name == "ensemble":
            text = text.replace('backend: ""\n', 'platform: "ensemble"\n').replace(
                "model_transaction_policy { decoupled: ${decoupled_mode} }", ""
            )
        (root / name / "config.pbtxt").write_text(text)
        if name in ("preprocessing", "postprocessing"):
            (root / name / "1" / "model.py").write_text("# release model file stand-in\n")
    return root


def _engine(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"version": "1.2.0", "build_config": {}}))
    (root / "rank0.engine").write_bytes(b"\0" * 16)
    return root


def test_legacy_ensemble_with_standin_templates(tiny_ckpt, tmp_path):
    cfg = PackageConfig(
        backend="trtllm",
        max_batch_size=16,
        decoupled=True,
        kv_cache_free_gpu_mem_fraction=0.7,
        engine_dir=str(_engine(tmp_path / "engine")),
        legacy_templates=str(_templates(tmp_path / "tpl")),
    )
    summary = package_triton(tiny_ckpt, tmp_path / "repo", cfg)
    repo = Path(summary["repo"])
    assert summary["layout"] == "inflight_batcher_llm"
    assert sorted(summary["models"]) == sorted(ENSEMBLE_MODELS)
    for name in ENSEMBLE_MODELS:
        text = (repo / name / "config.pbtxt").read_text()
        assert "${" not in text, name
        msg = parse_file(repo / name / "config.pbtxt")
        assert msg.name == name and msg.max_batch_size == 16
        params = {k: v.string_value for k, v in msg.parameters.items()}
        assert params["gpt_model_path"] == str((tmp_path / "engine").resolve())
        assert params["tokenizer_dir"] == str(Path(tiny_ckpt).resolve())
        assert params["kv_cache_free_gpu_mem_fraction"] == "0.7"
        assert "lora_prefetch_dir" not in params  # optional and unset: left to the default
    trt = parse_file(repo / "tensorrt_llm" / "config.pbtxt")
    assert trt.backend == "tensorrtllm" and trt.model_transaction_policy.decoupled
    assert (repo / "preprocessing" / "1" / "model.py").is_file()


def test_fill_refuses_an_unset_typed_field():
    with pytest.raises(InputError, match="no_such_count"):
        fill('name: "m"\nmax_batch_size: ${no_such_count}\n', {}, where="t")


def test_legacy_needs_engine_and_templates(tiny_ckpt, tmp_path):
    not_engine = tmp_path / "e"
    not_engine.mkdir()
    with pytest.raises(InputError, match="not a TensorRT-LLM engine"):
        package_triton(
            tiny_ckpt, tmp_path / "r", PackageConfig(backend="trtllm", engine_dir=str(not_engine))
        )
    with pytest.raises(InputError, match="templates"):
        package_triton(
            tiny_ckpt,
            tmp_path / "r",
            PackageConfig(backend="trtllm", engine_dir=str(_engine(tmp_path / "eng"))),
        )
    assert not (tmp_path / "r").exists()
