"""End to end: package a tiny model (torch backend), serve it with a real tritonserver, query it.

The server is the Triton 2.51 bundled in nvidia-pytriton, on CPU. Answers must equal the
built-in engine's greedy output for the same prompts. Skipped only when the tritonserver binary
is missing; a server that fails to start with our model repository fails the test.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import urllib.request

import numpy as np
import pytest

from minitron_deploy.triton import PackageConfig, package_triton

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PROMPTS = ["def main(argv):", "The quick brown fox", "import os, sys", "Return the value"]
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
    """Greedy texts computed in this process with the same engine."""
    return [
        gen.decode(gen.engine.generate([gen.encode(p)], m)[0])
        for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)
    ]


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
        elif name.startswith("return_") or name == "streaming":
            t = module.InferInput(name, [1], "BOOL")
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
    result = client.infer("llm", _inputs(http, PROMPTS, 6))  # one request, four prompts
    assert _texts(result) == gen.generate(PROMPTS, [6] * 4)


@pytest.mark.parametrize("model", ["llm", "llm_stream"])
def test_http_generate_endpoint(server, expected, model):
    body = json.dumps({"text_input": PROMPTS[1], "sampling_param_max_tokens": MAX_TOKENS[1]})
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model}/generate", data=body.encode()
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["text_output"] == expected[1]


def test_grpc_concurrent_requests_are_batched_correctly(server, expected):
    """Concurrent requests to the decoupled model: it batches them itself (as llmapi does)."""
    import tritonclient.grpc as grpc

    reqs = [_inputs(grpc, [p], m) for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)]
    got = _stream(grpc, server.grpc_url, "llm_stream", reqs)
    assert [_texts(got[str(i)][0])[0] for i in range(len(PROMPTS))] == expected


def test_grpc_streaming(server, expected):
    import tritonclient.grpc as grpc

    inputs = _inputs(grpc, [PROMPTS[0]], MAX_TOKENS[0], streaming=True)
    (results,) = _stream(grpc, server.grpc_url, "llm_stream", [inputs]).values()
    deltas = [_texts(r)[0] for r in results]
    assert len(deltas) >= 2  # really streamed, not one block
    assert "".join(deltas) == expected[0]


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
    one = _texts(client.infer("llm", _inputs(http, [PROMPTS[2]], 12, **params)))[0]
    two = _texts(client.infer("llm", _inputs(http, [PROMPTS[2]], 12, **params)))[0]
    other = _texts(client.infer("llm", _inputs(http, [PROMPTS[2]], 12, **{**params, "seed": 7})))
    greedy = gen.generate([PROMPTS[2]], [12])[0]
    assert one == two == want  # the same seed, the same text, here and in-process
    assert want != greedy and other[0] != want  # really sampled
    inputs = _inputs(grpc, [PROMPTS[2]], 12, **params, streaming=True)
    (results,) = _stream(grpc, server.grpc_url, "llm_stream", [inputs]).values()
    assert "".join(_texts(r)[0] for r in results) == want  # streamed, same draws


def test_stop_words_and_returned_reasons(server, gen):
    import tritonclient.http as http

    full = gen.generate([PROMPTS[0]], [10])[0]
    stop = full[3:5]
    assert stop and stop in full
    client = http.InferenceServerClient(server.http_url)
    flags = dict(return_finish_reason=True, return_stop_reason=True, return_cumulative_logprob=True)
    result = client.infer("llm", _inputs(http, [PROMPTS[0]], 10, stop=[stop], **flags))
    assert _texts(result) == [full[: full.index(stop)]]
    assert result.as_numpy("finish_reason").reshape(-1)[0].decode() == "stop"
    assert result.as_numpy("stop_reason").reshape(-1)[0].decode() == stop
    assert result.as_numpy("cumulative_logprob").reshape(-1)[0] < 0
    plain = client.infer("llm", _inputs(http, [PROMPTS[0]], 10, **flags))
    assert plain.as_numpy("finish_reason").reshape(-1)[0].decode() in ("length", "stop")


def test_unsupported_parameters_are_refused_not_ignored(server):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.http_url)
    inputs = _inputs(http, [PROMPTS[0]], 4)
    pen = http.InferInput("sampling_param_presence_penalty", [1], "FP32")
    pen.set_data_from_numpy(np.array([0.5], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="not supported"):
        client.infer("llm", [*inputs, pen])
