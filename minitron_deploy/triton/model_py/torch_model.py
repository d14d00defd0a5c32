"""Triton python-backend model serving a Llama checkpoint with minitron-deploy's built-in engine.

`minitron-deploy package triton --backend torch` copies this file to `<repo>/<model>/1/model.py`.
Inputs and outputs use the names of TensorRT-LLM's llmapi model, so one client works against
either: `text_input` (STRING), optional `sampling_param_max_tokens` (INT32) and `streaming`
(BOOL); output `text_output` (STRING). Requests that Triton's dynamic batcher groups together
run as one engine call. With `decoupled` set, a request with `streaming=true` gets one
response per text delta and then a final empty response.

Parameters (config.pbtxt, string values): `model_dir` (absolute, or relative to this version
folder), `dtype`, `device`, `num_threads` (0 = torch's default), `default_max_tokens`.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _column(request, name, default, count):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * count
    values = tensor.as_numpy().reshape(-1).tolist()
    if len(values) == 1 and count > 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} values for {count} prompts")
    return values


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _response(texts):
    arr = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    return pb_utils.InferenceResponse([pb_utils.Tensor("text_output", arr)])


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    """Greedy text generation on the built-in engine."""

    def initialize(self, args):
        import torch

        from minitron_deploy.triton.runtime import TextGenerator

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(params["model_dir"])
        if not model_dir.is_absolute():
            model_dir = Path(args["model_repository"]) / args["model_version"] / model_dir
        threads = int(params.get("num_threads", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.default_max_tokens = int(params.get("default_max_tokens", "64"))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.generator = TextGenerator(
            model_dir, dtype=params.get("dtype", "auto"), device=params.get("device", "cpu")
        )

    def _parse(self, request):
        text = pb_utils.get_input_tensor_by_name(request, "text_input")
        if text is None:
            raise ValueError("text_input is required")
        prompts = [_text(v) for v in text.as_numpy().reshape(-1).tolist()]
        n = len(prompts)
        default = self.default_max_tokens
        max_tokens = [int(v) for v in _column(request, "sampling_param_max_tokens", default, n)]
        streaming = [bool(v) for v in _column(request, "streaming", False, n)]
        return prompts, max_tokens, any(streaming)

    def execute(self, requests):
        parsed, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                parsed.append((i, *self._parse(request)))
            except Exception as e:  # a malformed request fails alone
                responses[i] = _error(f"bad request: {e}")
        batch = [p for p in parsed if not p[3]]
        if batch:
            prompts = [t for p in batch for t in p[1]]
            max_tokens = [m for p in batch for m in p[2]]
            try:
                texts = self.generator.generate(prompts, max_tokens)
                start = 0
                for i, ps, _, _ in batch:
                    responses[i] = _response(texts[start : start + len(ps)])
                    start += len(ps)
            except Exception as e:
                for i, *_ in batch:
                    responses[i] = _error(f"generation failed: {e}")
        for i, ps, ms, _ in (p for p in parsed if p[3]):
            if not self.decoupled:
                responses[i] = _error("streaming needs a decoupled model (--decoupled)")
            elif len(ps) != 1:
                responses[i] = _error("streaming takes one prompt per request")
            else:
                self._stream(requests[i], ps[0], ms[0])
        if not self.decoupled:
            return responses
        for request, response in zip(requests, responses, strict=True):
            if response is not None:
                sender = request.get_response_sender()
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _stream(self, request, prompt, max_tokens):
        sender = request.get_response_sender()
        try:
            for delta in self.generator.stream(prompt, max_tokens):
                sender.send(_response([delta]))
        except Exception as e:
            sender.send(_error(f"generation failed: {e}"))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self.generator = None
