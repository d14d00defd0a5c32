"""The vLLM side of the `vllm` engine: a script run by the vLLM venv's python (`.venv-vllm`).

It imports only the standard library and vLLM (never minitron_deploy, whose venv has other
versions) and speaks JSON lines: one request a line on stdin, one answer a line on the
protocol stream (the original stdout; vLLM's own logging is sent to stderr). The first line it
writes says it is ready: `{"ok": true, "vllm": VERSION, "platform": "cpu"|"cuda", ...}`.

Requests (`op`):
- `load`: `{"model", "dtype", "seed", "max_num_seqs", "max_model_len", "max_num_batched_tokens",
  "enforce_eager", "gpu_memory_utilization"}` -> builds `vllm.LLM` (an earlier one is dropped
  first, so one process can check several models in turn);
- `generate`: `{"prompts": [[ids]], "max_tokens", "stop_token_ids", "logprobs"}` ->
  `{"tokens": [[ids]], "seconds"}` (and `"logprobs"`: each chosen token's); greedy
  (temperature 0), vLLM's own EOS handling off (`ignore_eos`), so the caller decides which ids
  stop a row;
- `throughput`: `{"prompts", "max_tokens", "warmup_tokens"}` -> the whole request set is given
  to one `LLM.generate` call (vLLM's scheduler batches in flight, at most `max_num_seqs` at a
  time); after an untimed warm-up of the same set with `warmup_tokens` outputs, the timed run
  returns `{"seconds", "requests", "output_tokens"}`;
- `unload`, `quit`.

Errors answer `{"ok": false, "kind": "input"|"failure", "error": "..."}`; `input` is a request
vLLM cannot run as given (an unsupported head size, a too long prompt).

Scripts that use vLLM need a `__main__` guard (it may spawn worker processes).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

# Run as a script from minitron_deploy/engines/: its folder must not shadow packages vLLM imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


class RequestError(Exception):
    """A request vLLM cannot serve as given (the caller's input)."""


def _cpu_head_sizes() -> list[int] | None:
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return list(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # another vLLM layout: let vLLM itself decide
        return None


class Worker:
    def __init__(self) -> None:
        import vllm
        from vllm.platforms import current_platform

        self.vllm = vllm
        self.platform = str(current_platform.device_type)
        self.llm = None
        self.head_sizes = _cpu_head_sizes() if self.platform == "cpu" else None

    def hello(self) -> dict:
        return {
            "ok": True,
            "vllm": self.vllm.__version__,
            "platform": self.platform,
            "cpu_head_sizes": self.head_sizes,
            "pid": os.getpid(),
        }

    def load(self, req: dict) -> dict:
        self.unload({})
        with open(os.path.join(req["model"], "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        heads = cfg.get("num_attention_heads") or 1
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if self.head_sizes is not None and head_dim not in self.head_sizes:
            raise RequestError(
                f"vLLM's CPU attention supports head_dim {self.head_sizes}; this model has "
                f"head_dim {head_dim}"
            )
        kwargs = {
            k: req[k]
            for k in ("max_num_seqs", "max_model_len", "max_num_batched_tokens")
            if req.get(k) is not None
        }
        if self.platform != "cpu":
            kwargs["gpu_memory_utilization"] = req.get("gpu_memory_utilization", 0.9)
        t0 = time.perf_counter()
        self.llm = self.vllm.LLM(
            model=req["model"],
            dtype=req.get("dtype", "auto"),
            seed=req.get("seed", 0),
            enforce_eager=req.get("enforce_eager", True),
            skip_tokenizer_init=not req.get("tokenizer", True),
            **kwargs,
        )
        seconds = time.perf_counter() - t0
        mc = self.llm.llm_engine.model_config
        return {
            "ok": True,
            "load_seconds": seconds,
            "dtype": str(mc.dtype).replace("torch.", ""),
            "max_model_len": mc.max_model_len,
            "quantization": mc.quantization,
        }

    def _run(
        self, prompts: list, max_tokens: int, stop: list[int] | None, logprobs: bool = False
    ) -> list:
        if self.llm is None:
            raise RequestError("no model is loaded")
        params = self.vllm.SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            ignore_eos=True,
            stop_token_ids=stop or None,
            detokenize=False,
            logprobs=0 if logprobs else None,  # 0: the chosen token's only
        )
        return self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False
        )

    def generate(self, req: dict) -> dict:
        t0 = time.perf_counter()
        want = bool(req.get("logprobs"))
        outs = self._run(req["prompts"], int(req["max_tokens"]), req.get("stop_token_ids"), want)
        answer = {
            "ok": True,
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "seconds": time.perf_counter() - t0,
        }
        if want:  # the raw model's log-probability of each chosen token
            answer["logprobs"] = [
                [step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)]
                for c in (o.outputs[0] for o in outs)
            ]
        return answer

    def throughput(self, req: dict) -> dict:
        prompts, osl = req["prompts"], int(req["max_tokens"])
        if req.get("warmup_tokens"):
            self._run(prompts, int(req["warmup_tokens"]), None)
        t0 = time.perf_counter()
        outs = self._run(prompts, osl, None)
        seconds = time.perf_counter() - t0
        tokens = [o.outputs[0].token_ids for o in outs]
        return {
            "ok": True,
            "seconds": seconds,
            "requests": len(tokens),
            "output_tokens": sum(len(t) for t in tokens),
            "min_tokens": min(len(t) for t in tokens),
        }

    def unload(self, req: dict) -> dict:
        if self.llm is not None:
            self.llm = None
            gc.collect()
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except Exception:
                pass
        return {"ok": True}


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # vLLM's prints and logs go to stderr, never into the protocol
    sys.stdout = sys.stderr

    def answer(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        worker = Worker()
    except Exception as e:
        traceback.print_exc()
        answer({"ok": False, "kind": "failure", "error": f"cannot import vLLM: {e!r}"})
        return 1
    answer(worker.hello())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                worker.unload({})
                answer({"ok": True})
                return 0
            handler = {
                "load": worker.load,
                "generate": worker.generate,
                "throughput": worker.throughput,
                "unload": worker.unload,
            }.get(op)
            if handler is None:
                raise RequestError(f"unknown op {op!r}")
            answer(handler(req))
        except RequestError as e:
            answer({"ok": False, "kind": "input", "error": str(e)})
        except (ValueError, TypeError) as e:  # vLLM's checks of a request or engine argument
            traceback.print_exc()
            answer({"ok": False, "kind": "input", "error": f"{type(e).__name__}: {e}"})
        except Exception as e:
            traceback.print_exc()
            answer({"ok": False, "kind": "failure", "error": f"{type(e).__name__}: {e}"})
    worker.unload({})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
