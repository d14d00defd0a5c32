"""Which exports the read-back can stream, and how to read their tensors one at a time.

BF16 HF checkpoints are read with `model.stream.TensorReader`; bf16 legacy TensorRT-LLM
checkpoints with `trtllm_ckpt.TrtllmTensors` (qkv un-fused, ranks merged, tensor by tensor).
`verify.verify_export` feeds them to `model.readback.layerwise_logits`, one decoder layer at a
time. FP8 and ONNX exports are read back whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minitron_deploy.export.hf import source_reader
from minitron_deploy.export.trtllm_ckpt import TrtllmTensors


def stream_read(fmt: str, dtype: str) -> Callable[[Path], tuple[dict, Callable]] | None:
    """For a format the read-back can stream: `read(dest) -> (HF config dict, get(name))`;
    None for the others (FP8 and ONNX are read back whole)."""
    if dtype != "bf16":
        return None
    if fmt == "hf":

        def read_hf(dest: Path) -> tuple[dict, Callable]:
            cfg, reader = source_reader(dest)
            return cfg, reader.get

        return read_hf
    if fmt == "trtllm-ckpt":

        def read_trt(dest: Path) -> tuple[dict, Callable]:
            r = TrtllmTensors(dest)
            return r.config, r.get

        return read_trt
    return None
