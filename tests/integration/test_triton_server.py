"""End to end: package a tiny model (torch backend), serve it with a real tritonserver, query it.

The server is the Triton 2.51 bundled in nvidia-pytriton, on CPU. Answers must equal the
built-in engine's greedy output for the same prompts, and behave as TensorRT-LLM's llmapi model
(`tests/fixtures/trtllm_llmapi_io.json`): the prompt echoed unless excluded, streamed responses
carrying the completion so far, `stop` cancelling by request id. Skipped only when the
tritonserver binary is missing; a server that fails to start with our repository fails the test.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from minitron_deploy.triton import PackageConfig, package_triton

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PROMPTS = ["def main(argv):", "The quick brown fox", "import os, sys", "Return the value"]
FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "trtllm_llmapi_io.json").read_text()
)["behaviour"]
EXCLUDE = {"exclude_input_from_output": True}
MAX_TOKENS = [6, 10, 3, 8]


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    from minitron_deploy.errors import DependencyError
    from minitron_deploy.triton.server import TritonServer, pytriton_root

    try:
        pytriton_root()  # the bundled tritonserver binary
    except DependencyError as e:
        pytest.skip(f"no tritonserver binary: {e.what}")

    root = tmp_path_factory.mktemp("triton")
    common = dict(backend="torch", max_batch_size=4, num_threads=1, max_tokens=7)
    package_triton(tiny_ckpt, root / "repo", PackageConfig(**common, model_name="llm"))
    stream = package_triton(
        tiny_ckpt,
        root / "stream",
        PackageConfig(**common, model_name="llm_stream", decoupled=True, copy_model=False),
    )
    shutil.copytree(root / "stream" / "llm_stream", root / "repo" / "llm_stream")
    assert stream["models"] == ["llm_stream"]
    srv = TritonServer(root / "repo", log_path=root / "server.log", ready_timeout_s=240)
    srv.start()  # our model failing to load is a failure, not a skip
    yield srv
    pid = srv.pid
    srv.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by PID, nothing left


@pytest.fixture(scope="module")
def gen(tiny_ckpt):
    from minitron_deploy.triton.runtime import TextGenerator

    return TextGenerator(tiny_ckpt)


@pytest.fixture(scope="module")
def expected(gen):
    """Greedy completions computed in this process with the same engine."""
    return [
        gen.decode(gen.engine.generate([gen.encode(p)], m)[0])
        for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)
    ]


@pytest.fixture(scope="module")
def echoed(gen):
    """The same with the prompt: its ids and the output ids detokenized together."""
    out = []
    for p, m in zip(PROMPTS, MAX_TOKENS, strict=True):
        ids = gen.encode(p)
        out.append(gen.decode([*ids, *gen.engine.generate([ids], m)[0]]))
    return out


def _inputs(module, prompts, max_tokens, **params):
    """llmapi-shaped inputs (no batch dim): text_input [n], sampling_param_* [1]."""
    text = module.InferInput("text_input", [len(prompts)], "BYTES")
    text.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_))
    out = [text]
    typed = {"max_tokens": ("INT32", np.int32), "temperature": ("FP32", np.float32),
             "top_k": ("INT32", np.int32), "top_p": ("FP32", np.float32),
             "seed": ("UINT64", np.uint64)}  # fmt: skip
    for name, value in {"max_tokens": max_tokens, **params}.items():
        if name == "stop":
            t = module.InferInput("sampling_param_stop", [len(value)], "BYTES")
            t.set_data_from_numpy(np.array([v.encode() for v in value], dtype=np.object_))
        elif name == "cancel":  # llmapi's `stop` BOOL input (a cancellation)
            t = module.InferInput("stop", [1], "BOOL")
            t.set_data_from_numpy(np.array([value]))
        elif name.startswith("return_") or name == "streaming":
            t = module.InferInput(name, [1], "BOOL")
            t.set_data_from_numpy(np.array([value]))
        elif name in ("exclude_input_from_output", "return_perf_metrics"):
            t = module.InferInput(f"sampling_param_{name}", [1], "BOOL")
            t.set_data_from_numpy(np.array([value]))
        else:
            kind, dt = typed[name]
            t = module.InferInput(f"sampling_param_{name}", [1], kind)
            t.set_data_from_numpy(np.array([value], dtype=dt))
        out.append(t)
    return out


def _texts(result) -> list[str]:
    return [v.decode() for v in result.as_numpy("text_output").reshape(-1)]


def _stream(grpc, url: str, model: str, requests: list[list]) -> dict[str, list]:
    """Send requests over one gRPC stream; responses grouped by request id."""
    responses: queue.Queue = queue.Queue()
    client = grpc.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    for i, inputs in enumerate(requests):
        client.async_stream_infer(
            model, inputs, request_id=str(i), enable_empty_final_response=True
        )
    got: dict[str, list] = {str(i): [] for i in range(len(requests))}
    finals = 0
    while finals < len(requests):
        result, error = responses.get(timeout=120)
        assert error is None, error
        resp = result.get_response()
        if result.as_numpy("text_output") is not None:
            got[resp.id].append(result)
        finals += resp.parameters["triton_final_response"].bool_param
    client.stop_stream()
    return got


def test_http_batch_request(server, gen):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    assert client.is_model_ready("llm")
    result = client.infer("llm", _inputs(http, PROMPTS, 6, **EXCLUDE))  # four prompts
    assert _texts(result) == gen.generate(PROMPTS, [6] * 4)


@pytest.mark.parametrize("model", ["llm", "llm_stream"])
def test_http_generate_echoes_the_prompt_unless_excluded(server, expected, echoed, model):
    """llmapi's default (`sampling_param_exclude_input_from_output` false): prompt + completion."""
    assert FIXTURE["echo_default"] is True

    def generate(**extra):
        body = {"text_input": PROMPTS[1], "sampling_param_max_tokens": MAX_TOKENS[1], **extra}
        req = urllib.request.Request(
            f"http://{server.http_url}/v2/models/{model}/generate", data=json.dumps(body).encode()
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["text_output"]

    assert generate() == echoed[1] and echoed[1].startswith(PROMPTS[1])
    assert generate(sampling_param_exclude_input_from_output=True) == expected[1]


def test_grpc_concurrent_requests_are_batched_correctly(server, expected):
    """Concurrent requests to the decoupled model: it batches them itself (as llmapi does)."""
    import tritonclient.grpc as grpc

    reqs = [_inputs(grpc, [p], m, **EXCLUDE) for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)]
    got = _stream(grpc, server.grpc_url, "llm_stream", reqs)
    assert [_texts(got[str(i)][0])[0] for i in range(len(PROMPTS))] == expected


def test_grpc_streaming_sends_the_completion_so_far(server, expected):
    """Each streamed response carries the completion so far (llmapi sends
    `CompletionOutput.text`), never the prompt, and the last one is the final response."""
    import tritonclient.grpc as grpc

    assert (FIXTURE["streaming_text"], FIXTURE["streaming_includes_prompt"]) == (
        "cumulative",
        False,
    )
    inputs = _inputs(grpc, [PROMPTS[0]], MAX_TOKENS[0], streaming=True)  # echo not excluded
    (results,) = _stream(grpc, server.grpc_url, "llm_stream", [inputs]).values()
    texts = [_texts(r)[0] for r in results]
    assert len(texts) >= 2  # really streamed, not one block
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:], strict=False))
    assert texts[-1] == expected[0]
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r in results]
    assert finals == [False] * (len(texts) - 1) + [True]  # data and final flag together


def test_sampling_over_http_and_grpc_is_seeded_and_matches_the_runtime(server, gen):
    """temperature / top_k / top_p / seed / stop / return_* as the llmapi model takes them."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    from minitron_deploy.engines.base import Sampling
    from minitron_deploy.triton.runtime import Request

    params = dict(temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    sampling = Sampling(**params)
    want = gen.complete([Request(PROMPTS[2], 12, sampling)])[0].text
    client = http.InferenceServerClient(server.http_url)
    params = {**params, **EXCLUDE}
    one = _texts(client.infer("llm", _inputs(http, [PROMPTS[2]], 12, **params)))[0]
    two = _texts(client.infer("llm", _inputs(http, [PROMPTS[2]], 12, **params)))[0]
    other = _texts(client.infer("llm", _inputs(http, [PROMPTS[2]], 12, **{**params, "seed": 7})))
    greedy = gen.generate([PROMPTS[2]], [12])[0]
    assert one == two == want  # the same seed, the same text, here and in-process
    assert want != greedy and other[0] != want  # really sampled
    inputs = _inputs(grpc, [PROMPTS[2]], 12, **params, streaming=True)
    (results,) = _stream(grpc, server.grpc_url, "llm_stream", [inputs]).values()
    assert _texts(results[-1])[0] == want  # streamed, same draws


def test_stop_words_and_returned_reasons(server, gen):
    import tritonclient.http as http

    full = gen.generate([PROMPTS[0]], [10])[0]
    stop = full[3:5]
    assert stop and stop in full
    client = http.InferenceServerClient(server.http_url)
    flags = dict(return_finish_reason=True, return_stop_reason=True, return_cumulative_logprob=True)
    result = client.infer("llm", _inputs(http, [PROMPTS[0]], 10, stop=[stop], **flags, **EXCLUDE))
    assert _texts(result) == [full[: full.index(stop)]]
    assert result.as_numpy("finish_reason").reshape(-1)[0].decode() == "stop"
    assert result.as_numpy("stop_reason").reshape(-1)[0].decode() == stop
    assert result.as_numpy("cumulative_logprob").reshape(-1)[0] < 0
    echoed = client.infer("llm", _inputs(http, [PROMPTS[0]], 10, stop=[stop]))
    assert _texts(echoed) == [PROMPTS[0] + full[: full.index(stop)]]
    plain = client.infer("llm", _inputs(http, [PROMPTS[0]], 10, **flags))
    assert plain.as_numpy("finish_reason").reshape(-1)[0].decode() in ("length", "stop")
    if plain.as_numpy("finish_reason").reshape(-1)[0].decode() == "length":
        none = FIXTURE["stop_reason_when_none"]
        assert plain.as_numpy("stop_reason").reshape(-1)[0].decode() == none


def test_unsupported_parameters_are_refused_not_ignored(server):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.http_url)
    inputs = _inputs(http, [PROMPTS[0]], 4)
    pen = http.InferInput("sampling_param_presence_penalty", [1], "FP32")
    pen.set_data_from_numpy(np.array([0.5], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="not supported"):
        client.infer("llm", [*inputs, pen])
    perf = _inputs(http, [PROMPTS[0]], 4, return_perf_metrics=True)
    with pytest.raises(InferenceServerException, match="return_perf_metrics"):
        client.infer("llm", perf)


def test_stop_cancels_the_requests_with_its_id(server):
    """`stop` as llmapi reads it: it cancels the requests in flight that carry its request id
    and is answered with "Request cancelled by client"; without an id it is refused."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.http_url)
    stop = _inputs(http, [PROMPTS[0]], 1, cancel=True)
    with pytest.raises(InferenceServerException, match=FIXTURE["stop_without_request_id"]["error"]):
        client.infer("llm", stop)
    with pytest.raises(InferenceServerException, match=FIXTURE["stop_answer"]["error"]):
        client.infer("llm", stop, request_id="nothing-in-flight")

    # A long stream that the stop overtakes. Greedy on the tiny model reaches 900 tokens from
    # this prompt without EOS (checked once in-process; deterministic), so a stream that ends
    # with a final data response here was not cancelled.
    n = 600
    long = _inputs(grpc, [PROMPTS[3]], n, streaming=True)
    cancel = _inputs(grpc, [PROMPTS[3]], 1, cancel=True)
    events: queue.Queue = queue.Queue()
    streams = [grpc.InferenceServerClient(server.grpc_url) for _ in range(2)]
    for c in streams:
        c.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        streams[0].async_stream_infer("llm_stream", long, request_id="long")
        result, error = events.get(timeout=120)
        assert error is None  # under way
        streams[1].async_stream_infer("llm_stream", cancel, request_id="long")
        errors, texts = [], []
        while len(errors) < 2:  # the stop's answer and the cancelled stream's end
            result, error = events.get(timeout=120)
            if error is not None:
                errors.append(str(error))
                continue
            texts.append(_texts(result)[0])
            final = result.get_response().parameters["triton_final_response"].bool_param
            assert not final, f"the stream ran to its end ({len(texts)} responses), not cancelled"
    finally:
        for c in streams:
            c.stop_stream()
    assert all(FIXTURE["stop_answer"]["error"] in e for e in errors)
    assert len(texts) < n - 1  # it ended early, not by running to n tokens
