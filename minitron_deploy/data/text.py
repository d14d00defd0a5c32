"""Text data: sources, their documents and content digest, a document-level train/validation
split. Tokens come from prepared data (`prepare.py`).

A data source is a path (a text file, a folder of text-like files, JSONL with a `text` field,
or a Parquet / Arrow file with a `text` column, read in record batches with pyarrow) or
`builtin:<name>`. Several sources can be joined with commas, and a source can carry a weight,
`SRC*N` (N a whole number): its training documents count N times, so a small source takes a
larger share of the training windows in a mix (e.g. `builtin:mixed,notes.jsonl*8`); its
validation documents count once. Files are cut into documents of
at most `DOC_CHARS` characters at blank lines; each document has a stable id
(`<file>#<k>`) and goes to validation when the hash of its id falls below the validation
fraction, so the split never depends on the seed and the two splits never share text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from minitron_deploy.data.corpora import CORPORA, corpus_documents, corpus_files
from minitron_deploy.errors import DependencyError, InputError
from minitron_deploy.fsutil import sha256_file, sha256_json

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
TABLE_SUFFIXES = {".parquet", ".arrow", ".feather"}
DOC_CHARS = 16_000
DEFAULT_VAL_FRACTION = 0.05


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    repeat: int = 1  # times it counts in the training split (a weighted source's `*N`)


_WEIGHT = re.compile(r"^(.*)\*(\d+)$")


def source_weight(part: str) -> tuple[str, int]:
    """`SRC*N` -> (SRC, N); a part without a weight -> (part, 1).

    Raises:
        InputError: a weight below 1.
    """
    m = _WEIGHT.match(part)
    if not m:
        return part, 1
    base, n = m.group(1).strip(), int(m.group(2))
    if n < 1 or not base:
        raise InputError(
            f"data source weight in {part!r} must name a source and be a whole number >= 1",
            fix="write SRC*N, e.g. builtin:mixed,notes.jsonl*4 (N: times its documents count)",
        )
    return base, n


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


def _table_documents(path: Path, rel: str) -> Iterator[Document]:
    """Rows of a Parquet or Arrow IPC file's `text` column, a record batch at a time."""
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DependencyError(
            f"reading {path.suffix} data needs pyarrow ({e})",
            fix="pip install 'pyarrow<26'",
        ) from e
    try:
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(str(path))
            if "text" not in pf.schema_arrow.names:
                raise InputError(
                    f"no 'text' column (columns: {pf.schema_arrow.names})", where=str(path)
                )
            batches = pf.iter_batches(columns=["text"], batch_size=1024)
        else:
            reader = ipc.open_file(str(path))
            if "text" not in reader.schema.names:
                raise InputError(
                    f"no 'text' column (columns: {reader.schema.names})", where=str(path)
                )
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        row = 0
        for batch in batches:
            for text in batch.column("text").to_pylist():
                row += 1
                if isinstance(text, str):
                    for k, seg in enumerate(_segments(text)):
                        yield Document(f"{rel}:{row}#{k}", seg)
    except (OSError, pa.ArrowException) as e:  # not a Parquet / Arrow file, or a damaged one
        raise InputError(f"cannot read {path.suffix} file: {e}", where=str(path)) from e


def _file_documents(path: Path, rel: str, *, single: bool = False) -> Iterator[Document]:
    if path.suffix in TABLE_SUFFIXES:
        yield from _table_documents(path, rel)
        return
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
    for doc_id, text in corpus_documents(name, _segments):
        yield Document(doc_id, text)


def source_parts(source: str) -> list[tuple[str, list[tuple[Path, str]]]]:
    """Each part of a (comma-separated) source with its files as (path, id prefix);
    a built-in corpus (`corpora.py`) lists the files it reads.

    Raises:
        InputError: an empty source, a missing path, or a folder without text-like files.
    """
    parts = [s.strip() for s in str(source).split(",") if s.strip()]
    if not parts:
        raise InputError("empty data source", fix="pass a path or builtin:python-stdlib")
    out = []
    for spec in parts:
        part, _ = source_weight(spec)
        if part.startswith("builtin:"):
            name = part.split(":", 1)[1]
            if name not in CORPORA:
                raise InputError(
                    f"unknown built-in corpus {name!r}",
                    fix=f"use one of {sorted('builtin:' + k for k in CORPORA)}",
                )
            out.append((spec, [fr for _, files in corpus_files(name) for fr in files]))
            continue
        p = Path(part)
        if p.is_file():
            out.append((spec, [(p, p.name)]))
        elif p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and (f.suffix in TEXT_SUFFIXES or f.suffix in TABLE_SUFFIXES)
                and not any(x.startswith(".") for x in f.relative_to(p).parts)
            )
            if not files:
                raise InputError(
                    f"folder {p} holds no text-like files",
                    fix=f"add files ending in one of {sorted(TEXT_SUFFIXES | TABLE_SUFFIXES)}",
                )
            out.append((spec, [(f, f.relative_to(p).as_posix()) for f in files]))
        else:
            raise InputError(
                f"data source {part!r} is neither an existing path nor builtin:<name>",
                fix="built-in corpora: `minitron-deploy data corpora` lists them",
            )
    return out


def iter_documents(source: str) -> Iterator[Document]:
    """All documents of a source (comma-separated sources are concatenated), in a fixed order;
    a weighted part's documents carry its weight as `repeat` (each is yielded once)."""
    for spec, files in source_parts(source):
        part, n = source_weight(spec)
        if part.startswith("builtin:"):
            docs = _builtin_documents(part.split(":", 1)[1])
        else:
            single = len(files) == 1 and Path(part).is_file()
            docs = (d for f, rel in files for d in _file_documents(f, rel, single=single))
        yield from (docs if n == 1 else (Document(d.id, d.text, n) for d in docs))


def source_bytes(source: str) -> int | None:
    """Bytes of text a source reads (file sizes; no file is opened), or None if unusable."""
    try:
        parts = source_parts(source)
    except InputError:
        return None
    return sum(f.stat().st_size * source_weight(spec)[1] for spec, files in parts for f, _ in files)


def source_digest(source: str, file_hash=None) -> str:
    """SHA-256 of what a source reads: each file's content (not its path) in reading order,
    (a built-in corpus's files too, with its name: the same files can be read differently).

    Args:
        file_hash: `path -> sha256` (e.g. a stat-cached hasher); default hashes every file.
    """

    file_hash = file_hash or sha256_file
    items = []
    for spec, files in source_parts(source):
        entry = [[rel, file_hash(f)] for f, rel in files]
        weighted = source_weight(spec)[1] > 1  # the weight changes the tokens, so the key
        items.append([spec, entry] if spec.startswith("builtin:") or weighted else entry)
    return sha256_json(items)


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
