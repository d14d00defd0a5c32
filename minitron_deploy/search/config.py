"""Settings of the architecture search (a profile's `search` section, `minitron-deploy search`).
Torch-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Budget(_Strict):
    """What the searched student must meet; any subset of the three."""

    min_speedup: float | None = Field(
        None,
        gt=0,
        description="output tokens/s over the source's, measured on the profile's bench engine "
        "and device at every ISL/OSL pair (source at `batch[0]`, candidate at `batch[1]`)",
    )
    max_params: float | None = Field(None, gt=0, description="parameters, e.g. 9.0e7")
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="weights in the bench dtype plus the KV cache at the candidate's batch and "
        "the longest ISL+OSL, in GiB",
    )

    @model_validator(mode="after")
    def _some(self) -> Budget:
        if self.min_speedup is None and self.max_params is None and self.max_memory_gb is None:
            raise ValueError("give at least one of min_speedup, max_params, max_memory_gb")
        return self


class Grid(_Strict):
    """Candidate values per axis; an axis left empty gets `fractions` of the source's size,
    rounded down to `multiple` (hidden, FFN) or to whole heads / layers."""

    hidden_size: list[int] | None = Field(None, description="embedding channels")
    intermediate_size: list[int] | None = Field(None, description="MLP neurons per layer")
    heads_per_group: list[int] | None = Field(
        None, description="query heads per KV group (head_dim is kept)"
    )
    num_attention_heads: list[int] | None = Field(
        None,
        description="total query heads, instead of heads_per_group; each must divide into "
        "every kv_groups value",
    )
    kv_groups: list[int] | None = Field(None, description="KV groups (default: the source's)")
    num_layers: list[int] | None = Field(None, description="decoder layers")
    multiple: int | None = Field(
        None, ge=1, description="automatic hidden and FFN sizes are multiples of this (64)"
    )

    @model_validator(mode="after")
    def _one_heads_axis(self) -> Grid:
        if self.heads_per_group and self.num_attention_heads:
            raise ValueError("give heads_per_group or num_attention_heads, not both")
        return self

    fractions: list[float] = Field(
        [1.0, 0.875, 0.75, 0.625, 0.5],
        min_length=1,
        description="automatic axis values as shares of the source's size",
    )


class SearchConfig(_Strict):
    """Architecture search under a budget: enumerate the grid (and the seed recipe's shapes),
    keep candidates that meet it (measured, or predicted by a per-family cost model fitted to
    measured shapes, then measured), rank by zero-shot validation loss pruned from the
    importance scores, re-rank the best `top_k` of each family after a short distillation by
    validation and held-out loss, keep the winner."""

    budget: Budget
    grid: Grid = Field(default_factory=Grid)
    mode: Literal["width", "depth", "combined"] = Field(
        "combined", description="which axes move: width (not layers), depth (layers only), both"
    )
    batch: tuple[int, int] | None = Field(
        None,
        description="min_speedup: bench batch of the source and of each candidate "
        "(default 32 and 64, the blog's setting)",
    )
    measure: Literal["all", "model"] | None = Field(
        None,
        description="min_speedup: all = measure every candidate on the engine; model (default) "
        "= measure `calibration_shapes` to fit a cost model, predict the rest, measure the "
        "finalists",
    )
    calibration_shapes: int | None = Field(
        None,
        ge=2,
        description="min_speedup: shapes measured to fit the cost model, spread over the "
        "families and the model's terms (default 9); shapes predicted within the model's "
        "leave-one-out error of the budget are measured too",
    )
    max_candidates: int = Field(
        40, ge=1, description="zero-shot evaluations at most (the largest feasible shapes)"
    )
    top_k: int = Field(
        2,
        ge=1,
        description="candidates of each family (depth-only, width-only, mixed) re-ranked after "
        "a short distillation, best by zero-shot loss first",
    )
    steps: int = Field(16, ge=1, description="steps of each short distillation")
    seed_shapes: bool = Field(
        True,
        description="the seed recipe's shapes are always candidates (and re-ranked when they "
        "meet the budget): pure depth to half the layers, pure width to the Minitron targets "
        "(3/4 of hidden, 9/14 of FFN, every head kept)",
    )
    agreement_steps: int | None = Field(
        None,
        ge=1,
        description="also distil the re-ranked candidates this many steps (e.g. 4 x steps), "
        "report the Kendall tau of the two orders, and take the winner from the longer",
    )
    agreement_margin: float | None = Field(
        1.5,
        gt=0,
        description="agreement_steps: a re-ranked candidate whose short-distillation score is "
        "more than this many nats behind the best is not distilled longer (it cannot win: in "
        "the recorded searches the longer runs moved candidates against each other by at most "
        "0.68 nat); null distils every one",
    )
    layer_metric: Literal["block_importance", "block_loss"] = Field(
        "block_loss",
        description="depth choice inside a candidate: the contiguous block whose removal hurts "
        "validation loss least (the prune stage's default, so a searched shape is pruned as a "
        "hand-picked one would be), or the lowest Block Importance layers (from the scores)",
    )
    layer_val_samples: int = Field(
        8, ge=1, description="block_loss: validation sequences that rank the layer blocks"
    )
    layer_val_seq_len: int = Field(
        128, ge=2, description="block_loss: tokens per sequence that ranks the layer blocks"
    )
    val_samples: int = Field(16, ge=1, description="validation sequences for zero-shot loss")
    val_seq_len: int = Field(256, ge=2, description="tokens per validation sequence")
    seed: int = Field(0, description="seed of validation sampling and the short distillations")

    @property
    def speed(self) -> tuple[tuple[int, int], str, int]:
        """(batches, measure, calibration shapes) of a min_speedup budget, defaults filled."""
        return self.batch or (32, 64), self.measure or "model", self.calibration_shapes or 9

    def without_unused(self) -> SearchConfig:
        """Settings that will not be read reset (speed settings when no speed is measured,
        the layer ranking text without block_loss): they must not change keys."""
        out = self
        if self.grid.hidden_size and self.grid.intermediate_size:  # no automatic sizes
            out = out.model_copy(update={"grid": self.grid.model_copy(update={"multiple": None})})
        if not self.agreement_steps:  # no longer distillation: its margin is not read
            out = out.model_copy(update={"agreement_margin": None})
        if self.layer_metric != "block_loss":  # the ranking text is not read
            fields = type(self).model_fields
            out = out.model_copy(
                update={k: fields[k].default for k in ("layer_val_samples", "layer_val_seq_len")}
            )
        if self.budget.min_speedup is not None:
            return out
        keep_batch = self.budget.max_memory_gb is not None  # memory is counted at the batch
        update = {"measure": None, "calibration_shapes": None}
        return out.model_copy(update=update if keep_batch else {**update, "batch": None})
