"""Which exports the read-back can stream, and how to read their tensors one at a time.

BF16 HF checkpoints are read with `model.stream.TensorReader`; bf16 legacy TensorRT-LLM
checkpoints with `trtllm_ckpt.TrtllmTensors` (qkv un-fused, ranks merged, tensor by tensor);
FP8 HF checkpoints with `hf_fp8.Fp8Tensors` (W8A8 linears swapped in layer by layer).
`verify.verify_export` feeds them to `model.readback.lockstep_logits`, one decoder layer at a
time. FP8 TensorRT-LLM checkpoints and ONNX exports are read back whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minitron_deploy.export.hf import source_reader
from minitron_deploy.export.hf_fp8 import Fp8Tensors
from minitron_deploy.export.trtllm_ckpt import TrtllmTensors

Read = Callable[[Path], tuple[dict, Callable, Callable | None]]


def stream_read(fmt: str, dtype: str) -> Read | None:
    """For a format the read-back can stream: `read(dest) -> (HF config dict, get(name),
    linear(module) or None)` (see `lockstep_logits`); None for the others."""
    if fmt == "hf-fp8":

        def read_fp8(dest: Path) -> tuple[dict, Callable, Callable | None]:
            r = Fp8Tensors(dest)
            return r.config, r.get, r.linear

        return read_fp8
    if dtype != "bf16":
        return None
    if fmt == "hf":

        def read_hf(dest: Path) -> tuple[dict, Callable, Callable | None]:
            cfg, reader = source_reader(dest)
            return cfg, reader.get, None

        return read_hf
    if fmt == "trtllm-ckpt":

        def read_trt(dest: Path) -> tuple[dict, Callable, Callable | None]:
            r = TrtllmTensors(dest)
            return r.config, r.get, None

        return read_trt
    return None
