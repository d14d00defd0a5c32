"""Both Triton backends against TensorRT-LLM's llmapi model as read from upstream source.

`tests/fixtures/trtllm_llmapi_io.json` records the llmapi model's inputs, outputs, defaults and
response behaviour (each fact with the upstream path and commit it was read at). These tests
compare with it: the torch model's and the llmapi repository's config.pbtxt, the llmapi
config's transaction policy and multi-instance parameter, and the torch model's request
reading (`triton.requests.parse_inputs`) and text generation (echo, streaming steps). The real
server runs the same model in tests/integration/test_triton_server.py.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from minitron_deploy.errors import InputError
from minitron_deploy.triton import PackageConfig, package_triton
from minitron_deploy.triton.pbtxt import parse_file
from minitron_deploy.triton.requests import DEFAULTS, parse_inputs
from minitron_deploy.triton.runtime import Request, TextGenerator

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "trtllm_llmapi_io.json").read_text())
UPSTREAM_INPUTS = {i["name"]: i for i in FIXTURE["inputs"]}


def _package(ckpt: Path, out: Path, **kw) -> Path:
    summary = package_triton(ckpt, out, PackageConfig(**kw))
    (model,) = summary["models"]
    return Path(summary["repo"]) / model


def _io(msg) -> dict:
    def ttype(t):
        return pb.DataType.Name(t.data_type).removeprefix("TYPE_")

    return {
        "inputs": [(t.name, ttype(t), list(t.dims), t.optional) for t in msg.input],
        "outputs": [(t.name, ttype(t), list(t.dims)) for t in msg.output],
        "max_batch_size": msg.max_batch_size,
        "backend": msg.backend,
    }


UPSTREAM_IO = {
    "inputs": [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in FIXTURE["inputs"]],
    "outputs": [(o["name"], o["data_type"], o["dims"]) for o in FIXTURE["outputs"]],
    "max_batch_size": FIXTURE["config"]["max_batch_size"],
    "backend": FIXTURE["config"]["backend"],
}


@pytest.mark.parametrize("backend", ["torch", "trtllm"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_config_declares_upstreams_io(tiny_ckpt, tmp_path, backend, decoupled):
    model = _package(tiny_ckpt, tmp_path / "r", backend=backend, decoupled=decoupled)
    assert _io(parse_file(model / "config.pbtxt")) == UPSTREAM_IO


@pytest.mark.parametrize("decoupled", [False, True])
def test_llmapi_config_carries_model_yamls_transaction_policy(tiny_ckpt, tmp_path, decoupled):
    """Under --disable-auto-complete-config (upstream's launcher passes it) model.yaml's
    `decoupled` is never applied, so config.pbtxt must say the same itself."""
    assert "--disable-auto-complete-config" in FIXTURE["behaviour"]["server_flags"]
    model = _package(tiny_ckpt, tmp_path / "r", backend="trtllm", decoupled=decoupled)
    msg = parse_file(model / "config.pbtxt")
    y = yaml.safe_load((model / "1" / "model.yaml").read_text())
    assert msg.model_transaction_policy.decoupled is y["triton_config"]["decoupled"] is decoupled


def test_llmapi_multi_instance_names_each_instances_gpus(tiny_ckpt, tmp_path):
    name = FIXTURE["behaviour"]["multi_instance_parameter"]
    one = parse_file(_package(tiny_ckpt, tmp_path / "a", backend="trtllm") / "config.pbtxt")
    assert name not in one.parameters
    two = _package(
        tiny_ckpt, tmp_path / "b", backend="trtllm", instance_count=2, tensor_parallel_size=2
    )
    msg = parse_file(two / "config.pbtxt")
    assert msg.instance_group[0].count == 2
    assert msg.parameters[name].string_value == "0,1;2,3"
    given = _package(
        tiny_ckpt, tmp_path / "c", backend="trtllm", instance_count=2, gpu_device_ids="3;1"
    )
    assert parse_file(given / "config.pbtxt").parameters[name].string_value == "3;1"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="instances"):
        PackageConfig(backend="trtllm", instance_count=3, gpu_device_ids="0;1")
    with pytest.raises(ValidationError, match="must look like"):
        PackageConfig(backend="trtllm", instance_count=2, gpu_device_ids="0;gpu1")


# ---- the torch model's reading of a request ---------------------------------------------------
def _getter(tensors: dict[str, np.ndarray], seen: set[str] | None = None):
    def get(name):
        if seen is not None:
            seen.add(name)
        return tensors.get(name)

    return get


PROMPT = {"text_input": np.array([b"def main(argv):"], dtype=np.object_)}


def test_every_declared_input_is_read_with_upstreams_default():
    assert set(DEFAULTS) | {"text_input"} == set(UPSTREAM_INPUTS)
    for name, default in DEFAULTS.items():
        assert default == UPSTREAM_INPUTS[name]["default"], name
    seen: set[str] = set()
    call = parse_inputs(_getter(PROMPT, seen), decoupled=True)
    assert seen == set(UPSTREAM_INPUTS)  # no declared input left unread
    (req,) = call.requests
    assert call.echo is FIXTURE["behaviour"]["echo_default"] and req.echo
    assert req.max_tokens == UPSTREAM_INPUTS["sampling_param_max_tokens"]["default"]
    assert req.sampling.temperature == 0.0 and req.stop == ()  # all absent: greedy
    assert not call.streaming and not call.cancel and not any(call.flags.values())


def test_explicit_values_are_honoured():
    b = lambda v: np.array([v])  # noqa: E731
    tensors = {
        **PROMPT,
        "sampling_param_exclude_input_from_output": b(True),
        "sampling_param_max_tokens": np.array([5], dtype=np.int32),
        "sampling_param_top_k": np.array([7], dtype=np.int32),
        "sampling_param_seed": np.array([3], dtype=np.uint64),
        "sampling_param_stop": np.array([b"\n", b"x"], dtype=np.object_),
        "return_stop_reason": b(True),
        # the defaults, given explicitly, are accepted
        "sampling_param_best_of": np.array([1], dtype=np.int32),
        "sampling_param_presence_penalty": np.array([0.0], dtype=np.float32),
        "sampling_param_return_perf_metrics": b(False),
    }
    call = parse_inputs(_getter(tensors), decoupled=False)
    (req,) = call.requests
    assert not call.echo and not req.echo
    assert (req.max_tokens, req.stop) == (5, ("\n", "x"))
    # only top_k given: TensorRT-LLM samples (temperature 1.0), not greedy
    assert (req.sampling.temperature, req.sampling.top_k, req.sampling.seed) == (1.0, 7, 3)
    assert call.flags == {"finish_reason": False, "stop_reason": True, "cumulative_logprob": False}


@pytest.mark.parametrize(
    "name,value",
    [
        ("sampling_param_best_of", np.array([2], dtype=np.int32)),
        ("sampling_param_frequency_penalty", np.array([0.5], dtype=np.float32)),
        ("sampling_param_presence_penalty", np.array([-1.0], dtype=np.float32)),
        ("sampling_param_return_perf_metrics", np.array([True])),
    ],
)
def test_values_the_engine_cannot_honour_are_refused(name, value):
    with pytest.raises(InputError, match=name):
        parse_inputs(_getter({**PROMPT, name: value}), decoupled=True)


def test_stop_is_a_cancellation_and_streaming_needs_decoupled():
    call = parse_inputs(_getter({"stop": np.array([True])}), decoupled=True)
    assert call.cancel and not call.requests
    streaming = {**PROMPT, "streaming": np.array([True])}
    with pytest.raises(
        InputError, match=re.escape(FIXTURE["behaviour"]["streaming_without_decoupled"]["error"])
    ):
        parse_inputs(_getter(streaming), decoupled=False)
    call = parse_inputs(_getter(streaming), decoupled=True)
    # a stream never carries the prompt, whatever exclude_input_from_output says
    assert call.streaming and not call.echo and not call.requests[0].echo
    assert FIXTURE["behaviour"]["streaming_includes_prompt"] is False


# ---- what the torch model answers ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(tiny_ckpt):
    return TextGenerator(tiny_ckpt, dtype="float32")


def test_echo_is_prompt_and_completion_detokenized_together(gen):
    prompt = "import os, sys"
    ids = gen.encode(prompt)
    tokens = gen.engine.generate([ids], 9)[0]
    plain, echoed = gen.complete([Request(prompt, 9), Request(prompt, 9, echo=True)])
    assert plain.text == gen.decode(tokens)
    assert echoed.text == gen.decode([*ids, *tokens])  # detokenize(prompt ids + output ids)
    assert echoed.text.startswith(prompt) and echoed.text != plain.text
    stop = plain.text[2:4]
    assert stop
    (cut,) = gen.complete([Request(prompt, 9, stop=(stop,), echo=True)])
    assert cut.text == prompt + plain.text[: plain.text.index(stop)]
    assert cut.stop_reason == stop and cut.finish_reason == "stop"


def test_steps_end_with_one_final_step_and_accumulate_to_the_completion(gen):
    full = gen.complete([Request("The quick brown fox", 12)])[0].text
    steps = list(gen.steps("The quick brown fox", 12))
    assert [s.done for s in steps] == [False] * (len(steps) - 1) + [True]
    texts = np.cumsum(np.array([s.delta for s in steps], dtype=object)).tolist()
    assert texts[-1] == full and all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert gen.last is not None and gen.last.text == full
    assert steps[-1].cumulative_logprob == pytest.approx(gen.last.cumulative_logprob)


def test_load_benchmark_counts_generated_tokens_only():
    """benchmarks/triton_load.py's payload (as aiperf renders it) asks for the completion
    alone, so the tokens aiperf counts in `text_output` are generated ones, whichever backend
    answers (llmapi echoes the prompt by default)."""
    import importlib.util

    jinja2 = pytest.importorskip("jinja2")
    path = Path(__file__).parents[2] / "benchmarks" / "triton_load.py"
    spec = importlib.util.spec_from_file_location("triton_load", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prompt = 'print("hi")\n'
    body = json.loads(jinja2.Template(bench.payload_template(8)).render(text=prompt))
    assert body["text_input"] == prompt
    tensors = {
        "text_input": np.array([prompt.encode()], dtype=np.object_),
        "sampling_param_max_tokens": np.array([body["sampling_param_max_tokens"]], np.int32),
    }
    for name, value in body.items():
        if isinstance(value, bool):
            tensors[name] = np.array([value])
    call = parse_inputs(_getter(tensors), decoupled=True)
    assert not call.echo and call.requests[0].max_tokens == 8
