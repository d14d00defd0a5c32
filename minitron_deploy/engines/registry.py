"""The engine table: one record per back end. Torch-free, so `--help`, profiles and `doctor`
read it without importing any engine.

To add an engine: a module with a class `f(model_dir, *, dtype, device, **opts)` that has
`generate`, `describe` and `close` (see `base.Engine`), and one `EngineSpec` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from minitron_deploy.hardware import lacking


@dataclass(frozen=True)
class EngineSpec:
    """One inference back end.

    Attributes:
        name: the name used by `--engine` and profiles.
        factory: "module:attribute" of the engine class.
        help: one line for `--help` and `doctor`.
        modules: Python modules it needs (checked by `plan` and `doctor`).
        executables: programs it needs on PATH.
        fp8: whether it runs Model-Optimizer FP8 checkpoints (on some device).
        cpu: whether it runs on a CPU.
        probe: "module:function" returning what else it lacks here (a list of strings), for
            an engine that lives outside this venv.
    """

    name: str
    factory: str
    help: str
    modules: tuple[str, ...] = ("torch", "transformers")
    executables: tuple[str, ...] = ()
    fp8: bool = False
    cpu: bool = True
    probe: str | None = None

    def probed(self) -> list[str]:
        """What the engine's `probe` finds missing (empty without a probe)."""
        if not self.probe:
            return []
        module, attr = self.probe.split(":")
        return list(getattr(importlib.import_module(module), attr)())

    def missing(self) -> list[str]:
        """What this machine lacks to run the engine, worded for a message (empty: nothing)."""
        return lacking(self.modules, self.executables) + self.probed()

    def load(self) -> Any:
        """The engine class (imports its module)."""
        module, attr = self.factory.split(":")
        return getattr(importlib.import_module(module), attr)


ENGINES: dict[str, EngineSpec] = {
    e.name: e
    for e in (
        EngineSpec(
            "torch",
            "minitron_deploy.engines.torch_engine:TorchEngine",
            "built-in engine: plain torch, preallocated KV cache, CUDA graphs on GPU",
            fp8=True,
        ),
        EngineSpec(
            "hf", "minitron_deploy.engines.hf:HFEngine", "transformers generate (dynamic cache)"
        ),
        EngineSpec(
            "hf-static",
            "minitron_deploy.engines.hf:HFStaticEngine",
            "transformers generate (static cache)",
        ),
        EngineSpec(
            "ort",
            "minitron_deploy.engines.ort_genai:OrtGenaiEngine",
            "onnxruntime-genai (exports and runs an ONNX graph)",
            modules=("onnxruntime_genai", "onnx"),
        ),
        EngineSpec(
            "trtllm",
            "minitron_deploy.engines.trtllm:TrtllmEngine",
            "TensorRT-LLM through trtllm-bench / trtllm-build (NGC container, GPU)",
            modules=(),
            executables=("trtllm-bench",),
            fp8=True,
            cpu=False,
        ),
        EngineSpec(
            "vllm",
            "minitron_deploy.engines.vllm_engine:VllmEngine",
            "vLLM from its own venv (.venv-vllm, `make vllm`), as a subprocess; CPU or CUDA; "
            "FP8 on CUDA only",
            modules=(),
            fp8=True,
            probe="minitron_deploy.engines.vllm_engine:missing",
        ),
    )
}
