"""Triton python-backend model serving a Llama checkpoint with minitron-deploy's built-in engine.

`minitron-deploy package triton --backend torch` copies this file to `<repo>/<model>/1/model.py`.
Its config.pbtxt declares exactly the inputs and outputs of TensorRT-LLM's llmapi model
(`max_batch_size: 0`, `text_input` STRING [-1], `sampling_param_*` [1], ...), so one client
works against either. What it reads from a request:

- `text_input`: one prompt (or several: each gets its own `text_output` element);
- `sampling_param_max_tokens`, `_temperature` (0 or absent: greedy), `_top_k`, `_top_p`,
  `_seed` (a seeded sampler per request), `_stop` (strings ending the text before them);
- `streaming` (decoupled models only): one response per text delta, then a final empty one;
- `return_finish_reason`, `return_stop_reason`, `return_cumulative_logprob`.

`sampling_param_best_of` other than 1 and non-zero frequency / presence penalties are refused
(not silently ignored). The KV-cache, timing and speculative-decoding outputs are declared (as
in llmapi) but not produced. Decoupled, the model batches concurrent requests itself (up to
`max_batch_size`, waiting `max_queue_delay_us` for more); otherwise each call's requests form
one batch.

Parameters (config.pbtxt, string values): `model_dir` (absolute, or relative to this version
folder), `dtype`, `device`, `num_threads` (0 = torch's default), `default_max_tokens`,
`max_batch_size`, `max_queue_delay_us`.
"""

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise ValueError(f"{name} must hold one value, got {values.size}")
    return values[0].item() if hasattr(values[0], "item") else values[0]


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _strings(values):
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class _Job:
    """One parsed request."""

    def __init__(self, request, prompts, reqs, streaming, flags):
        self.request, self.prompts, self.reqs = request, prompts, reqs
        self.streaming, self.flags = streaming, flags


class TritonPythonModel:
    """Text generation on the built-in engine, with llmapi's request interface."""

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
        self.max_batch = max(1, int(params.get("max_batch_size", "8")))
        self.max_delay_s = int(params.get("max_queue_delay_us", "0")) / 1e6
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.generator = TextGenerator(
            model_dir, dtype=params.get("dtype", "auto"), device=params.get("device", "cpu")
        )
        self.queue = queue.Queue()
        self.worker = None
        if self.decoupled:
            self.worker = threading.Thread(target=self._serve, daemon=True)
            self.worker.start()

    # ---- requests ---------------------------------------------------------------------------
    def _parse(self, request):
        from minitron_deploy.engines.base import Sampling
        from minitron_deploy.triton.runtime import Request

        text = pb_utils.get_input_tensor_by_name(request, "text_input")
        if text is None:
            raise ValueError("text_input is required")
        prompts = [_text(v) for v in text.as_numpy().reshape(-1).tolist()]
        if not prompts:
            raise ValueError("text_input holds no prompt")
        best_of = int(_scalar(request, "sampling_param_best_of", 1))
        penalties = [
            float(_scalar(request, f"sampling_param_{n}_penalty", 0.0))
            for n in ("frequency", "presence")
        ]
        if best_of != 1 or any(penalties):
            raise ValueError("best_of and frequency/presence penalties are not supported here")
        seed = _scalar(request, "sampling_param_seed", None)
        sampling = Sampling(
            temperature=float(_scalar(request, "sampling_param_temperature", 0.0)),
            top_k=int(_scalar(request, "sampling_param_top_k", 0)),
            top_p=float(_scalar(request, "sampling_param_top_p", 1.0)),
            seed=None if seed is None else int(seed),
        )
        stop_t = pb_utils.get_input_tensor_by_name(request, "sampling_param_stop")
        stop = tuple(_text(v) for v in stop_t.as_numpy().reshape(-1)) if stop_t else ()
        max_tokens = int(_scalar(request, "sampling_param_max_tokens", self.default_max_tokens))
        reqs = [Request(p, max_tokens, sampling, stop) for p in prompts]
        streaming = bool(_scalar(request, "streaming", False))
        flags = {
            n: bool(_scalar(request, f"return_{n}", False))
            for n in ("finish_reason", "stop_reason", "cumulative_logprob")
        }
        if streaming and not self.decoupled:
            raise ValueError("streaming needs a decoupled model (package with --decoupled)")
        if streaming and len(prompts) != 1:
            raise ValueError("streaming takes one prompt per request")
        return _Job(request, prompts, reqs, streaming, flags)

    def _response(self, texts, results=None, flags=None):
        tensors = [pb_utils.Tensor("text_output", _strings(texts))]
        if results is not None:
            if flags["finish_reason"]:
                reasons = _strings([r.finish_reason for r in results])
                tensors.append(pb_utils.Tensor("finish_reason", reasons))
            if flags["stop_reason"]:
                tensors.append(
                    pb_utils.Tensor("stop_reason", _strings([r.stop_reason for r in results]))
                )
            if flags["cumulative_logprob"]:
                lp = np.array([r.cumulative_logprob for r in results], dtype=np.float32)
                tensors.append(pb_utils.Tensor("cumulative_logprob", lp))
        return pb_utils.InferenceResponse(tensors)

    @staticmethod
    def _error(message):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def _run_batch(self, jobs):
        """Complete non-streaming jobs in one engine call; returns one response per job."""
        reqs = [r for j in jobs for r in j.reqs]
        try:
            results = self.generator.complete(reqs)
        except Exception as e:
            return [self._error(f"generation failed: {e}") for _ in jobs]
        out, start = [], 0
        for j in jobs:
            part = results[start : start + len(j.reqs)]
            start += len(j.reqs)
            out.append(self._response([r.text for r in part], part, j.flags))
        return out

    def _stream(self, job):
        sender = job.request.get_response_sender()
        req = job.reqs[0]
        try:
            for delta in self.generator.stream(req.prompt, req.max_tokens, req.sampling, req.stop):
                sender.send(self._response([delta]))
            last = self.generator.last
            if last is not None and any(job.flags.values()):
                sender.send(self._response([""], [last], job.flags))
        except Exception as e:
            sender.send(self._error(f"generation failed: {e}"))
        sender.send(flags=FINAL)

    # ---- Triton entry points ----------------------------------------------------------------
    def execute(self, requests):
        jobs, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                jobs.append((i, self._parse(request)))
            except Exception as e:  # a malformed request fails alone
                responses[i] = self._error(f"bad request: {e}")
        if not self.decoupled:
            done = self._run_batch([j for _, j in jobs]) if jobs else []
            for (i, _), response in zip(jobs, done, strict=True):
                responses[i] = response
            return responses
        for request, response in zip(requests, responses, strict=True):
            if response is not None:
                request.get_response_sender().send(response, flags=FINAL)
        for _, job in jobs:
            self.queue.put(job)
        return None

    def _serve(self):
        """Decoupled: gather concurrent requests into batches (streams run one at a time)."""
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            deadline = time.monotonic() + self.max_delay_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
                if batch[-1] is None:
                    self.queue.put(None)
                    batch.pop()
                    break
            plain = [j for j in batch if not j.streaming]
            for j, response in zip(plain, self._run_batch(plain) if plain else [], strict=True):
                j.request.get_response_sender().send(response, flags=FINAL)
            for j in batch:
                if j.streaming:
                    self._stream(j)

    def finalize(self):
        if self.worker is not None:
            self.queue.put(None)
            self.worker.join(timeout=10)
        self.generator = None
