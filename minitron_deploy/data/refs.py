"""`DataRef`: which text a stage reads (source, split, validation fraction), defined once.

Every stage that reads text gets a `DataRef` instead of a bare source string, so "validation
data" means one thing everywhere: the `validation` source of the profile when it has one (all
of it), else the validation split of the training source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.data.text import DEFAULT_VAL_FRACTION

if TYPE_CHECKING:
    import torch

Split = Literal["train", "validation", "all"]


class DataRef(BaseModel):
    """A text source and the part of it to read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="path(s) or builtin:<name>, comma-separated")
    split: Split = Field("train", description="train, validation or all documents")
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


def check_source(ref: DataRef) -> None:
    """Cheap check that `ref` names readable text with at least one document in its split.

    Raises:
        InputError: a missing path, an empty file or folder, or an empty split.
    """
    from minitron_deploy.data.text import first_document

    first_document(ref.source, ref.split, ref.val_fraction)


def load_tokens(
    tokenizer, ref: DataRef, *, num_samples: int, seq_len: int, seed: int = 0
) -> torch.Tensor:
    """`num_samples` x `seq_len` packed token rows from `ref` (fewer if the text is short)."""
    from minitron_deploy.data.text import token_sequences

    return token_sequences(
        tokenizer,
        ref.source,
        split=ref.split,
        num_samples=num_samples,
        seq_len=seq_len,
        seed=seed,
        val_fraction=ref.val_fraction,
    )
