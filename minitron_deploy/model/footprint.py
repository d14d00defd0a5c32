"""The host memory each CPU stage needs when it streams, and the checks `plan`, `run` and
`validate` make with it before anything runs. Torch-free.

Streaming stages (prune, the bf16 exports, package) hold at most the largest stored tensor
twice (a tensor and its slice or cast; for Llama-3 the embedding, 1.05 GB in bf16 at 8B) plus
the interpreter with torch and transformers (`BASE_BYTES`); their read-back holds one decoder
layer in float32 beside it. Layer-sequential forward passes (importance, FP8 calibration) hold
the largest module twice and the calibration activations between layers
(`model.layerwise.memory_estimate`, counted in float32).
Each stage module's `peak` hook picks which of these its node needs. These are the memory to
provision per stage, on the safe side of what the streaming and
layer-sequential paths hold (measured against the real peaks by
`benchmarks/scale_rehearsal.py`: e.g. 8B prune measured 2.1 GB against 3.6 GB here): a machine
with less is refused before anything runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from minitron_deploy.errors import InputError
from minitron_deploy.model.layerwise import memory_estimate
from minitron_deploy.model.shapes import LlamaShape

GB = 1e9
BASE_BYTES = int(1.5 * GB)  # python + torch + transformers + safetensors, measured ~0.5-0.9 GB
HEAD_BLOCK_ROWS = 16384  # `readback.HEAD_ROWS`: lm_head rows per float32 block of the read-back


def host_memory_bytes() -> int:
    """This machine's physical memory (`MINITRON_HOST_MEMORY_GB` overrides it, e.g. to plan for
    a CI runner from a workstation)."""
    env = os.environ.get("MINITRON_HOST_MEMORY_GB")
    if env:
        return int(float(env) * GB)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def largest_tensor_bytes(s: LlamaShape, bytes_per: int = 2) -> int:
    """The largest tensor of the checkpoint: the embedding, or an MLP matrix if larger."""
    return bytes_per * max(s.vocab_size * s.hidden_size, s.intermediate_size * s.hidden_size)


def layer_fp32_bytes(s: LlamaShape) -> int:
    return 4 * s.params_per_layer


def streamed_peak_bytes(s: LlamaShape, *, read_back: bool = True) -> int:
    """Least memory of a streaming stage: two copies of the largest tensor, or during the
    read-back one layer in float32 beside the lm_head and one float32 block of it."""
    big = largest_tensor_bytes(s)
    back = big + layer_fp32_bytes(s) + 4 * HEAD_BLOCK_ROWS * s.hidden_size if read_back else 0
    return BASE_BYTES + max(2 * big, back)


def layer_sequential_peak_bytes(s: LlamaShape, rows: int, seq_len: int, micro_batch: int) -> int:
    """Memory of a forward pass over `rows` x `seq_len` calibration tokens run one decoder
    layer at a time: `model.layerwise.memory_estimate` (the estimate the pass itself uses to
    choose), with weights and held hidden states counted in float32 (the safe side: on a CPU
    without native bf16, or with MINITRON_AUTO_DTYPE=float32, that is what it computes in)."""
    est = memory_estimate(
        s.as_dict(),
        weight_bytes=4,
        rows=rows,
        seq_len=seq_len,
        micro_batch=micro_batch,
        state_bytes=4,
    )
    return int(est["layer_sequential"])


def free_disk_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def memory_problems(needs: dict[str, int | None]) -> list[str]:
    """One line per node whose least memory (`needs`: node id -> bytes, None = not known or
    not on this host's memory) exceeds this machine's."""
    host = host_memory_bytes()
    return [
        f"{node} needs at least {need / GB:.1f} GB of memory even streamed / one "
        f"layer at a time; this machine has {host / GB:.1f} GB"
        for node, need in needs.items()
        if need is not None and need > host
    ]


def check_memory(needs: dict[str, int | None]) -> None:
    """`validate`'s check: every stage fits this machine's memory at least streamed.

    Args:
        needs: node id -> its least host memory (the stage's `peak` hook), None = not counted.

    Raises:
        InputError: naming each stage, what it needs and what the machine has.
    """
    problems = memory_problems(needs)
    if problems:
        raise InputError(
            "this machine cannot run the profile: " + "; ".join(problems),
            fix="use fewer calibration samples, or run on a larger machine "
            "(`minitron-deploy plan` shows every stage's needs)",
        )


def check_resources(
    needs: dict[str, int | None],
    estimates: dict[str, tuple[float | None, float | None]],
    workdir: Path,
) -> None:
    """Refuse a run this machine cannot hold, before any stage starts: a stage whose least
    memory (`needs`: node id -> bytes, streamed or layer by layer) exceeds the host's, or
    artifacts that exceed the free disk of the work folder. Cached stages (estimated at 0 bytes
    and 0 s) are not counted for memory; leave out of `needs` the nodes that run elsewhere.

    Raises:
        InputError: with the numbers: needed, available, and which stage.
    """
    todo = {n: b for n, b in needs.items() if estimates.get(n, (None, None)) != (0.0, 0.0)}
    problems = memory_problems(todo)
    disk = sum(b for _, b in estimates.values() if b)
    free = free_disk_bytes(workdir)
    if disk > free:
        problems.append(
            f"the stages to run write about {disk / GB:.1f} GB, but {workdir} has "
            f"{free / GB:.1f} GB free"
        )
    if problems:
        raise InputError(
            "this machine cannot run the profile: " + "; ".join(problems),
            fix="free disk or use --workdir on a larger disk, fewer calibration samples, or "
            "run on a larger machine (`minitron-deploy plan` shows every stage's needs)",
        )
