"""Reading prepared data (`prepare.py`): memory-mapped shards, windows, checks.

A split is the concatenation of its shards; window w of length L is its tokens
[w * L, (w + 1) * L) (a window may span two shards). `rows` gives the first n windows of a
seeded permutation (importance, evaluation, calibration); `WindowSource` serves windows by
global sample index for training (`distill.batches`). Memory is O(1) in the corpus size:
shards are memory-mapped, the order is a Feistel permutation (`sampler.py`).

On open, every shard's size is checked against the index, and a shard whose size or
modification time differs from `stamps.json` (written at preparation) has its SHA-256
recomputed: a truncated or corrupt shard is
an input error, not silently wrong data.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.data.prepare import FORMAT, INDEX, PROGRESS, STAMPS, tokenizer_digest
from minitron_deploy.data.sampler import Permutation, WindowSampler
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import sha256_file

if TYPE_CHECKING:
    import numpy as np
    import torch


class PreparedData:
    """A prepared folder, checked on open.

    Raises:
        InputError: not a prepared folder, an unfinished one, or a shard that does not match
            its size or digest.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / INDEX).is_file():
            if (self.path / PROGRESS).is_file():
                raise InputError(
                    f"{self.path} is an unfinished preparation",
                    fix="run `minitron-deploy data prepare` again: it resumes",
                )
            raise InputError(
                f"{self.path} is not prepared data (no {INDEX})",
                fix="create it with `minitron-deploy data prepare SRC --tokenizer T --out D`",
            )
        self.index: dict[str, Any] = json.loads((self.path / INDEX).read_text())
        if self.index.get("format") != FORMAT:
            raise InputError(
                f"{self.path} has format {self.index.get('format')!r}, not {FORMAT!r}",
                fix="prepare it again with this version",
            )
        self.check()

    def check(self) -> None:
        """Sizes always; the SHA-256 of every shard whose stamp changed since preparation."""

        try:
            stamps = json.loads((self.path / STAMPS).read_text())
        except (OSError, ValueError):
            stamps = {}
        for split in self.index["splits"].values():
            for shard in split["shards"]:
                f = self.path / shard["file"]
                if not f.is_file():
                    raise InputError(f"shard {shard['file']} is missing", where=str(self.path))
                st = f.stat()
                if st.st_size != shard["bytes"]:
                    raise InputError(
                        f"shard {shard['file']} has {st.st_size} bytes, not {shard['bytes']} "
                        "(truncated?)",
                        where=str(self.path),
                        fix="prepare the data again (data prepare --overwrite)",
                    )
                changed = [st.st_size, st.st_mtime_ns] != stamps.get(shard["file"])
                if changed and sha256_file(f) != shard["sha256"]:
                    raise InputError(
                        f"shard {shard['file']} does not match its digest (corrupt)",
                        where=str(self.path),
                        fix="prepare the data again (data prepare --overwrite)",
                    )

    def verify(self) -> None:
        """Recompute every shard's SHA-256 (`minitron-deploy data verify`)."""

        for split in self.index["splits"].values():
            for shard in split["shards"]:
                if sha256_file(self.path / shard["file"]) != shard["sha256"]:
                    raise InputError(
                        f"shard {shard['file']} does not match its digest (corrupt)",
                        where=str(self.path),
                    )

    def check_tokenizer(self, tokenizer_dir: str | Path) -> None:
        """Refuse data prepared with another tokenizer than the model's."""

        if tokenizer_digest(tokenizer_dir) != self.index["tokenizer_sha256"]:
            raise InputError(
                f"{self.path} was prepared with another tokenizer than {tokenizer_dir}'s",
                fix="prepare the data with this model's tokenizer (--tokenizer MODEL)",
            )

    def split(self, name: str) -> Split:
        """The 'train' or 'validation' split (or 'all': both streams, train first)."""
        names = ("train", "validation") if name == "all" else (name,)
        shards = []
        for n in names:
            if n not in self.index["splits"]:
                raise InputError(f"unknown split {name!r}", fix="use train, validation or all")
            shards += self.index["splits"][n]["shards"]
        return Split(self.path, shards, self.index["dtype"], name)


class Split:
    """One split's token stream, over memory-mapped shards."""

    def __init__(self, root: Path, shards: list[dict[str, Any]], dtype: str, name: str):
        self.root, self.shards, self.dtype, self.name = root, shards, dtype, name
        self.starts = [0]
        for s in shards:
            self.starts.append(self.starts[-1] + s["tokens"])

    @property
    def tokens(self) -> int:
        return self.starts[-1]

    def describe(self) -> dict[str, Any]:
        """Which data this is, by content: the prepared folder's key and the split."""
        index = json.loads((self.root / INDEX).read_text())
        return {"prepared": index["key"], "split": self.name, "tokens": self.tokens}

    @cached_property
    def _maps(self) -> list[np.ndarray]:
        import numpy as np

        return [
            np.memmap(self.root / s["file"], dtype=self.dtype, mode="r", shape=(s["tokens"],))
            for s in self.shards
        ]

    def windows(self, seq_len: int) -> int:
        """How many windows of `seq_len` tokens the split holds."""
        return self.tokens // seq_len

    def window(self, w: int, seq_len: int) -> np.ndarray:
        """Tokens of window `w` (int64 [seq_len])."""
        import bisect

        import numpy as np

        lo, hi = w * seq_len, (w + 1) * seq_len
        if w < 0 or hi > self.tokens:
            raise IndexError(f"window {w} of {seq_len} tokens is outside the split")
        out = np.empty(seq_len, dtype=np.int64)
        pos, i = lo, bisect.bisect_right(self.starts, lo) - 1
        while pos < hi:
            take = min(hi, self.starts[i + 1]) - pos
            a = pos - self.starts[i]
            out[pos - lo : pos - lo + take] = self._maps[i][a : a + take]
            pos += take
            i += 1
        return out

    def rows(self, n: int, seq_len: int, seed: int = 0, *, strict: bool = False) -> torch.Tensor:
        """The first `n` windows of a `seed`-ordered permutation, as int64 [n', seq_len].

        Raises:
            InputError: the split holds no whole window (or fewer than `n` with `strict`).
        """
        import numpy as np
        import torch

        total = self.windows(seq_len)
        if total == 0:
            raise InputError(
                f"the {self.name} split holds {self.tokens} tokens, fewer than one sequence "
                f"of {seq_len}",
                where=str(self.root),
                fix="add text or lower the sequence length",
            )
        if strict and total < n:
            raise InputError(
                f"the {self.name} split gives {total} sequences of {seq_len} tokens, fewer "
                f"than the {n} asked for",
                where=str(self.root),
            )
        perm = Permutation(total, seed)
        idx = [perm(i) for i in range(min(n, total))]
        return torch.from_numpy(np.stack([self.window(w, seq_len) for w in idx]))


class WindowSource:
    """Training windows by global sample index: epoch e = i // n uses permutation (seed, e)."""

    def __init__(self, split: Split, seq_len: int, seed: int):
        self.split, self.seq_len = split, seq_len
        n = split.windows(seq_len)
        if n == 0:
            raise InputError(
                f"the {split.name} split holds fewer than {seq_len} tokens",
                where=str(split.root),
                fix="add training text or lower --seq-len",
            )
        self.n = n
        self.sampler = WindowSampler(n, seed)

    def __len__(self) -> int:
        return self.n

    def get(self, indices: list[int]) -> torch.Tensor:
        """Windows of the global sample indices, int64 [len(indices), seq_len]."""
        import numpy as np
        import torch

        return torch.from_numpy(
            np.stack([self.split.window(self.sampler(i), self.seq_len) for i in indices])
        )
