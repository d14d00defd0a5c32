"""torchrun / FSDP2 plumbing: process group from the environment, sharding, reductions.

Launch with `torchrun` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Without those
variables everything runs in one process and the helpers are no-ops. The student is sharded
with FSDP2 (`fully_shard`, one unit per decoder layer plus the root); the frozen teacher's decoder
layers are sharded too (gathered one layer at a time in its forward), while its embeddings, final
norm and lm_head stay whole on every rank because the fused KD loss reads lm_head's weight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, local rank and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this code created the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the process group that torchrun describes (NCCL on CUDA, else gloo), or none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return Dist(device=device)
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, device, owns)


def teardown(d: Dist) -> None:
    """Leave the process group if `setup` created it (a caller's own group is left alone)."""
    if d.enabled and d.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def shard(wrapper: torch.nn.Module, layers: torch.nn.ModuleList, d: Dist, bf16: bool) -> None:
    """Apply FSDP2 to `wrapper`: one unit per decoder layer, then the root (embeddings, lm_head).

    With `bf16`, parameters are gathered in bf16 for compute while the sharded master weights,
    gradients reduction and optimizer state stay fp32.
    """
    if not d.enabled:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
    )
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(wrapper, mp_policy=mp)


def shard_frozen(
    body: torch.nn.Module, layers: torch.nn.ModuleList, keep: list[torch.nn.Parameter], d: Dist
) -> None:
    """Shard a frozen model's decoder layers over the ranks (FSDP2, no optimizer state).

    Each layer's weights are all-gathered for its forward and freed after it, so a rank holds
    1/world of the layers plus a gathered layer or two instead of the whole model. `body` (the
    module whose forward is called) becomes the FSDP root: a root keeps its weights gathered
    after forward, so without it every layer would be a root and nothing would be freed.
    `keep` (e.g. embeddings tied to lm_head) stays whole on every rank.
    """
    if not d.enabled:
        return
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(body, ignored_params=set(keep))


def all_reduce_mean(values: list[float], d: Dist) -> list[float]:
    """Average a few scalars over ranks (for logging losses measured on each rank's shard)."""
    if not d.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return (t / d.world_size).tolist()


def any_rank(flag: bool, d: Dist) -> bool:
    """True if `flag` is true on any rank (e.g. a non-finite loss somewhere)."""
    if not d.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    """Wait for every rank."""
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()
