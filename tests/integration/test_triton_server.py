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
from functools import partial

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
def expected(tiny_ckpt):
    from minitron_deploy.triton.runtime import TextGenerator

    gen = TextGenerator(tiny_ckpt)
    return [
        gen.decode(gen.engine.generate([gen.encode(p)], m)[0])
        for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)
    ]


def _inputs(module, prompts, max_tokens):
    text = module.InferInput("text_input", [len(prompts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[p.encode()] for p in prompts], dtype=np.object_))
    mt = module.InferInput("sampling_param_max_tokens", [len(prompts), 1], "INT32")
    mt.set_data_from_numpy(np.array([[m] for m in max_tokens], dtype=np.int32))
    return [text, mt]


def _texts(result) -> list[str]:
    return [row[0].decode() for row in result.as_numpy("text_output")]


def test_http_batch_request(server, expected):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    assert client.is_model_ready("llm")
    result = client.infer("llm", _inputs(http, PROMPTS, MAX_TOKENS))
    assert _texts(result) == expected


def test_http_generate_endpoint(server, expected):
    body = json.dumps({"text_input": PROMPTS[1], "sampling_param_max_tokens": MAX_TOKENS[1]})
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/llm/generate", data=body.encode()
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["text_output"] == expected[1]


def test_grpc_concurrent_requests_are_batched_correctly(server, expected):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    done: queue.Queue = queue.Queue()
    for i, (p, m) in enumerate(zip(PROMPTS, MAX_TOKENS, strict=True)):
        client.async_infer(
            "llm",
            _inputs(grpc, [p], [m]),
            partial(lambda i, result, error: done.put((i, result, error)), i),
        )
    got = {}
    for _ in PROMPTS:
        i, result, error = done.get(timeout=120)
        assert error is None, error
        got[i] = _texts(result)[0]
    assert [got[i] for i in range(len(PROMPTS))] == expected


def test_grpc_streaming(server, expected):
    import tritonclient.grpc as grpc

    responses: queue.Queue = queue.Queue()
    client = grpc.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inputs = _inputs(grpc, [PROMPTS[0]], [MAX_TOKENS[0]])
    flag = grpc.InferInput("streaming", [1, 1], "BOOL")
    flag.set_data_from_numpy(np.array([[True]]))
    client.async_stream_infer("llm_stream", [*inputs, flag], enable_empty_final_response=True)
    deltas = []
    while True:
        result, error = responses.get(timeout=120)
        assert error is None, error
        final = result.get_response().parameters["triton_final_response"].bool_param
        if result.as_numpy("text_output") is not None:
            deltas.append(_texts(result)[0])
        if final:
            break
    client.stop_stream()
    assert len(deltas) >= 2  # really streamed, not one block
    assert "".join(deltas) == expected[0]
