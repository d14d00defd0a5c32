"""A deterministic, O(1)-memory order over the windows of a prepared corpus.

`Permutation(n, seed)` is a bijection of [0, n) built from a Feistel network on the smallest
even number of bits covering n, walked in cycles until it lands inside [0, n): no index array,
so a 94B-token corpus (11M windows of 8192 tokens) costs nothing to shuffle. `WindowSampler`
maps a global sample index to a window: epoch e = i // n uses the permutation seeded by
(seed, e), so the order is a pure function of (seed, step, rank) at a global batch size, the
same on 1 or N ranks, and resuming at step s needs nothing but s.
"""

from __future__ import annotations

import hashlib

_ROUNDS = 4


def _round_fn(key: int, rnd: int, x: int, bits: int) -> int:
    h = hashlib.blake2b(f"{key}:{rnd}:{x}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << bits) - 1)


class Permutation:
    """A pseudo-random bijection of [0, n) determined by `seed`.

    Args:
        n: domain size (> 0).
        seed: any integer.
    """

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError(f"permutation of an empty range (n={n})")
        self.n, self.seed = n, seed
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for r in range(_ROUNDS):
            left, right = right, left ^ _round_fn(self.seed, r, right, self.half)
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"{i} outside [0, {self.n})")
        x = self._feistel(i)
        while x >= self.n:  # cycle walking: stays a bijection of [0, n)
            x = self._feistel(x)
        return x


class WindowSampler:
    """Global sample index -> window index, a fresh permutation per epoch over `n` windows."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, Permutation] = {}

    def __call__(self, i: int) -> int:
        epoch, pos = divmod(i, self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 4:
                self._perms.clear()
            perm = self._perms[epoch] = Permutation(self.n, self.seed * 1_000_003 + epoch)
        return perm(pos)
