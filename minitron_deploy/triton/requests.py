"""TensorRT-LLM llmapi's request interface, read the way its Triton model reads it.

What each input of the llmapi model (`triton_backend/all_models/llmapi/tensorrt_llm`, 1.2.x) means
and what an absent one defaults to, as its `helpers.py`, `model.py` and `SamplingParams` define it
(the facts, with the upstream paths and commits, are in `tests/fixtures/trtllm_llmapi_io.json`,
which the tests compare with this module):

- `text_input`: the prompt. (llmapi reads element 0 only; here every element is a prompt with
  its own `text_output` element: an extension, the same answer for one prompt.)
- `sampling_param_exclude_input_from_output`, default **false**: a non-streaming `text_output`
  is prompt + completion (the detokenized prompt and output ids together) unless it is true.
  Streaming responses never carry the prompt.
- `sampling_param_max_tokens`, default 32 (`SamplingParams.max_tokens`); `_temperature`,
  `_top_k`, `_top_p`: absent (all three) = greedy; `_seed`; `_stop`: strings that end the text
  before them.
- `streaming`, default false; each streamed response carries the completion so far (llmapi
  sends `CompletionOutput.text`, which accumulates), the last one carries the final flag.
- `return_finish_reason` / `return_stop_reason` / `return_cumulative_logprob`, default false.
- `stop`, default false: true makes the request a cancellation of the requests in flight that
  carry the same request id; it is answered with the error "Request cancelled by client".
- `sampling_param_best_of` (default 1), `_frequency_penalty`, `_presence_penalty` (default 0)
  and `sampling_param_return_perf_metrics` (default false): the built-in engine has none of
  these; any other value is refused with an error, never ignored.

`parse_inputs` turns one request's tensors into a `Call`; it raises `InputError` for a value
the built-in engine cannot honour. It imports no Triton module, so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from minitron_deploy.engines.base import Sampling
from minitron_deploy.errors import InputError
from minitron_deploy.triton.runtime import Request

# An absent input means this (TensorRT-LLM's helpers.py `default_values`, `SamplingParams`
# defaults, model.py's `stop`). None: not passed on, the engine's own default applies.
DEFAULTS: dict[str, Any] = {
    "streaming": False,
    "sampling_param_best_of": 1,
    "sampling_param_temperature": None,
    "sampling_param_top_k": None,
    "sampling_param_top_p": None,
    "sampling_param_frequency_penalty": None,
    "sampling_param_presence_penalty": None,
    "sampling_param_max_tokens": 32,
    "sampling_param_stop": None,
    "sampling_param_seed": None,
    "sampling_param_exclude_input_from_output": False,
    "sampling_param_return_perf_metrics": False,
    "return_finish_reason": False,
    "return_stop_reason": False,
    "return_cumulative_logprob": False,
    "stop": False,
}
CANCELLED = "Request cancelled by client"  # llmapi model.py's answer to a `stop` request
NO_REQUEST_ID = "A request id must be provided for request cancellation"
STREAMING_NEEDS_DECOUPLED = "Streaming is only supported in decoupled mode."

Getter = Callable[[str], Any]  # input name -> numpy array, or None when absent


@dataclass
class Call:
    """One parsed request.

    Attributes:
        prompts: the prompts (one per `text_input` element).
        requests: one `Request` per prompt.
        streaming: stream the completion (decoupled models only).
        echo: a non-streaming `text_output` starts with the prompt
            (`sampling_param_exclude_input_from_output` false).
        cancel: the request is a cancellation (`stop` true) of the requests with its id.
        flags: which of finish_reason / stop_reason / cumulative_logprob to return.
    """

    prompts: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    streaming: bool = False
    echo: bool = True
    cancel: bool = False
    flags: dict[str, bool] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _scalar(get: Getter, name: str) -> Any:
    """The one value of an optional [1] input, or its default when absent."""
    arr = get(name)
    if arr is None:
        return DEFAULTS[name]
    values = arr.reshape(-1)
    if values.size != 1:
        raise InputError(f"{name} must hold one value, got {values.size}")
    v = values[0]
    return v.item() if hasattr(v, "item") else v


def parse_inputs(
    get: Getter, *, decoupled: bool, default_max_tokens: int = DEFAULTS["sampling_param_max_tokens"]
) -> Call:
    """Read every llmapi input of one request (see the module docstring).

    Args:
        get: returns the named input as a numpy array, or None when the request lacks it.
        decoupled: the model is decoupled (streaming allowed).
        default_max_tokens: tokens when the request gives no `sampling_param_max_tokens`.

    Raises:
        InputError: a missing prompt, or a value the built-in engine cannot honour.
    """
    if bool(_scalar(get, "stop")):
        return Call(cancel=True)
    text = get("text_input")
    if text is None:
        raise InputError("text_input is missing from the request")
    prompts = [_text(v) for v in text.reshape(-1).tolist()]
    if not prompts:
        raise InputError("text_input holds no prompt")
    best_of = int(_scalar(get, "sampling_param_best_of"))
    if best_of != 1:
        raise InputError(f"sampling_param_best_of={best_of} is not supported here (only 1)")
    for n in ("frequency", "presence"):
        value = _scalar(get, f"sampling_param_{n}_penalty")
        if value is not None and float(value) != 0.0:
            raise InputError(f"sampling_param_{n}_penalty={value} is not supported here (only 0)")
    if bool(_scalar(get, "sampling_param_return_perf_metrics")):
        raise InputError(
            "sampling_param_return_perf_metrics=true is not supported here: the built-in "
            "engine keeps no paged KV cache and records no per-request timing"
        )
    temperature = _scalar(get, "sampling_param_temperature")
    top_k = _scalar(get, "sampling_param_top_k")
    top_p = _scalar(get, "sampling_param_top_p")
    seed = _scalar(get, "sampling_param_seed")
    sampling = Sampling(
        temperature=0.0 if temperature is None else float(temperature),
        top_k=0 if top_k is None else int(top_k),
        top_p=1.0 if top_p is None else float(top_p),
        seed=None if seed is None else int(seed),
    )
    if temperature is None and (top_k is not None or top_p is not None):
        # TensorRT-LLM samples at temperature 1.0 when only top_k / top_p is given
        sampling = Sampling(1.0, sampling.top_k, sampling.top_p, sampling.seed)
    stop_t = get("sampling_param_stop")
    stop = tuple(_text(v) for v in stop_t.reshape(-1).tolist()) if stop_t is not None else ()
    given = get("sampling_param_max_tokens") is not None
    max_tokens = _scalar(get, "sampling_param_max_tokens") if given else default_max_tokens
    streaming = bool(_scalar(get, "streaming"))
    if streaming and not decoupled:
        raise InputError(STREAMING_NEEDS_DECOUPLED, fix="package with --decoupled")
    if streaming and len(prompts) != 1:
        raise InputError("streaming takes one prompt per request")
    echo = not bool(_scalar(get, "sampling_param_exclude_input_from_output"))
    return Call(
        prompts=prompts,
        # a stream never carries the prompt (TensorRT-LLM's streamed output ids exclude it)
        requests=[
            Request(p, int(max_tokens), sampling, stop, echo and not streaming) for p in prompts
        ],
        streaming=streaming,
        echo=echo and not streaming,
        flags={
            n: bool(_scalar(get, f"return_{n}"))
            for n in ("finish_reason", "stop_reason", "cumulative_logprob")
        },
    )
