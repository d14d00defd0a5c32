"""Content-addressed artifact store.

Key = SHA-256 of (stage name, node config, upstream keys and the environment: a digest of the
stage's code, library versions and, where it matters, the hardware). Each artifact is a folder
`<root>/<stage>/<key>/` holding `manifest.json` and `content/`; it is written to a temporary
folder and renamed into place, so an entry either exists whole or not at all. An entry whose
manifest is missing or whose files do not match the manifest's names and sizes is treated as
absent and rebuilt; `ArtifactStore.verify` also checks every file's SHA-256.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minitron_deploy.fsutil import (
    HashCache,
    atomic_write_json,
    sha256_file,
    sha256_json,
    share_like_umask,
)

__all__ = ["Artifact", "ArtifactStore", "HashCache", "artifact_key", "content_hash", "dir_size"]

MANIFEST = "manifest.json"
CONTENT = "content"
# Files whose bytes legitimately differ between identical runs (timestamps); left out of
# the content hash that proves two runs produced the same artifact.
# Distillation's metrics.jsonl and summary.json carry tokens/s and wall time next to the losses;
# the weights beside them are what must match. Prepared data's stamps.json holds its shards'
# modification times.
VOLATILE = {"provenance.json", "metrics.jsonl", "summary.json", "curves.png", "stamps.json"}


def artifact_key(
    stage: str,
    config: Any,
    upstream: dict[str, str],
    env: dict[str, Any] | None = None,
) -> str:
    """The content address of a stage's output."""
    return sha256_json(
        {
            "stage": stage,
            "config": config,
            "upstream": dict(sorted(upstream.items())),
            "env": env or {},
        }
    )


@dataclass
class Artifact:
    """A finished store entry."""

    stage: str
    key: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> Path:
        return self.path / CONTENT

    @property
    def outputs(self) -> dict[str, Any]:
        return self.manifest.get("outputs", {})


def _file_table(content: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for p in sorted(content.rglob("*")):
        if p.is_file():
            rel = p.relative_to(content).as_posix()
            table[rel] = {
                "size": p.stat().st_size,
                "sha256": None if p.name in VOLATILE else sha256_file(p),
            }
    return table


def content_hash(files: dict[str, dict[str, Any]]) -> str:
    """Hash over file names and bytes, volatile files excluded."""
    return sha256_json({k: v["sha256"] for k, v in files.items() if v["sha256"] is not None})


class ArtifactStore:
    """A folder of content-addressed stage outputs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry_path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:24]

    def get(self, stage: str, key: str) -> Artifact | None:
        """The finished entry for (stage, key), or None if absent, partial or corrupt."""
        path = self.entry_path(stage, key)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if manifest.get("key") != key or not self._sizes_match(path, manifest):
            return None
        return Artifact(stage, key, path, manifest)

    @staticmethod
    def _sizes_match(path: Path, manifest: dict[str, Any]) -> bool:
        for rel, meta in manifest.get("files", {}).items():
            p = path / CONTENT / rel
            try:
                if p.stat().st_size != meta["size"]:
                    return False
            except OSError:
                return False
        return True

    def verify(self, art: Artifact) -> bool:
        """Deep check: every file's SHA-256 matches the manifest."""
        for rel, meta in art.manifest.get("files", {}).items():
            if meta["sha256"] and sha256_file(art.content / rel) != meta["sha256"]:
                return False
        return True

    def begin(self, stage: str) -> Path:
        """A fresh temporary folder to build an entry in (its `content/` is created)."""
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=self.root / ".tmp"))
        (tmp / CONTENT).mkdir()
        return tmp

    def commit(self, tmp: Path, stage: str, key: str, manifest: dict[str, Any]) -> Artifact:
        """Seal a temporary folder as the entry for (stage, key), replacing a corrupt one."""
        files = _file_table(tmp / CONTENT)
        manifest = {
            **manifest,
            "stage": stage,
            "key": key,
            "files": files,
            "content_sha256": content_hash(files),
            "created_unix": time.time(),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        share_like_umask(tmp)  # mkdtemp and library temp files are private
        dest = self.entry_path(stage, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            trash = self.root / ".tmp" / f"old-{dest.name}-{os.getpid()}"
            os.replace(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, dest)
        return Artifact(stage, key, dest, manifest)

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def entries(self) -> list[Artifact]:
        """All sealed entries (corrupt ones included, with an empty manifest)."""
        out = []
        if not self.root.is_dir():
            return out
        for stage_dir in sorted(self.root.iterdir()):
            if not stage_dir.is_dir() or stage_dir.name.startswith("."):
                continue
            for entry in sorted(stage_dir.iterdir()):
                try:
                    manifest = json.loads((entry / MANIFEST).read_text())
                except (OSError, json.JSONDecodeError):
                    manifest = {}
                out.append(Artifact(stage_dir.name, manifest.get("key", ""), entry, manifest))
        return out

    def gc(self, keep: set[str] | None = None, older_than_s: float | None = None) -> list[Path]:
        """Remove temporary leftovers, corrupt entries, and entries not in `keep`.

        Args:
            keep: keys to keep; None keeps every valid entry.
            older_than_s: only remove valid entries created longer ago than this.
        """
        removed = []
        tmp = self.root / ".tmp"
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        now = time.time()
        for art in self.entries():
            valid = bool(art.manifest) and self.get(art.stage, art.key) is not None
            old = older_than_s is None or now - art.manifest.get("created_unix", 0) > older_than_s
            if not valid or (keep is not None and art.key not in keep and old):
                shutil.rmtree(art.path, ignore_errors=True)
                removed.append(art.path)
        return removed


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
