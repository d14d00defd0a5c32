"""The engine table: one record per back end. Torch-free, so `--help`, profiles and `doctor`
read it without importing any engine.

To add an engine: a module with a class `f(model_dir, *, dtype, device, **opts)` that has
`generate`, `describe` and `close` (see `base.Engine`; `prepare` and `throughput` too when it
measures itself, `base.MeasuresItself`; `sample` and `stream` when it streams,
`base.Streams`), a pydantic model of its options (torch-free, so `--help` stays light), and
one `EngineSpec` line below. `bench`, `generate`, Triton, the search's engine check and
`doctor` read the record; no caller asks an engine object what it can do.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from minitron_deploy.engines.base import Engine, Streams, refuse_fp8
from minitron_deploy.errors import InputError, config_error, validation_problems
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
        options: "module:Class" of the pydantic model of its options (the keyword arguments
            its class takes besides dtype and device); None: it takes none. `bench` and
            `generate` generate their engine flags from it, and profiles' `bench.engine_opts`
            are validated against it.
        cli_prefix: prefix of those flags ("vllm_" gives `--vllm-threads`); engines whose
            option names would clash on one command line need distinct prefixes.
        measures_itself: it times its own runs (`base.MeasuresItself`: `prepare`, then
            `throughput` per ISL/OSL pair; an external tool such as trtllm-bench), so the
            matrix reads its numbers instead of timing `generate`.
        streams: it samples and streams token by token (`base.Streams`: `sample`, `stream`),
            as the Triton model needs.
    """

    name: str
    factory: str
    help: str
    modules: tuple[str, ...] = ("torch", "transformers")
    executables: tuple[str, ...] = ()
    fp8: bool = False
    cpu: bool = True
    probe: str | None = None
    options: str | None = None
    cli_prefix: str = ""
    measures_itself: bool = False
    streams: bool = False

    def options_model(self) -> type[BaseModel] | None:
        """The pydantic model of the engine's options (imports its torch-free module)."""
        if not self.options:
            return None
        module, attr = self.options.split(":")
        return getattr(importlib.import_module(module), attr)

    def option_problems(self, opts: dict[str, Any]) -> list[str]:
        """What is wrong with `opts` as this engine's options (empty: nothing)."""
        model = self.options_model()
        if model is None:
            return [f"{k}: engine {self.name!r} takes no options" for k in opts]
        try:
            model.model_validate(opts)
        except ValidationError as e:
            return [f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in validation_problems(e)]
        return []

    def check_options(self, opts: dict[str, Any], where: str = "engine options") -> None:
        """Raise `ConfigError` (exit 2) naming every problem of `opts`."""
        model = self.options_model()
        if model is None:
            if opts:
                raise InputError(
                    f"engine {self.name!r} takes no options, got {sorted(opts)}", where=where
                )
            return
        try:
            model.model_validate(opts)
        except ValidationError as e:
            raise config_error(e, f"invalid {self.name} engine options", where=where) from None

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
            options="minitron_deploy.engines.torch_options:TorchOptions",
            streams=True,
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
            options="minitron_deploy.engines.ort_genai:OrtOptions",
            cli_prefix="ort_",
        ),
        EngineSpec(
            "trtllm",
            "minitron_deploy.engines.trtllm:TrtllmEngine",
            "TensorRT-LLM through trtllm-bench / trtllm-build (NGC container, GPU)",
            modules=(),
            executables=("trtllm-bench",),
            fp8=True,
            cpu=False,
            options="minitron_deploy.engines.trtllm:TrtllmOptions",
            measures_itself=True,
        ),
        EngineSpec(
            "vllm",
            "minitron_deploy.engines.vllm_engine:VllmEngine",
            "vLLM from its own venv (.venv-vllm, `make vllm`), as a subprocess; CPU or CUDA; "
            "FP8 on CUDA only",
            modules=(),
            fp8=True,
            probe="minitron_deploy.engines.vllm_engine:missing",
            options="minitron_deploy.engines.vllm_engine:VllmOptions",
            cli_prefix="vllm_",
            measures_itself=True,
        ),
    )
}


def get_engine(
    name: str, model_dir: str | Path, *, dtype: str = "auto", device: str = "cpu", **opts: Any
) -> Engine:
    """Build the engine called `name` on the checkpoint in `model_dir`.

    Args:
        name: one of `ENGINES` ("torch", "hf", "hf-static", "ort", "trtllm").
        model_dir: local HF checkpoint folder (BF16/FP32, or FP8 from Model-Optimizer's export).
        dtype: compute dtype ("auto" = the checkpoint's; FP8 checkpoints compute in bfloat16).
        device: "cpu" or "cuda[:N]".
        **opts: back-end options, fields of its `EngineSpec.options` model (e.g.
            `compile=True`, `cuda_graphs=True` for "torch").

    Raises:
        InputError: unknown engine name, options it does not take, or a checkpoint this
            engine cannot run.
    """
    if name not in ENGINES:
        raise InputError(
            f"unknown engine {name!r}", where="--engine", fix=f"use one of {sorted(ENGINES)}"
        )
    spec = ENGINES[name]
    spec.check_options(opts)
    if not spec.fp8:
        refuse_fp8(model_dir, name)
    return spec.load()(model_dir, dtype=dtype, device=device, **opts)


def spec_of(engine: Engine) -> EngineSpec:
    """The record of an engine object: its table entry, found by its `name`.

    An engine built outside the table (a test's stand-in for an external tool, a benchmark's
    hand-made engine) has no record: it gets an ad-hoc one, the only place where what an
    engine can do is read from the object itself. It measures itself when it has `throughput`
    (a stand-in for trtllm-bench needs no `prepare`: the matrix prepares only the engines it
    builds), and streams when it has `sample` and `stream`.
    """
    spec = ENGINES.get(engine.name)
    if spec is not None:
        return spec
    return EngineSpec(
        engine.name,
        factory="",
        help="an engine built outside the table",
        measures_itself=callable(getattr(type(engine), "throughput", None)),
        streams=isinstance(engine, Streams),
    )


class EngineChoice(Protocol):
    """What `check_engine` reads: an engine name and a device (e.g. a `BenchConfig`)."""

    engine: str
    device: str


def check_engine(choice: EngineChoice, where: str = "search.budget.min_speedup") -> None:
    """The engine must run here: a speedup budget is measured on it.

    Raises:
        InputError: unknown engine, a GPU-only engine on a CPU, missing modules/programs, or
            a CUDA device that is not there.
    """
    spec = ENGINES.get(choice.engine)
    if spec is None:
        raise InputError(
            f"unknown bench engine {choice.engine!r}", fix=f"use one of {sorted(ENGINES)}"
        )
    if choice.device == "cpu" and not spec.cpu:
        raise InputError(
            f"min_speedup is measured on the bench engine {choice.engine!r}, which needs a GPU; "
            "this run's device is cpu",
            where=where,
            fix="run on a GPU machine, bench with an engine that runs on CPU (torch), or use "
            "max_params / max_memory_gb",
        )
    lacks = spec.missing()
    if lacks:
        raise InputError(
            f"min_speedup is measured on the bench engine {choice.engine!r}, which cannot run "
            f"here: it needs {', '.join(lacks)}",
            where=where,
            fix="install it, bench with another engine, or use max_params / max_memory_gb",
        )
    if choice.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                f"bench device {choice.device} is not available here",
                where=where,
                fix="run on a GPU machine or bench on cpu",
            )
