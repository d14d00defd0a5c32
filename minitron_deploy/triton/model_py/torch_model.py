"""Triton python-backend model serving a Llama checkpoint with minitron-deploy's built-in engine.

`minitron-deploy package triton --backend torch` copies this file to `<repo>/<model>/1/model.py`.
Its config.pbtxt declares exactly the inputs and outputs of TensorRT-LLM's llmapi model
(`max_batch_size: 0`, `text_input` STRING [-1], `sampling_param_*` [1], ...), and every input is
read with llmapi's meaning and default by `minitron_deploy.triton.requests.parse_inputs` (a
value the built-in engine cannot honour is refused with an error, never ignored):

- non-streaming `text_output` = prompt + completion unless
  `sampling_param_exclude_input_from_output` is true (llmapi's default is false);
- `streaming` (decoupled models only): each response carries the completion so far (never the
  prompt), the last one carries the final flag, as llmapi sends `CompletionOutput.text`;
- `stop` true: cancels the requests in flight (queued, or streaming) that carry the same request
  id, and is itself answered with the error "Request cancelled by client" (llmapi's answer);
- `return_finish_reason` / `return_stop_reason` ("None" when no stop string ended the text, as
  llmapi's `str(None)`) / `return_cumulative_logprob` (FP32, as the config declares).

The KV-cache, timing and speculative-decoding outputs are declared (as in llmapi) but only sent
by llmapi when `sampling_param_return_perf_metrics` is true, which is refused here. Decoupled,
the model batches concurrent requests itself (up to `max_batch_size`, waiting
`max_queue_delay_us` for more); otherwise each call's requests form one batch.

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


def _strings(values):
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


def _error(message, cancelled=False):
    code = getattr(pb_utils.TritonError, "CANCELLED", None) if cancelled else None
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


class _Job:
    """One parsed request and whether it was cancelled."""

    def __init__(self, request, call):
        self.request, self.call = request, call
        self.cancelled = threading.Event()

    def is_cancelled(self):
        if self.cancelled.is_set():
            return True
        try:
            return bool(self.request.is_cancelled())  # the client cancelled it (gRPC)
        except Exception:
            return False


class TritonPythonModel:
    """Text generation on the built-in engine, with llmapi's request interface."""

    def initialize(self, args):
        import torch

        from minitron_deploy.triton.requests import DEFAULTS
        from minitron_deploy.triton.runtime import TextGenerator

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(params["model_dir"])
        if not model_dir.is_absolute():
            model_dir = Path(args["model_repository"]) / args["model_version"] / model_dir
        threads = int(params.get("num_threads", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        default = DEFAULTS["sampling_param_max_tokens"]
        self.default_max_tokens = int(params.get("default_max_tokens", default))
        self.max_batch = max(1, int(params.get("max_batch_size", "8")))
        self.max_delay_s = int(params.get("max_queue_delay_us", "0")) / 1e6
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.generator = TextGenerator(
            model_dir,
            dtype=params.get("dtype", "auto"),
            device=params.get("device", "cpu"),
            engine=params.get("engine", "torch"),  # any engine whose record says it streams
        )
        self.lock = threading.Lock()
        self.by_id = {}  # request id -> jobs not finished yet (for `stop`)
        self.queue = queue.Queue()
        self.worker = None
        if self.decoupled:
            self.worker = threading.Thread(target=self._serve, daemon=True)
            self.worker.start()

    # ---- requests ---------------------------------------------------------------------------
    def _parse(self, request):
        from minitron_deploy.triton.requests import parse_inputs

        def get(name):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else tensor.as_numpy()

        call = parse_inputs(
            get, decoupled=self.decoupled, default_max_tokens=self.default_max_tokens
        )
        return _Job(request, call)

    def _cancel(self, request):
        """A `stop` request: cancel the jobs with its id; llmapi's answer either way."""
        from minitron_deploy.triton.requests import CANCELLED, NO_REQUEST_ID

        rid = request.request_id()
        if not rid:
            return _error(NO_REQUEST_ID)
        with self.lock:
            for job in self.by_id.get(rid, ()):
                job.cancelled.set()
        return _error(CANCELLED, cancelled=True)

    def _track(self, job, add):
        rid = job.request.request_id()
        if not rid:
            return
        with self.lock:
            jobs = self.by_id.setdefault(rid, set())
            if add:
                jobs.add(job)
            else:
                jobs.discard(job)
                if not jobs:
                    del self.by_id[rid]

    def _response(self, texts, flags=None, reasons=None, stops=None, logprobs=None):
        tensors = [pb_utils.Tensor("text_output", _strings(texts))]
        if flags and flags["finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", _strings(reasons)))
        if flags and flags["stop_reason"]:
            tensors.append(pb_utils.Tensor("stop_reason", _strings([s or "None" for s in stops])))
        if flags and flags["cumulative_logprob"]:
            lp = np.array(logprobs, dtype=np.float32)
            tensors.append(pb_utils.Tensor("cumulative_logprob", lp))
        return pb_utils.InferenceResponse(tensors)

    def _run_batch(self, jobs):
        """Complete non-streaming jobs in one engine call; returns one response per job."""
        from minitron_deploy.triton.requests import CANCELLED

        live = [j for j in jobs if not j.is_cancelled()]
        reqs = [r for j in live for r in j.call.requests]
        try:
            results = self.generator.complete(reqs)
        except Exception as e:
            return [_error(f"Error generating request: {e}") for _ in jobs]
        out, start = {}, 0
        for j in live:
            part = results[start : start + len(j.call.requests)]
            start += len(j.call.requests)
            out[id(j)] = self._response(
                [r.text for r in part],
                j.call.flags,
                [r.finish_reason for r in part],
                [r.stop_reason for r in part],
                [r.cumulative_logprob for r in part],
            )
        return [_error(CANCELLED, True) if j.is_cancelled() else out[id(j)] for j in jobs]

    def _stream(self, job):
        from minitron_deploy.triton.requests import CANCELLED

        sender = job.request.get_response_sender()
        req, flags = job.call.requests[0], job.call.flags
        text = ""
        if job.is_cancelled():  # cancelled while it waited in the queue
            sender.send(_error(CANCELLED, True), flags=FINAL)
            return
        try:
            steps = self.generator.steps(req.prompt, req.max_tokens, req.sampling, req.stop)
            for step in steps:
                if job.is_cancelled():
                    sender.send(_error(CANCELLED, True), flags=FINAL)
                    return
                text += step.delta
                if step.done:
                    last = self.generator.last
                    final = self._response(
                        [text],
                        flags,
                        [last.finish_reason],
                        [last.stop_reason],
                        [step.cumulative_logprob],
                    )
                    sender.send(final, flags=FINAL)
                    return
                if step.delta:
                    # llmapi's in-flight responses: reasons not known yet (its str(None))
                    sender.send(
                        self._response([text], flags, ["None"], ["None"], [step.cumulative_logprob])
                    )
        except Exception as e:
            sender.send(_error(f"Error generating request: {e}"), flags=FINAL)

    # ---- Triton entry points ----------------------------------------------------------------
    def execute(self, requests):
        jobs, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                job = self._parse(request)
            except Exception as e:  # a malformed request fails alone
                responses[i] = _error(f"bad request: {e}")
                continue
            if job.call.cancel:
                responses[i] = self._cancel(request)
            else:
                jobs.append((i, job))
        if not self.decoupled:
            done = self._run_batch([j for _, j in jobs]) if jobs else []
            for (i, _), response in zip(jobs, done, strict=True):
                responses[i] = response
            return responses
        for request, response in zip(requests, responses, strict=True):
            if response is not None:
                request.get_response_sender().send(response, flags=FINAL)
        for _, job in jobs:
            self._track(job, add=True)
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
            plain = [j for j in batch if not j.call.streaming]
            for j, response in zip(plain, self._run_batch(plain) if plain else [], strict=True):
                j.request.get_response_sender().send(response, flags=FINAL)
                self._track(j, add=False)
            for j in batch:
                if j.call.streaming:
                    self._stream(j)
                    self._track(j, add=False)

    def finalize(self):
        if self.worker is not None:
            self.queue.put(None)
            self.worker.join(timeout=10)
        self.generator = None
