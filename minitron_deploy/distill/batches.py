"""Deterministic batches: every sample's position is a pure function of (seed, step, rank).

Global sample index i = step * global_batch + (micro * world_size + rank) * micro_batch + j;
epoch e = i // rows uses permutation seed + e. So 1 process with accumulation 2 sees exactly
the micro-batches that 2 processes see, and resuming at step s needs nothing but s.
"""

from __future__ import annotations

import torch

from minitron_deploy.distill.losses import IGNORE_INDEX


class Batches:
    """Rows of packed token sequences served by (step, micro, rank).

    Args:
        rows: int64 [n, seq_len] training sequences.
        global_batch: sequences per optimizer step over all ranks.
        micro_batch: sequences per forward on one rank.
        world_size: number of ranks.
        seed: seed of the per-epoch permutations.
    """

    def __init__(
        self, rows: torch.Tensor, global_batch: int, micro_batch: int, world_size: int, seed: int
    ):
        self.rows, self.gb, self.mb, self.world, self.seed = (
            rows,
            global_batch,
            micro_batch,
            world_size,
            seed,
        )
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def accum(self) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.gb // (self.mb * self.world)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.rows.shape[0], generator=g)
        return self._perms[epoch]

    def get(self, step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) [micro_batch, seq_len]; labels are next tokens, last ignored."""
        n = self.rows.shape[0]
        start = step * self.gb + (micro * self.world + rank) * self.mb
        idx = [self._perm(i // n)[i % n] for i in range(start, start + self.mb)]
        ids = self.rows[torch.stack(idx)]
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, :-1] = ids[:, 1:]
        return ids, labels


def eval_labels(ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels for validation rows (last position ignored)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    return labels
