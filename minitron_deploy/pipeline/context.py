"""What a stage's run function gets: its typed config, its inputs' artifacts, where to write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import StageError
from minitron_deploy.pipeline.store import Artifact

if TYPE_CHECKING:
    from minitron_deploy.data.shards import Split


@dataclass
class StageContext:
    """One stage application at run time.

    Attributes:
        node_id: the node's id, e.g. "width/prune".
        config: the node's typed config (see `pipeline.nodes`).
        out: the artifact's content folder (empty; renamed into the store on success).
        scratch: a folder that outlives a killed run (resumable work such as checkpoints).
        inputs: role -> finished upstream artifact.
        progress: show progress bars.
        log: a function printing one line for the user.
        rank, world_size: this process's place when a launcher runs the stage on several
            ranks (`launch.worker`); only rank 0 writes the content.
        env: what besides its config entered the node's key (code digest, library versions,
            compute dtypes; `Pipeline.env_of`), for caches a stage keeps beside the store.
    """

    node_id: str
    config: Any
    out: Path
    scratch: Path
    inputs: dict[str, Artifact]
    progress: bool = True
    log: Callable[[str], None] = lambda msg: None
    rank: int = 0
    world_size: int = 1
    env: dict[str, Any] = field(default_factory=dict)

    def _output(self, role: str, key: str, what: str) -> Path:
        """The path an upstream artifact gives as output `key` (relative to its content)."""
        art = self.inputs[role]
        rel = art.outputs.get(key)
        if rel is None:
            raise StageError(f"input {role!r} ({art.stage}) provides no {what}")
        p = Path(rel)
        return p if p.is_absolute() else art.content / p

    def model_dir(self, role: str) -> Path:
        """The model folder an upstream artifact provides."""
        return self._output(role, "model", "model")

    def holdout(self) -> dict[str, Split]:
        """Every held-out domain the config names (all of each: inputs `holdout:<name>`)."""
        from minitron_deploy.data.shards import PreparedData

        return {
            name: PreparedData(self._output(f"holdout:{name}", "data", "prepared data")).split(
                "all"
            )
            for name in self.config.holdout
        }

    def text(self, role: str) -> Split:
        """The split that config field `role` names, of the prepared data input `role`."""
        from minitron_deploy.data.shards import PreparedData

        data = PreparedData(self._output(role, "data", "prepared data"))
        return data.split(getattr(self.config, role))
