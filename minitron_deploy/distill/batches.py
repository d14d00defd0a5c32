"""Deterministic batches: every sample's position is a pure function of (seed, step, rank).

Global sample index i = step * global_batch + (micro * world_size + rank) * micro_batch + j;
the window behind i comes from the source's per-epoch permutation (`data.sampler`). So 1
process with accumulation 2 sees exactly the micro-batches that 2 processes see, resuming at
step s needs nothing but s, and nothing is held in memory but the batch itself.
"""

from __future__ import annotations

from typing import Protocol

import torch

from minitron_deploy.distill.losses import IGNORE_INDEX


class Windows(Protocol):
    """Training windows by global sample index (`data.shards.WindowSource`)."""

    def get(self, indices: list[int]) -> torch.Tensor: ...


class Batches:
    """Micro-batches served by (step, micro, rank).

    Args:
        source: windows by global sample index.
        global_batch: sequences per optimizer step over all ranks.
        micro_batch: sequences per forward on one rank.
        world_size: number of ranks.
    """

    def __init__(self, source: Windows, global_batch: int, micro_batch: int, world_size: int):
        self.source, self.gb, self.mb, self.world = source, global_batch, micro_batch, world_size

    @property
    def accum(self) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.gb // (self.mb * self.world)

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        """Global sample indices of one micro-batch."""
        start = step * self.gb + (micro * self.world + rank) * self.mb
        return list(range(start, start + self.mb))

    def get(self, step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) [micro_batch, seq_len]; labels are next tokens, last ignored."""
        ids = self.source.get(self.indices(step, micro, rank))
        return ids, eval_labels(ids)


def eval_labels(ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels (last position ignored)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    return labels
