"""The torch Triton model's text generator and the server's input checks (no server started)."""

from __future__ import annotations

import socket

import pytest

from minitron_deploy.errors import InputError
from minitron_deploy.triton.runtime import TextGenerator

PROMPTS = ["def main(argv):", "The quick brown fox", "import os"]


@pytest.fixture(scope="module")
def gen(tiny_ckpt):
    return TextGenerator(tiny_ckpt, dtype="float32")


def _alone(gen: TextGenerator, prompt: str, m: int) -> str:
    return gen.decode(gen.engine.generate([gen.encode(prompt)], m)[0])


def test_batched_generate_equals_each_prompt_alone(gen):
    max_tokens = [5, 9, 2]
    texts = gen.generate(PROMPTS, max_tokens)
    assert texts == [_alone(gen, p, m) for p, m in zip(PROMPTS, max_tokens, strict=True)]


def test_stream_concatenates_to_generate(gen):
    deltas = list(gen.stream(PROMPTS[0], 8))
    assert deltas and all(deltas)
    assert "".join(deltas) == gen.generate([PROMPTS[0]], [8])[0]


@pytest.mark.parametrize("bad", [([""], [4]), (["x"], [0]), (["x", "y"], [3])])
def test_bad_requests(gen, bad):
    with pytest.raises(InputError):
        gen.generate(*bad)


def test_port_in_use_is_an_input_error(tmp_path):
    pytest.importorskip("pytriton")
    from minitron_deploy.triton.server import TritonServer

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} is in use"):
            TritonServer(tmp_path, http_port=port)
        with pytest.raises(InputError, match="--grpc-port"):
            TritonServer(tmp_path, grpc_port=port)


def test_not_a_repository(tmp_path):
    from minitron_deploy.triton.server import TritonServer

    with pytest.raises(InputError, match="not a Triton model repository"):
        TritonServer(tmp_path)


def test_serve_cli_port_in_use_exits_2(tmp_path, capsys):
    pytest.importorskip("pytriton")
    from minitron_deploy.cli import main

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code = main(["serve", "triton", "--repo", str(tmp_path), "--http-port", str(port)])
    assert code == 2 and f"port {port} is in use" in capsys.readouterr().err


def test_stop_strings_end_the_text_and_never_leak_into_a_stream(gen):
    from minitron_deploy.triton.runtime import Request

    full = gen.generate([PROMPTS[0]], [12])[0]
    stop = full[4:7]
    (res,) = gen.complete([Request(PROMPTS[0], 12, stop=(stop, "never-seen"))])
    assert res.text == full[: full.index(stop)] and res.finish_reason == "stop"
    assert res.stop_reason == stop
    deltas = list(gen.stream(PROMPTS[0], 12, stop=(stop,)))
    assert "".join(deltas) == res.text and all(stop not in d for d in deltas)
    assert gen.last.stop_reason == stop


def test_seeded_sampling_is_the_same_batched_alone_and_streamed(gen):
    from minitron_deploy.engines.base import Sampling
    from minitron_deploy.triton.runtime import Request

    s = Sampling(temperature=0.8, top_k=30, top_p=0.9, seed=11)
    alone = gen.complete([Request(PROMPTS[1], 9, s)])[0]
    batched = gen.complete([Request(p, 9, s) for p in PROMPTS])[1]
    assert alone.text == batched.text
    assert alone.cumulative_logprob == pytest.approx(batched.cumulative_logprob, abs=1e-4)
    assert "".join(gen.stream(PROMPTS[1], 9, s)) == alone.text
    assert gen.last.cumulative_logprob == pytest.approx(alone.cumulative_logprob, abs=1e-4)
    other = gen.complete([Request(PROMPTS[1], 9, Sampling(temperature=0.8, seed=12))])[0]
    greedy = gen.complete([Request(PROMPTS[1], 9)])[0]
    assert other.text != alone.text and greedy.text != alone.text


@pytest.mark.parametrize(
    "bad", [{"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}]
)
def test_bad_sampling_settings(bad):
    from minitron_deploy.engines.base import Sampling

    with pytest.raises(InputError):
        Sampling(**bad)
