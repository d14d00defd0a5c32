"""TensorRT-LLM back end: drives `trtllm-bench` (and, for legacy engines, `trtllm-build`).

Current path (TensorRT-LLM >= 1.0, PyTorch backend): the HF or HF-FP8 checkpoint is benched as is:
`trtllm-bench --model NAME --model_path DIR throughput --dataset ds.jsonl --backend pytorch
--max_batch_size B --concurrency B --eos_id -1 --report_json r.json`. The dataset has one request
a line, `{"task_id": i, "input_ids": [ISL ids], "output_tokens": OSL}`; `--eos_id -1` makes every
request produce exactly OSL tokens. The report's `performance` section gives
`request_throughput_req_s` and `system_output_throughput_tok_s`.

Legacy path (TensorRT backend, <= 1.2): a TensorRT-LLM checkpoint (config.json + rank0.safetensors)
is built once with `trtllm-build --checkpoint_dir C --output_dir E` plus the flags of an engine
profile (package data `engines/profiles/{bf16,fp8}.yaml`; "auto" sizes cover the largest ISL,
ISL + OSL and batch of the work; `--use_fp8_context_fmha` always given: enable only when the
checkpoint has an FP8 KV cache, else disable, because trtllm-build's own default is on for any
FP8 checkpoint),
then benched with `--backend tensorrt --engine_dir E` for every pair and repeat, or run through
the LLM API's TensorRT engine class for `generate`. trtllm-bench still reads the model's HF
config, safetensors headers and tokenizer from `--model_path` before it branches on the
backend (`bench/benchmark/throughput.py`), so a legacy checkpoint needs the HF folder it was
exported from: `hf_dir`, or the source named in the checkpoint's `provenance.json`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.engines.base import as_rows, is_fp8_checkpoint
from minitron_deploy.errors import DependencyError, InputError, StageError
from minitron_deploy.fsutil import sha256_json

CONTAINER_FIX = "run inside the TensorRT-LLM NGC container (nvcr.io/nvidia/tensorrt-llm/release)"


def is_trtllm_checkpoint(model_dir: str | Path) -> bool:
    """True for a legacy TensorRT-LLM checkpoint (config.json with `architecture`, rank files)."""
    d = Path(model_dir)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "architecture" in cfg and (d / "rank0.safetensors").is_file()


def synthetic_rows(isl: int, n: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """`n` prompts of exactly `isl` random token ids in [10, vocab_size) (reproducible)."""
    rng = random.Random(seed)
    lo = min(10, vocab_size - 1)
    return [[rng.randrange(lo, vocab_size) for _ in range(isl)] for _ in range(n)]


def write_dataset(path: str | Path, rows: list[list[int]], osl: int) -> Path:
    """Write the trtllm-bench JSONL dataset: exact input ids and `output_tokens` per request."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"task_id": i, "input_ids": r, "output_tokens": osl}) + "\n")
    return path


def profiles_dir() -> Path:
    """The engine profiles shipped as package data (found in a wheel or the Docker image too)."""
    return Path(str(resources.files("minitron_deploy.engines") / "profiles"))


def load_profile(path: str | Path) -> dict[str, Any]:
    """An engine profile (YAML with `dtype` and a `build` mapping of trtllm-build flags)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"engine profile {path} not found", fix=f"use one in {profiles_dir()}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("build"), dict):
        raise InputError("engine profile needs a `build:` mapping", where=str(path))
    return data


def build_command(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    profile: dict[str, Any],
    *,
    isl: int,
    osl: int,
    batch: int,
    fp8_kv_cache: bool = False,
) -> list[str]:
    """The `trtllm-build` command line for a profile; "auto" sizes follow ISL/OSL/batch (the
    largest the engine must serve).

    FP8 context FMHA is enabled only with an FP8 KV cache and disabled otherwise, always by an
    explicit flag: trtllm-build 1.x turns it on by default for any FP8 checkpoint
    (`PluginConfig.use_fp8_context_fmha` defaults to True; `builder.build` only turns it off
    when the quant_algo is not FP8 / W4A8_AWQ / NVFP4, or on GPUs before Ada), and the kernel
    quantizes Q, K and V with the KV-cache scale, the one `export.trtllm_ckpt` writes clamped to
    >= 1.0 (see `KV_SCALE_DECISION` there; measured in benchmarks/fp8_kv_scale.py).
    """
    auto = {"max_batch_size": batch, "max_input_len": isl, "max_seq_len": isl + osl}
    cmd = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(output_dir)]
    for key, value in profile["build"].items():
        if key == "use_fp8_context_fmha":
            continue  # decided by the checkpoint below
        if value == "auto" and key in auto:
            value = auto[key]
        if key == "max_num_tokens" and value != "auto":
            value = max(int(value), isl)  # a whole prompt must fit one context step
        cmd += [f"--{key}", str(value)]
    cmd += ["--use_fp8_context_fmha", "enable" if fp8_kv_cache else "disable"]
    return cmd


def bench_command(
    model_name: str,
    model_path: str | Path,
    dataset: str | Path,
    report: str | Path,
    *,
    batch: int,
    backend: str = "pytorch",
    engine_dir: str | Path | None = None,
    warmup: int = 2,
) -> list[str]:
    """The `trtllm-bench ... throughput` command line (EOS disabled, concurrency = batch)."""
    cmd = ["trtllm-bench", "--model", model_name, "--model_path", str(model_path), "throughput"]
    cmd += ["--dataset", str(dataset), "--backend", backend]
    if backend == "tensorrt":
        if engine_dir is None:
            raise StageError("the tensorrt backend needs an engine folder", fix="build it first")
        cmd += ["--engine_dir", str(engine_dir)]
    cmd += ["--max_batch_size", str(batch), "--concurrency", str(batch)]
    cmd += ["--eos_id", "-1", "--warmup", str(warmup), "--report_json", str(report)]
    return cmd


def parse_report(path: str | Path) -> dict[str, float]:
    """Throughput numbers from a trtllm-bench `--report_json` file.

    Raises:
        StageError: the file is missing or lacks the `performance` fields.
    """
    path = Path(path)
    try:
        perf = json.loads(path.read_text())["performance"]
        out = {
            "req_s": float(perf["request_throughput_req_s"]),
            "output_tok_s": float(perf["system_output_throughput_tok_s"]),
            "total_tok_s": float(perf["system_total_throughput_tok_s"]),
        }
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StageError(f"cannot read trtllm-bench report ({e!r})", where=str(path)) from e
    if "avg_request_latency_ms" in perf:
        out["avg_request_latency_ms"] = float(perf["avg_request_latency_ms"])
    return out


def _run(cmd: list[str], log: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise DependencyError(f"{cmd[0]} is not on PATH", fix=CONTAINER_FIX)
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise StageError(f"{cmd[0]} failed (exit {proc.returncode}): {tail}", where=str(log))


class TrtllmOptions(BaseModel):
    """Keyword options of `TrtllmEngine` (`bench --hf-dir ...`, profiles' `bench.engine_opts`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hf_dir: Path | None = Field(
        None,
        description="TensorRT-LLM checkpoint as --model: the HF folder it was exported from "
        "(config, tokenizer); default: the source in its provenance.json",
    )
    work_dir: Path | None = Field(
        None, description="where datasets, engines and reports go (default: a temp folder)"
    )
    profile: Path | None = Field(
        None,
        description="trtllm-build engine profile YAML for a legacy checkpoint (default: the "
        "shipped bf16 / fp8)",
    )
    model_name: str | None = Field(
        None, description="the --model name trtllm-bench records (default: the folder's name)"
    )


class TrtllmEngine:
    """TensorRT-LLM through its command-line tools (throughput) and LLM API (generate).

    Args:
        model_dir: HF / HF-FP8 checkpoint (PyTorch backend) or TensorRT-LLM checkpoint (legacy).
        dtype: unused (the checkpoint decides); kept for the common factory signature.
        device: must be a CUDA device in practice; recorded only.
        work_dir: where datasets, engines and reports go (default: a temp folder).
        profile: engine profile YAML for the legacy path (default: the shipped bf16 / fp8).
        hf_dir: for a legacy checkpoint, the HF folder it was exported from (config, tokenizer,
            safetensors headers that trtllm-bench and the LLM API read); default: the source
            named in the checkpoint's provenance.json. For an HF checkpoint: the folder itself.
        model_name: the `--model` name trtllm-bench records.
    """

    name = "trtllm"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        device: str = "cuda",
        work_dir: str | Path | None = None,
        profile: str | Path | None = None,
        hf_dir: str | Path | None = None,
        model_name: str | None = None,
    ):
        import tempfile

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise InputError(f"{model_dir} has no config.json", fix="pass a checkpoint folder")
        self.legacy = is_trtllm_checkpoint(self.model_dir)
        cfg = json.loads((self.model_dir / "config.json").read_text())
        quant = (cfg.get("quantization") or {}) if self.legacy else {}
        self.fp8 = quant.get("quant_algo") == "FP8" if self.legacy else is_fp8_checkpoint(model_dir)
        self.fp8_kv_cache = quant.get("kv_cache_quant_algo") == "FP8"
        self.vocab_size = int(cfg["vocab_size"])
        self.max_positions = int(cfg.get("max_position_embeddings", 1 << 30))
        default = profiles_dir() / ("fp8.yaml" if self.fp8 else "bf16.yaml")
        self.profile_path = Path(profile or default)
        self.profile = load_profile(self.profile_path) if self.legacy else None
        self.hf_dir = self._hf_dir(hf_dir)
        self.model_name = model_name or self.model_dir.name
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="trtllm-"))
        self.device, self._llm = device, None
        self._sizes: tuple[int, int, int] | None = None  # (max ISL, max ISL+OSL, max batch)

    def _hf_dir(self, given: str | Path | None) -> Path:
        """The HF folder trtllm-bench / the LLM API read the config and tokenizer from."""
        if not self.legacy:
            return Path(given) if given else self.model_dir
        cand = Path(given) if given else None
        if cand is None:
            prov = self.model_dir / "provenance.json"
            if prov.is_file():
                src = (json.loads(prov.read_text()).get("source") or {}).get("path")
                cand = Path(src) if src else None
        ok = cand is not None and (cand / "config.json").is_file()
        if ok:
            ok = "model_type" in json.loads((cand / "config.json").read_text())
        if not ok:
            raise InputError(
                f"{self.model_dir} is a TensorRT-LLM checkpoint: trtllm-bench and the LLM API "
                "also read the model's HF config, tokenizer and safetensors, which it lacks"
                + (f" (no HF checkpoint at {cand})" if cand else ""),
                where="--hf-dir",
                fix="pass --hf-dir with the HF folder the checkpoint was exported from",
            )
        return cand

    def prepare(self, pairs: list[tuple[int, int]], batch: int) -> None:
        """Size the one legacy engine for all the work to come (called by the matrix)."""
        if pairs:
            self._sizes = (max(i for i, _ in pairs), max(i + o for i, o in pairs), batch)

    def _engine(self, isl: int, osl: int, batch: int) -> Path:
        """The legacy engine for this checkpoint and profile, built once (per size cover)."""

        max_in, max_seq, max_b = self._sizes or (isl, isl + osl, batch)
        max_in, max_seq, max_b = max(max_in, isl), max(max_seq, isl + osl), max(max_b, batch)
        self._sizes = (max_in, max_seq, max_b)
        cfg_text = (self.model_dir / "config.json").read_text()
        ranks = sorted((p.name, p.stat().st_size) for p in self.model_dir.glob("rank*.safetensors"))
        key = sha256_json([cfg_text, ranks, self.profile, max_in, max_seq, max_b])[:16]
        engine_dir = self.work_dir / "engines" / key
        if (engine_dir / "config.json").is_file():
            return engine_dir  # built for the same checkpoint, profile and sizes
        engine_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = build_command(
            self.model_dir,
            engine_dir,
            self.profile,
            isl=max_in,
            osl=max_seq - max_in,
            batch=max_b,
            fp8_kv_cache=self.fp8_kv_cache,
        )
        _run(cmd, engine_dir.parent / f"{key}.build.log")
        return engine_dir

    def throughput(self, isl: int, osl: int, batch: int, num_requests: int | None = None) -> dict:
        """Run trtllm-bench on `num_requests` (default 4 x batch) synthetic ISL/OSL requests."""
        if isl + osl > self.max_positions:
            raise InputError(
                f"isl {isl} + osl {osl} exceeds max_position_embeddings {self.max_positions}",
                where="isl/osl",
            )
        run = self.work_dir / f"isl{isl}-osl{osl}-b{batch}"
        run.mkdir(parents=True, exist_ok=True)
        rows = synthetic_rows(isl, num_requests or 4 * batch, self.vocab_size)
        ds = write_dataset(run / "dataset.jsonl", rows, osl)
        engine_dir = self._engine(isl, osl, batch) if self.legacy else None
        cmd = bench_command(
            self.model_name,
            self.hf_dir,
            ds,
            run / "report.json",
            batch=batch,
            backend="tensorrt" if self.legacy else "pytorch",
            engine_dir=engine_dir,
        )
        _run(cmd, run / "bench.log")
        return {**parse_report(run / "report.json"), "command": " ".join(cmd)}

    def generate(
        self, input_ids: Any, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[list[int]]:
        """Greedy generation through TensorRT-LLM's LLM API (needs the TensorRT-LLM package):
        the PyTorch `LLM` on an HF checkpoint, the TensorRT engine `LLM` on a built legacy one."""
        rows = as_rows(input_ids)
        if self._llm is None:
            try:
                if self.legacy:
                    from tensorrt_llm._tensorrt_engine import LLM
                else:
                    from tensorrt_llm import LLM
            except ImportError as e:
                raise DependencyError("tensorrt_llm is not installed", fix=CONTAINER_FIX) from e
            if self.legacy:
                longest = max(len(r) for r in rows)
                engine = self._engine(longest, max_new_tokens, len(rows))
                self._llm = LLM(model=str(engine), tokenizer=str(self.hf_dir))
            else:
                self._llm = LLM(model=str(self.model_dir))
        from tensorrt_llm import SamplingParams

        sp = SamplingParams(max_tokens=max_new_tokens, top_k=1, ignore_eos=ignore_eos)
        outs = self._llm.generate(rows, sp)
        return [list(o.outputs[0].token_ids) for o in outs]

    def describe(self) -> dict[str, Any]:
        """Back end, checkpoint kind, profile and work folder."""
        return {
            "engine": self.name,
            "model_dir": str(self.model_dir),
            "hf_dir": str(self.hf_dir),
            "backend": "tensorrt" if self.legacy else "pytorch",
            "weights": "fp8" if self.fp8 else "bf16",
            "dtype": "bfloat16",
            "device": self.device,
            "profile": str(self.profile_path) if self.legacy else None,
            "work_dir": str(self.work_dir),
        }

    def close(self) -> None:
        """Shut down the LLM API executor if one was started."""
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
