"""What a stage's run function gets: its typed config, its inputs' artifacts, where to write,
and the caches it may keep beside the store; and the helpers run functions share."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.data.shards import PreparedData
from minitron_deploy.errors import StageError
from minitron_deploy.pipeline.store import Artifact

if TYPE_CHECKING:
    from minitron_deploy.data.shards import Split


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON values (what a manifest's metrics hold)."""
    return json.loads(json.dumps(obj or {}, default=str))


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """The files of `src` into `dst`: hard links where the file system allows, else copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file():
            try:
                os.link(p, dst / p.name)
            except OSError:
                shutil.copy2(p, dst / p.name)


@dataclass
class StageContext:
    """One stage application at run time.

    Attributes:
        node_id: the node's id, e.g. "width/prune".
        config: the node's typed config (its stage module's node config).
        out: the artifact's content folder (empty; renamed into the store on success).
        scratch: a folder that outlives a killed run (resumable work such as checkpoints).
        inputs: role -> finished upstream artifact.
        progress: show progress bars.
        log: a function printing one line for the user.
        rank, world_size: this process's place when a launcher runs the stage on several
            ranks (`pipeline.worker`); only rank 0 writes the content.
        env: what besides its config entered the node's key (code digest, library versions,
            compute dtypes; `Pipeline.env_of`), for caches a stage keeps beside the store.
        caches: the folder of the caches stages keep beside the store (`cache(name)`), shared
            by the runs of one work folder; None: a temporary one under `scratch`.
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
    caches: Path | None = None

    def cache(self, name: str) -> Path:
        """The folder of cache `name` (e.g. the search's finished candidates): shared by the
        runs of one work folder, outside any artifact; what goes in is keyed by the stage
        (by content and, like the store, by `env`)."""
        root = self.caches if self.caches is not None else self.scratch / "caches"
        return root / f"{name}-cache"

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
        return {
            name: PreparedData(self._output(f"holdout:{name}", "data", "prepared data")).split(
                "all"
            )
            for name in self.config.holdout
        }

    def text(self, role: str) -> Split:
        """The split that config field `role` names, of the prepared data input `role`."""
        data = PreparedData(self._output(role, "data", "prepared data"))
        return data.split(getattr(self.config, role))
