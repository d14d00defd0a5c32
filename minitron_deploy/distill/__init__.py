"""Knowledge distillation: fused chunked KD losses, a resumable trainer, torchrun/FSDP2.

Public entry points: `DistillConfig`, `run_distillation`, `estimate_memory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minitron_deploy.distill.config import DistillConfig
    from minitron_deploy.distill.memory import estimate_memory
    from minitron_deploy.distill.trainer import run_distillation

__all__ = ["DistillConfig", "estimate_memory", "run_distillation"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not import torch (the CLI's --help stays fast).
    if name == "DistillConfig":
        from minitron_deploy.distill.config import DistillConfig

        return DistillConfig
    if name == "run_distillation":
        from minitron_deploy.distill.trainer import run_distillation

        return run_distillation
    if name == "estimate_memory":
        from minitron_deploy.distill.memory import estimate_memory

        return estimate_memory
    raise AttributeError(name)
