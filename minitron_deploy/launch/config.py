"""The profile's `launcher:` section: how the distributed stages (distill, importance) run.

Which stages are distributed is the stage table's to say (`Stage.distributed`, a layer above):
the profile builds its `launcher:` model with `launcher_config(<those stages>)`, whose `stages`
field takes those names and all of them by default.

`local` runs every stage in the `run` process. `torchrun` starts the stage as a `torchrun`
subprocess of `run` (data parallel on this node; with nnodes > 1 the other nodes start the same
command). `slurm` writes an sbatch script into the run record, submits it and waits (or returns
under `--no-wait`). Either way `run` stays the one orchestrator and picks up the stage's result
as its artifact. The launcher enters artifact keys only through the device a stage computes on
(a SLURM job's GPU node; `Pipeline.device_of`), not by its kind or sizes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

STAGES_HELP = "stages the launcher runs (the others run in `run`)"

_NAME = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|(?i:unlimited|infinite)")
# Values: what sbatch options take (constraints use & | [ ] *); no whitespace, quotes, $ or ;.
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(=[A-Za-z0-9_.,:@%/+=&|\[\]*-]+)?")
# Options the built-in script writes itself: -> the setting that controls each.
_SET_BY_US = {
    "job-name": "nothing (the job is named after the profile and node)",
    "nodes": "launcher.nnodes",
    "ntasks-per-node": "nothing (one task per node; torchrun starts the ranks)",
    "gpus-per-node": "launcher.nproc_per_node",
    "time": "slurm.time",
    "output": "nothing (the log goes into the launch folder)",
    "partition": "slurm.partition",
    "account": "slurm.account",
    "wrap": "nothing (the launcher writes the script)",
}


class SlurmConfig(BaseModel):
    """sbatch settings (the job script's `#SBATCH` lines)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(
        None, description="#SBATCH --partition (a name, or several joined by commas)"
    )
    account: str | None = Field(None, description="#SBATCH --account")
    time: str = Field(
        "24:00:00",
        description="#SBATCH --time (wall-clock limit: minutes, MM:SS, HH:MM:SS, D-HH, "
        "D-HH:MM, D-HH:MM:SS or UNLIMITED)",
    )
    extra: tuple[str, ...] = Field(
        (),
        description="more sbatch options, one `--option=value` or `--flag` per item (e.g. "
        "'--exclusive', '--mem=0', '--constraint=h100'); each becomes an `#SBATCH` line. Shell "
        "commands (module load, exports) belong in your own `template`",
    )
    template: str | None = Field(
        None,
        description="your own sbatch template (string.Template): ${job_name} ${nodes} "
        "${gpus_per_node} ${partition_line} ${account_line} ${time} ${output} ${extra} "
        "${command}; default: the built-in one",
    )
    rdzv_port: int = Field(29500, ge=1, le=65535, description="rendezvous port on the head node")

    # These values are written into a shell script: each is checked against a pattern, so a
    # shared profile cannot smuggle a newline (a command) or shell syntax into it.
    @field_validator("partition", "account")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(
                "must be a SLURM name: letters, digits, _ . - (partitions: several joined by "
                "commas), no spaces or shell characters"
            )
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not _TIME.fullmatch(v):
            raise ValueError(
                "must be a SLURM time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, "
                "D-HH:MM:SS or UNLIMITED (e.g. '48:00:00', '2-00:00:00')"
            )
        return v

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for k, item in enumerate(v):
            m = _OPTION.fullmatch(item)
            if m is None:
                hint = (
                    f" (write {item.removeprefix('#SBATCH').strip()!r}: the #SBATCH prefix is "
                    "added)"
                    if item.startswith("#SBATCH")
                    else ""
                )
                raise ValueError(
                    f"item {k} {item!r} is not an sbatch option `--option=value` or `--flag` "
                    "(value: letters, digits and _ . , : @ % / + = & | [ ] * -; no spaces, quotes, "
                    f"$ or ;){hint}; shell commands belong in your own template"
                )
            if m.group(1) in _SET_BY_US:
                raise ValueError(
                    f"item {k} {item!r}: --{m.group(1)} is written by the launcher; set "
                    f"{_SET_BY_US[m.group(1)]} instead"
                )
        return v


class LauncherConfig(BaseModel):
    """How distributed stages run (`launcher: torchrun` = `launcher: {kind: torchrun}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "torchrun", "slurm"] = Field(
        "local", description="local (in the run process), torchrun or slurm"
    )
    stages: tuple[str, ...] = Field((), description=STAGES_HELP)
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


def launcher_config(distributed: tuple[str, ...]) -> type[LauncherConfig]:
    """The `launcher:` model of a stage table whose `distributed` stages a launcher can run:
    `stages` takes those names (the schema lists them) and defaults to all of them."""
    return create_model(
        "LauncherConfig",
        __base__=LauncherConfig,
        __doc__=LauncherConfig.__doc__,
        __module__=__name__,
        stages=(tuple[Literal[distributed], ...], Field(distributed, description=STAGES_HELP)),
    )
