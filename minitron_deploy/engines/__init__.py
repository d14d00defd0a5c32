"""Inference engines behind one small interface, chosen by name (see `registry.ENGINES`).

`get_engine("torch", model_dir)` builds the built-in engine; "hf", "hf-static" (transformers
`generate`), "ort" (onnxruntime-genai), "trtllm" (TensorRT-LLM tools) and "vllm" are the others.
Importing this package is cheap: each back end imports torch or its runtime only when it is built.
"""

from minitron_deploy.engines.base import Engine, MeasuresItself, Streams, is_fp8_checkpoint
from minitron_deploy.engines.registry import ENGINES, EngineSpec, get_engine, spec_of

__all__ = [
    "ENGINES",
    "Engine",
    "EngineSpec",
    "MeasuresItself",
    "Streams",
    "get_engine",
    "is_fp8_checkpoint",
    "spec_of",
]
