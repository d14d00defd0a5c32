"""`DataRef`: which text a command reads (source, split, validation fraction), and the prepared
data behind it.

Every stage reads text from prepared data (`prepare.py`): a `--data SRC` given on the command
line is prepared on the fly into the cache (`$MINITRON_CACHE/data/<content key>`, reused while
the files and the tokenizer stay the same), or named directly when SRC is a prepared folder.
"Validation text" means one thing everywhere: the `validation` source when there is one (all
of it), else the validation split of the training source.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.data.prepare import (
    INDEX,
    PROGRESS,
    corpus_key,
    prepare_corpus,
    tokenizer_digest,
)
from minitron_deploy.data.shards import PreparedData
from minitron_deploy.data.text import DEFAULT_VAL_FRACTION, first_document, source_digest
from minitron_deploy.fsutil import HashCache, cache_root

if TYPE_CHECKING:
    import torch

    from minitron_deploy.data.shards import PreparedData
    from minitron_deploy.data.shards import Split as TextSplit

SplitName = Literal["train", "validation", "all"]


class DataRef(BaseModel):
    """A text source (or a prepared folder) and the part of it to read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="path(s) or builtin:<name>, comma-separated; or prepared data")
    split: SplitName = Field("train", description="train, validation or all documents")
    val_fraction: float = Field(
        DEFAULT_VAL_FRACTION, gt=0, lt=1, description="share of documents held out"
    )


def validation_ref(
    training: str, validation: str | None, val_fraction: float = DEFAULT_VAL_FRACTION
) -> DataRef:
    """Held-out text: all of `validation` when given, else the validation split of `training`."""
    if validation:
        return DataRef(source=validation, split="all", val_fraction=val_fraction)
    return DataRef(source=training, split="validation", val_fraction=val_fraction)


def holdout_label(source: str) -> str:
    """The name a held-out domain is reported under: builtin:<name>'s name, else the last
    path component's stem (letters, digits, '-' and '_' kept)."""
    import re

    s = str(source).strip().rstrip("/")
    name = s.split(":", 1)[1] if s.startswith("builtin:") else Path(s).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "holdout"


def is_prepared(source: str) -> bool:
    p = Path(source)
    return p.is_dir() and ((p / INDEX).is_file() or (p / PROGRESS).is_file())


def check_source(ref: DataRef) -> None:
    """Cheap check that `ref` names readable text with at least one document in its split.

    Raises:
        InputError: a missing path, an empty file or folder, or an empty split.
    """

    if is_prepared(ref.source):
        PreparedData(ref.source)
        return
    first_document(ref.source, ref.split, ref.val_fraction)


def prepared(ref: DataRef, tokenizer_dir: str | Path, *, progress: bool = True) -> PreparedData:
    """The prepared data behind `ref` for this tokenizer: the folder itself, or the cache's
    copy of the source (prepared now if the files or the tokenizer changed).

    Raises:
        InputError: prepared data made with another tokenizer, or an unusable source.
    """

    if is_prepared(ref.source):
        data = PreparedData(ref.source)
        data.check_tokenizer(tokenizer_dir)
        return data
    root = cache_root() / "data"
    hashes = HashCache(root / ".file-hashes.json")
    src = source_digest(ref.source, hashes.file)
    hashes.save()
    key = corpus_key(src, tokenizer_digest(tokenizer_dir), ref.val_fraction)
    out = root / key[:24]
    prepare_corpus(ref.source, tokenizer_dir, out, val_fraction=ref.val_fraction, progress=progress)
    return PreparedData(out)


def open_split(ref: DataRef, tokenizer_dir: str | Path, *, progress: bool = True) -> TextSplit:
    """The split `ref` names, from its prepared data."""
    return prepared(ref, tokenizer_dir, progress=progress).split(ref.split)


def as_split(
    data: DataRef | TextSplit, tokenizer_dir: str | Path, *, progress: bool = True
) -> TextSplit:
    """A prepared split from a `DataRef` (prepared now if needed) or a split itself."""
    if isinstance(data, DataRef):
        return open_split(data, tokenizer_dir, progress=progress)
    return data


def describe(data: DataRef | TextSplit | None) -> dict | None:
    """What text a run read, for provenance and resume checks (content, not paths, for
    prepared data)."""
    if data is None:
        return None
    return data.model_dump() if isinstance(data, DataRef) else data.describe()


def load_tokens(
    tokenizer_dir: str | Path, ref: DataRef, *, num_samples: int, seq_len: int, seed: int = 0
) -> torch.Tensor:
    """`num_samples` x `seq_len` token rows of `ref` (fewer if the text is short)."""
    return open_split(ref, tokenizer_dir).rows(num_samples, seq_len, seed)
