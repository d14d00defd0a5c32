"""Text data: sources, a deterministic document-level train/validation split, token packing.

A data source is a path (a text file, a folder of text-like files, or JSONL with a `text` field)
or `builtin:<name>`. Several sources can be joined with commas. Files are cut into documents of
at most `DOC_CHARS` characters at blank lines; each document has a stable id
(`<file>#<k>`) and goes to validation when the hash of its id falls below the validation
fraction, so the split never depends on the seed and the two splits never share text.
"""

from __future__ import annotations

import hashlib
import json
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    import torch

TEXT_SUFFIXES = {
    ".txt",
    ".md",
    ".rst",
    ".py",
    ".json",
    ".jsonl",
    ".c",
    ".h",
    ".cpp",
    ".rs",
    ".go",
    ".java",
    ".js",
    ".ts",
    ".html",
    ".tex",
    ".csv",
    ".yaml",
    ".yml",
    ".toml",
}
DOC_CHARS = 16_000
DEFAULT_VAL_FRACTION = 0.05
BUILTIN_CORPORA = {
    "python-stdlib": "the running Python's standard library sources (*.py) and pydoc topics",
    "pydoc-topics": "the pydoc help topics of the running Python (prose, ~0.5 MB)",
}


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def _segments(text: str, limit: int = DOC_CHARS) -> list[str]:
    """Cut text at blank lines into pieces of at most ~limit characters."""
    if len(text) <= limit:
        return [text] if text.strip() else []
    out, cur, size = [], [], 0
    for para in text.split("\n\n"):
        if size + len(para) > limit and cur:
            out.append("\n\n".join(cur))
            cur, size = [], 0
        while len(para) > limit:  # a single huge paragraph: hard cut
            out.append(para[:limit])
            para = para[limit:]
        cur.append(para)
        size += len(para) + 2
    if cur:
        out.append("\n\n".join(cur))
    return [s for s in out if s.strip()]


def _file_documents(path: Path, rel: str, *, single: bool = False) -> Iterator[Document]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read data file: {e}", where=str(path)) from e
    if single and not raw.strip():
        raise InputError(f"data file {path} is empty", fix="put text in it, or pass another --data")
    if b"\0" in raw[:4096]:
        if single:
            raise InputError(
                f"data file {path} is binary, not text", fix="pass a text, JSONL or folder source"
            )
        return  # binary file in a folder: skip
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"line {n} is not valid JSON: {e.msg}",
                    where=str(path),
                    fix="each line must be a JSON object with a 'text' field",
                ) from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InputError(f"line {n} has no string field 'text'", where=str(path))
            for k, seg in enumerate(_segments(obj["text"])):
                yield Document(f"{rel}:{n}#{k}", seg)
        return
    for k, seg in enumerate(_segments(text)):
        yield Document(f"{rel}#{k}", seg)


def _builtin_documents(name: str) -> Iterator[Document]:
    if name not in BUILTIN_CORPORA:
        raise InputError(
            f"unknown built-in corpus {name!r}",
            fix=f"use one of {sorted('builtin:' + k for k in BUILTIN_CORPORA)}",
        )
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        for k, seg in enumerate(_segments(pydoc_data.topics.topics[key])):
            yield Document(f"pydoc:{key}#{k}", seg)
    if name == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root)
            if rel.parts and rel.parts[0] in ("site-packages", "dist-packages"):
                continue
            yield from _file_documents(f, f"stdlib:{rel.as_posix()}")


def iter_documents(source: str) -> Iterator[Document]:
    """All documents of a source (comma-separated sources are concatenated), in a fixed order."""
    parts = [s.strip() for s in str(source).split(",") if s.strip()]
    if not parts:
        raise InputError("empty data source", fix="pass a path or builtin:python-stdlib")
    for part in parts:
        if part.startswith("builtin:"):
            yield from _builtin_documents(part.split(":", 1)[1])
            continue
        p = Path(part)
        if p.is_file():
            yield from _file_documents(p, p.name, single=True)
        elif p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix in TEXT_SUFFIXES
                and not any(x.startswith(".") for x in f.relative_to(p).parts)
            )
            if not files:
                raise InputError(
                    f"folder {p} holds no text-like files",
                    fix=f"add files ending in one of {sorted(TEXT_SUFFIXES)}",
                )
            for f in files:
                yield from _file_documents(f, f.relative_to(p).as_posix())
        else:
            raise InputError(
                f"data source {part!r} is neither an existing path nor builtin:<name>",
                fix=f"built-in corpora: {sorted(BUILTIN_CORPORA)}",
            )


def split_of(doc_id: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    """'validation' or 'train', from a hash of the document id alone (seed-independent)."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    return "validation" if h < val_fraction else "train"


def _split_documents(source: str, split: str, val_fraction: float) -> Iterator[Document]:
    if split not in ("train", "validation", "all"):
        raise InputError(f"unknown split {split!r}", fix="use train, validation or all")
    for d in iter_documents(source):
        if split == "all" or split_of(d.id, val_fraction) == split:
            yield d


def _no_documents(source: str, split: str) -> InputError:
    return InputError(
        f"data source {source!r} has no {split} documents"
        + (" (every document went to the other split)" if split != "all" else ""),
        fix="add more text, or pass the held-out text as its own source",
    )


def first_document(
    source: str, split: str = "train", val_fraction: float = DEFAULT_VAL_FRACTION
) -> Document:
    """The first document of one split; stops reading there (a cheap existence check)."""
    for d in _split_documents(source, split, val_fraction):
        return d
    raise _no_documents(source, split)


def documents(
    source: str, split: str = "train", val_fraction: float = DEFAULT_VAL_FRACTION
) -> list[Document]:
    """The documents of one split. `split` is 'train', 'validation' or 'all'."""
    docs = list(_split_documents(source, split, val_fraction))
    if not docs:
        raise _no_documents(source, split)
    return docs


def token_sequences(
    tokenizer,
    source: str,
    *,
    split: str = "train",
    num_samples: int = 1024,
    seq_len: int = 512,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    strict: bool = False,
) -> torch.Tensor:
    """Pack documents of one split into `num_samples` sequences of `seq_len` tokens.

    Documents are shuffled with `seed`, tokenized one by one (only as many as needed), joined
    with the EOS token and cut into fixed-length rows. The same arguments always give the same
    tensor.

    Args:
        strict: raise if the split holds fewer tokens than asked for (else return fewer rows).

    Returns:
        int64 tensor [n, seq_len] with n <= num_samples.
    """
    import torch

    if num_samples <= 0 or seq_len <= 1:
        raise InputError(f"num_samples={num_samples} and seq_len={seq_len} must be > 0 and > 1")
    docs = documents(source, split, val_fraction)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    need = num_samples * seq_len
    eos = tokenizer.eos_token_id
    buf: list[int] = []
    for i in order:
        ids = tokenizer(docs[i].text, add_special_tokens=False)["input_ids"]
        buf.extend(ids)
        if eos is not None:
            buf.append(eos)
        if len(buf) >= need:
            break
    rows = len(buf) // seq_len
    if rows == 0:
        raise InputError(
            f"the {split} split of {source!r} has only {len(buf)} tokens, fewer "
            f"than one sequence of {seq_len}",
            fix="add text or lower --seq-len",
        )
    if rows < num_samples and strict:
        raise InputError(
            f"the {split} split of {source!r} gives {rows} sequences of {seq_len} "
            f"tokens, fewer than the {num_samples} asked for",
            fix="add text, or lower --num-samples / --seq-len",
        )
    rows = min(rows, num_samples)
    return torch.tensor(buf[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
