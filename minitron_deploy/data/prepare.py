"""Prepared data: a corpus tokenised once into memory-mapped token shards, per split.

`prepare_corpus(source, tokenizer_dir, out)` reads the source's documents in their fixed order
(text files, folders, JSONL, Parquet / Arrow, built-ins), sends each to the train or validation
split by a hash of its id (`data.text.split_of`), tokenises them in batches with the fast
tokenizer's `encode_batch_fast` (Rust threads, no offsets), and appends every document's ids
and the EOS token to its split's stream. When the train buffer reaches `shard_tokens`, both
splits are flushed: `<split>-NNNNN.bin` (uint16 when the vocabulary fits, else uint32) and
`<split>-NNNNN.docs.npy` (the offset of every document in the shard), written atomically, and
`progress.json` records how many documents are in shards. Peak memory is about one shard.

Interrupted (even by kill -9), a rerun resumes after the last flushed shard; `index.json`
(written last) marks a finished folder and records the tokenizer's digest, the sources'
content digest, each shard's size and SHA-256 (a pure function of the content);
`stamps.json` keeps each shard's size and modification time when written, so opening re-hashes
only shards that changed since. See `shards.py` to read.
"""

from __future__ import annotations

import array
import json
import os
import time
from pathlib import Path
from typing import Any

from minitron_deploy.console import Progress
from minitron_deploy.data.text import first_document, iter_documents, source_digest, split_of
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    sha256_file,
    sha256_json,
)
from minitron_deploy.model.io import TOKENIZER_FILES, load_tokenizer

FORMAT = "minitron-prepared-v1"
INDEX = "index.json"
PROGRESS = "progress.json"
STAMPS = "stamps.json"
SPLITS = ("train", "validation")


def tokenizer_digest(tokenizer_dir: str | Path) -> str:
    """SHA-256 of the files that define a tokenizer (so two copies of it are the same)."""

    d = Path(tokenizer_dir)
    return sha256_json({n: sha256_file(d / n) for n in TOKENIZER_FILES if (d / n).is_file()})


def corpus_key(source_sha256: str, tok_sha256: str, val_fraction: float) -> str:
    """What a prepared folder is: its content's identity (paths play no part)."""

    return sha256_json([FORMAT, source_sha256, tok_sha256, val_fraction])


class ShardWriter:
    """Per-split token buffers and the shards flushed so far (`flush` writes one shard per
    split that holds tokens)."""

    def __init__(self, out: Path, typecode: str, shards: dict[str, list[dict]]):
        self.out, self.typecode = out, typecode
        self.buf = {s: array.array(typecode) for s in SPLITS}
        self.docs = {s: array.array("q") for s in SPLITS}
        self.shards = shards

    def add(self, split: str, ids: Any) -> None:
        """One document's token ids (a list, or a numpy array of the writer's dtype)."""
        self.docs[split].append(len(self.buf[split]))
        if hasattr(ids, "tobytes"):
            self.buf[split].frombytes(ids.tobytes())
        else:
            self.buf[split].extend(ids)

    def flush(self) -> None:
        import numpy as np

        for split in SPLITS:
            if not self.buf[split]:
                continue
            n = len(self.shards[split])
            name = f"{split}-{n:05d}"
            data = self.buf[split].tobytes()
            atomic_write_bytes(self.out / f"{name}.bin", data)
            docs = np.frombuffer(self.docs[split].tobytes(), dtype=np.int64)
            buf = _npy_bytes(docs)
            atomic_write_bytes(self.out / f"{name}.docs.npy", buf)
            st = (self.out / f"{name}.bin").stat()
            self.shards[split].append(
                {
                    "file": f"{name}.bin",
                    "docs_file": f"{name}.docs.npy",
                    "tokens": len(self.buf[split]),
                    "documents": len(self.docs[split]),
                    "bytes": st.st_size,
                    "sha256": sha256_file(self.out / f"{name}.bin"),
                }
            )
            self.buf[split] = array.array(self.typecode)
            self.docs[split] = array.array("q")


def write_index(
    out: Path,
    shards: dict[str, list[dict]],
    *,
    key: str,
    source: str,
    source_sha256: str,
    tokenizer_sha256: str,
    vocab_size: int,
    eos_token_id: int | None,
    typecode: str,
    val_fraction: float,
) -> dict[str, Any]:
    """Finish a prepared folder: `stamps.json`, then `index.json` (its presence marks the
    folder finished), then drop `progress.json`. Returns the index."""

    index = {
        "format": FORMAT,
        "key": key,
        "source": source,
        "source_sha256": source_sha256,
        "tokenizer_sha256": tokenizer_sha256,
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "dtype": "uint16" if typecode == "H" else "uint32",
        "val_fraction": val_fraction,
        "splits": {
            s: {
                "tokens": sum(x["tokens"] for x in shards[s]),
                "documents": sum(x["documents"] for x in shards[s]),
                "shards": shards[s],
            }
            for s in SPLITS
        },
    }
    # The index is a pure function of the content (a store artifact hashes it); the shards'
    # size and mtime at writing go beside it, so opening skips re-hashing unchanged shards.
    stamps = {}
    for split in SPLITS:
        for shard in shards[split]:
            st = (out / shard["file"]).stat()
            stamps[shard["file"]] = [st.st_size, st.st_mtime_ns]
    atomic_write_json(out / STAMPS, stamps)
    atomic_write_json(out / INDEX, index)
    (out / PROGRESS).unlink(missing_ok=True)
    return index


def _npy_bytes(arr: Any) -> bytes:
    import io

    import numpy as np

    f = io.BytesIO()
    np.save(f, arr)
    return f.getvalue()


def prepare_corpus(
    source: str,
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.05,
    shard_tokens: int = 1 << 24,
    batch_docs: int = 512,
    overwrite: bool = False,
    progress: bool = True,
    file_hash: Any = None,
) -> dict[str, Any]:
    """Tokenise `source` into `out` (resuming an interrupted run); returns the index.

    Args:
        source: data source (see `data.text`), comma-separated parts allowed.
        tokenizer_dir: folder with the fast tokenizer (a model checkpoint).
        out: the prepared folder.
        val_fraction: share of documents in the validation split.
        shard_tokens: train tokens per shard (memory is bounded by about one shard).
        batch_docs: documents per tokenizer call.
        overwrite: replace a finished folder of other content.
        progress: periodic progress on stderr.
        file_hash: `path -> sha256` for the sources' files (e.g. a stat-cached hasher).

    Raises:
        InputError: an unusable source, a folder prepared from other data or tokenizer.
    """

    out = Path(out)
    first_document(source, "all", val_fraction)  # cheap: the source exists and has text
    tok_sha = tokenizer_digest(tokenizer_dir)
    src_sha = source_digest(source, file_hash)
    key = corpus_key(src_sha, tok_sha, val_fraction)
    if (out / INDEX).is_file():
        index = json.loads((out / INDEX).read_text())
        if index.get("key") == key:  # already prepared from this content with this tokenizer
            return {**index, "seconds": 0.0, "reused": True}
        if not overwrite:
            raise InputError(
                f"{out} holds data prepared from other sources or another tokenizer",
                fix="choose another --out, or pass --overwrite",
            )
    tok = load_tokenizer(tokenizer_dir)  # before anything is written: a usable tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise InputError(
            f"{tokenizer_dir} has no fast tokenizer", fix="save tokenizer.json beside the model"
        )
    state: dict[str, Any] = {}
    if (out / PROGRESS).is_file():
        state = json.loads((out / PROGRESS).read_text())
        if state.get("key") != key:
            state = {}  # an interrupted run of something else: start over
    if not state:
        if out.exists() and any(out.iterdir()):
            if not overwrite and not (out / PROGRESS).is_file():
                check_output_dir(out)  # refuses a non-empty folder of something else
            for p in out.iterdir():
                if p.is_file():
                    p.unlink()
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        state = {"key": key, "docs_done": 0, "shards": {s: [] for s in SPLITS}}
    else:
        created = False
    try:
        return _tokenize(
            source, out, tok, backend, state, created, key, src_sha, tok_sha,
            val_fraction, shard_tokens, batch_docs, progress,
        )  # fmt: skip
    except InputError:
        if created:  # bad input found part-way (a malformed line): leave nothing behind
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _tokenize(
    source, out, tok, backend, state, created, key, src_sha, tok_sha,
    val_fraction, shard_tokens, batch_docs, progress,
) -> dict[str, Any]:  # fmt: skip

    vocab = len(tok)
    eos = tok.eos_token_id
    typecode = "H" if vocab <= 1 << 16 else "I"
    splits = ShardWriter(out, typecode, state["shards"])
    done_before = int(state["docs_done"])
    t0 = time.monotonic()
    counted = 0
    bar = Progress("prepare data: documents", None, start=done_before, enabled=progress)

    def encode(batch: list[Any]) -> None:
        encs = backend.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
        for d, e in zip(batch, encs, strict=True):
            ids = e.ids
            if eos is not None:
                ids = [*ids, eos]
            split = split_of(d.id, val_fraction)
            for _ in range(d.repeat if split == "train" else 1):  # a weighted source's `*N`
                splits.add(split, ids)

    batch: list[Any] = []
    for i, doc in enumerate(iter_documents(source)):
        if i < done_before:
            continue  # already in flushed shards
        batch.append(doc)
        if len(batch) >= batch_docs:
            encode(batch)
            counted = i + 1
            batch = []
            bar.update(counted, msg=f"{sum(len(b) for b in splits.buf.values()):,} tokens buffered")
            if len(splits.buf["train"]) >= shard_tokens:
                splits.flush()
                state["docs_done"] = counted
                atomic_write_json(out / PROGRESS, state)
                if os.environ.get("MINITRON_PREPARE_FLUSH_DELAY"):  # test hook: kill -9 here
                    time.sleep(float(os.environ["MINITRON_PREPARE_FLUSH_DELAY"]))
    if batch:
        encode(batch)
        counted += len(batch)
    splits.flush()
    bar.close()
    if not any(x["tokens"] for x in state["shards"]["train"]):
        raise InputError(f"data source {source!r} gave no training tokens", fix="add text")
    index = write_index(
        out,
        state["shards"],
        key=key,
        source=source,
        source_sha256=src_sha,
        tokenizer_sha256=tok_sha,
        vocab_size=vocab,
        eos_token_id=eos,
        typecode=typecode,
        val_fraction=val_fraction,
    )
    return {**index, "seconds": round(time.monotonic() - t0, 2)}
