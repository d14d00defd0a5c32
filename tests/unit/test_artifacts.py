"""The content-addressed store: keys, atomic entries, corruption detection, gc."""

from __future__ import annotations

import json

from minitron_deploy.pipeline.store import ArtifactStore, artifact_key


def _build(store: ArtifactStore, stage: str, key: str, text: str):
    tmp = store.begin(stage)
    (tmp / "content" / "a.txt").write_text(text)
    (tmp / "content" / "provenance.json").write_text(json.dumps({"time": text}))
    return store.commit(tmp, stage, key, {"outputs": {"x": "a.txt"}})


def test_key_depends_on_everything():
    base = artifact_key("prune", {"h": 64}, {"model": "k1"}, {"code": "c1", "torch": "2"})
    assert base == artifact_key("prune", {"h": 64}, {"model": "k1"}, {"code": "c1", "torch": "2"})
    others = [
        artifact_key("distill", {"h": 64}, {"model": "k1"}, {"code": "c1", "torch": "2"}),
        artifact_key("prune", {"h": 65}, {"model": "k1"}, {"code": "c1", "torch": "2"}),
        artifact_key("prune", {"h": 64}, {"model": "k2"}, {"code": "c1", "torch": "2"}),
        artifact_key("prune", {"h": 64}, {"model": "k1"}, {"code": "c2", "torch": "2"}),
        artifact_key("prune", {"h": 64}, {"model": "k1"}, {"code": "c1", "torch": "3"}),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_roundtrip_and_content_hash_ignores_volatile(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _build(store, "s", "k" * 64, "hello")
    got = store.get("s", "k" * 64)
    assert got is not None and got.outputs == {"x": "a.txt"} and store.verify(got)
    b = _build(ArtifactStore(tmp_path / "other"), "s", "k" * 64, "hello")
    assert a.manifest["content_sha256"] == b.manifest["content_sha256"]
    assert store.get("s", "z" * 64) is None


def test_corrupt_and_partial_entries_are_absent(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _build(store, "s", "k" * 64, "hello")
    (a.content / "a.txt").write_text("hello, truncated or extended")
    assert store.get("s", "k" * 64) is None
    a2 = _build(store, "s", "k" * 64, "hello")  # rebuilt in place
    assert store.get("s", "k" * 64) is not None
    (a2.path / "manifest.json").unlink()
    assert store.get("s", "k" * 64) is None
    same_size = _build(store, "s", "k" * 64, "hello")
    (same_size.content / "a.txt").write_text("jello")
    assert store.get("s", "k" * 64) is not None and not store.verify(store.get("s", "k" * 64))


def test_gc_removes_leftovers_and_unkept(tmp_path):
    store = ArtifactStore(tmp_path)
    _build(store, "s", "a" * 64, "1")
    _build(store, "s", "b" * 64, "2")
    store.begin("s")  # an interrupted build
    removed = store.gc(keep={"a" * 64})
    assert store.get("s", "a" * 64) is not None and store.get("s", "b" * 64) is None
    assert not (tmp_path / ".tmp").exists() and removed
