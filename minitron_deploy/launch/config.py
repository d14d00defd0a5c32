"""The profile's `launcher:` section: how the distributed stages (distill, importance) run.

`local` runs every stage in the `run` process. `torchrun` starts the stage as a `torchrun`
subprocess of `run` (data parallel on this node; with nnodes > 1 the other nodes start the same
command). `slurm` writes an sbatch script into the run record, submits it and waits (or returns
under `--no-wait`). Either way `run` stays the one orchestrator and picks up the stage's result
as its artifact. The launcher does not enter artifact keys: where a stage ran does not change
what it computes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DISTRIBUTED_STAGES = ("importance", "distill")


class SlurmConfig(BaseModel):
    """sbatch settings (the job script's `#SBATCH` lines)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(None, description="#SBATCH --partition")
    account: str | None = Field(None, description="#SBATCH --account")
    time: str = Field("24:00:00", description="#SBATCH --time (wall-clock limit)")
    extra: tuple[str, ...] = Field(
        (),
        description="more lines for the script's head, as written (e.g. '#SBATCH --exclusive', "
        "'module load cuda')",
    )
    template: str | None = Field(
        None,
        description="your own sbatch template (string.Template): ${job_name} ${nodes} "
        "${gpus_per_node} ${partition_line} ${account_line} ${time} ${output} ${extra} "
        "${command}; default: the built-in one",
    )
    rdzv_port: int = Field(29500, ge=1, le=65535, description="rendezvous port on the head node")


class LauncherConfig(BaseModel):
    """How distributed stages run (`launcher: torchrun` = `launcher: {kind: torchrun}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "torchrun", "slurm"] = Field(
        "local", description="local (in the run process), torchrun or slurm"
    )
    stages: tuple[Literal["importance", "distill"], ...] = Field(
        DISTRIBUTED_STAGES, description="stages the launcher runs (the others run in `run`)"
    )
    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) per node")
    nnodes: int = Field(1, ge=1, description="nodes")
    rdzv_backend: str = Field("c10d", description="torchrun --rdzv-backend (nnodes > 1)")
    rdzv_endpoint: str | None = Field(
        None, description="torchrun --rdzv-endpoint host:port (needed for nnodes > 1)"
    )
    rdzv_id: str | None = Field(None, description="torchrun --rdzv-id (default: the job's key)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="sbatch settings")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _checks(self) -> LauncherConfig:
        if self.kind == "torchrun" and self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                "torchrun over several nodes needs rdzv_endpoint (host:port of one node)"
            )
        return self

    def runs(self, stage: str) -> bool:
        """Whether `stage` runs under this launcher (not in the `run` process)."""
        return self.kind != "local" and stage in self.stages

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes
