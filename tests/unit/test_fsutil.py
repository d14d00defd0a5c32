"""Atomic writes publish outputs with the modes plain open()/mkdir() would give them."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from minitron_deploy.fsutil import atomic_dir, atomic_write_text


def _mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_atomic_outputs_follow_the_umask_not_the_private_temp_modes(tmp_path, umask_027):
    source = tmp_path / "user_weights.bin"
    source.write_bytes(b"w")
    os.chmod(source, 0o600)
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        fd, private = tempfile.mkstemp(dir=tmp)  # what libraries writing via temp files leave
        os.close(fd)
        os.rename(private, tmp / "weights.safetensors")
        sub = tempfile.mkdtemp(dir=tmp)  # 0700
        os.rename(sub, tmp / "sub")
        (tmp / "sub" / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp / "sub" / "run.sh", 0o700)
        os.link(source, tmp / "linked.bin")  # a hard link shares the user's inode and mode
        (tmp / "alias").symlink_to("weights.safetensors")
    assert _mode(out) == 0o750
    assert _mode(out / "weights.safetensors") == 0o640
    assert _mode(out / "sub") == 0o750
    assert _mode(out / "sub" / "run.sh") == 0o750
    assert _mode(source) == 0o600 and _mode(out / "linked.bin") == 0o600
    atomic_write_text(tmp_path / "note.txt", "x")
    assert _mode(tmp_path / "note.txt") == 0o640


def test_artifact_entries_are_readable_like_other_outputs(tmp_path, umask_027):
    from minitron_deploy.pipeline.store import ArtifactStore

    store = ArtifactStore(tmp_path / "cache")
    tmp = store.begin("export")
    fd, private = tempfile.mkstemp(dir=tmp / "content")
    os.close(fd)
    art = store.commit(tmp, "export", "k" * 64, {"config": {}})
    entry = store.entry_path("export", "k" * 64)
    assert _mode(entry) == 0o750 and _mode(entry / "content") == 0o750
    assert all(_mode(p) == 0o640 for p in entry.rglob("*") if p.is_file())
    assert art is not None
