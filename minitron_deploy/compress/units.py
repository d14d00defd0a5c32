"""What a pruning keeps and how each tensor is cut: the kept units per layer (by importance or
at random), the per-tensor slicing, and the pruned config. Shared by the in-memory
`slicing.prune_model` and the streaming `stream_prune.prune_files`, so both give the same
tensors.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from minitron_deploy.compress.plan import PrunePlan
from minitron_deploy.compress.scores import check_scores
from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig


def _top(score: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """Sorted indices of the k largest entries of a 1-D score (random k when gen is set)."""
    import torch

    if gen is not None:
        return torch.randperm(score.numel(), generator=gen)[:k].sort().values
    return torch.topk(score.float(), k, sorted=False).indices.sort().values


def _score(scores: dict[str, torch.Tensor] | None, key: str, shape: tuple[int, ...]):
    import torch

    if scores and key in scores:
        return scores[key]
    return torch.zeros(shape)  # an unchanged axis or random selection: any order keeps all


def check_plan_scores(plan: PrunePlan, scores: dict[str, torch.Tensor] | None) -> None:
    """Raise unless `scores` hold what `plan` reads (width keys; depth is checked by the
    layer choice, which may rank layers itself)."""

    need = plan.required_scores(with_depth=False)
    if need and not scores:
        raise InputError(
            f"pruning by importance needs scores ({sorted(need)})", fix="pass --scores SCORES"
        )
    if scores is not None:
        check_scores(scores, plan.source.as_dict(), need)


def choose_units(
    plan: PrunePlan, scores: dict[str, torch.Tensor] | None, drop: list[int] | set[int]
) -> dict[str, Any]:
    """The units every kept layer keeps: {"layers", "hidden", "kv_groups", "heads", "mlp"}
    (sorted index lists), by importance or at random (`plan.config.selection`)."""
    import torch

    src, t, cfg = plan.source, plan.widths, plan.config
    n, nh, nkv = src.num_hidden_layers, src.num_attention_heads, src.num_key_value_heads
    per_src, per_t = nh // nkv, t["num_attention_heads"] // t["num_key_value_heads"]
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.selection == "random" else None
    keep_layers = [i for i in range(n) if i not in set(drop)]
    hid = _top(_score(scores, "hidden", (src.hidden_size,)), t["hidden_size"], gen)
    head_s = _score(scores, "head", (n, nh))
    kv_s = _score(scores, "kv_group", (n, nkv))
    mlp_s = _score(scores, "mlp", (n, src.intermediate_size))
    kept: dict[str, Any] = {"layers": keep_layers, "hidden": hid.tolist()}
    kept.update(kv_groups=[], heads=[], mlp=[])
    for i in keep_layers:
        groups = _top(kv_s[i], t["num_key_value_heads"], gen)
        heads = torch.cat(
            [g * per_src + _top(head_s[i].view(nkv, per_src)[g], per_t, gen) for g in groups]
        )
        kept["kv_groups"].append(groups.tolist())
        kept["heads"].append(heads.tolist())
        kept["mlp"].append(_top(mlp_s[i], t["intermediate_size"], gen).tolist())
    return kept


class Slicer:
    """Maps each source tensor name to its pruned name and value, one tensor at a time.

    Both the in-memory `prune_model` and the streaming `stream_prune.prune_files` slice
    through it, so their results are the same tensors.
    """

    def __init__(self, plan: PrunePlan, kept: dict[str, Any]):
        import torch

        self.plan, self.kept = plan, kept
        self.hid = torch.tensor(kept["hidden"], dtype=torch.long)
        self.new_index = {i: j for j, i in enumerate(kept["layers"])}
        self._ar = torch.arange(plan.source.head_dim)

    def name(self, name: str) -> str | None:
        """The pruned tensor's name, or None when its layer is dropped."""
        if not name.startswith("model.layers."):
            return name
        i = int(name.split(".")[2])
        if i not in self.new_index:
            return None
        return f"model.layers.{self.new_index[i]}." + name.split(".", 3)[3]

    def _layer_index(self, i: int) -> dict[str, dict[str, torch.Tensor]]:
        import torch

        j, hd = self.new_index[i], self.plan.source.head_dim
        heads = torch.tensor(self.kept["heads"][j], dtype=torch.long)
        groups = torch.tensor(self.kept["kv_groups"][j], dtype=torch.long)
        neurons = torch.tensor(self.kept["mlp"][j], dtype=torch.long)
        q = (heads[:, None] * hd + self._ar).flatten()
        kvc = (groups[:, None] * hd + self._ar).flatten()
        hid = self.hid
        rows = {"q_proj": q, "k_proj": kvc, "v_proj": kvc, "o_proj": hid}
        rows.update(gate_proj=neurons, up_proj=neurons, down_proj=hid)
        cols = {"q_proj": hid, "k_proj": hid, "v_proj": hid, "o_proj": q}
        cols.update(gate_proj=hid, up_proj=hid, down_proj=neurons)
        return {"rows": rows, "cols": cols}

    def slice(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """The pruned value of source tensor `name` (a new tensor, never a view of `w`)."""
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return w.index_select(1, self.hid)
        if name == "model.norm.weight":
            return w.index_select(0, self.hid)
        parts = name.split(".")
        i, mod, kind = int(parts[2]), parts[-2], parts[-1]
        idx = self._layer_index(i)
        if mod in idx["rows"] and kind == "weight":
            return w.index_select(0, idx["rows"][mod]).index_select(1, idx["cols"][mod])
        if mod in idx["rows"]:  # bias
            return w.index_select(0, idx["rows"][mod])
        return w.index_select(0, self.hid)  # RMSNorm weights


def pruned_config(config: LlamaConfig, plan: PrunePlan, keep_layers: list[int]) -> LlamaConfig:
    """The config of the pruned model (explicit head_dim; layer_types of the kept layers)."""
    nc = copy.deepcopy(config)
    t = plan.widths
    nc.hidden_size, nc.intermediate_size = t["hidden_size"], t["intermediate_size"]
    nc.num_attention_heads, nc.num_key_value_heads = (
        t["num_attention_heads"],
        t["num_key_value_heads"],
    )
    nc.num_hidden_layers, nc.head_dim = len(keep_layers), plan.source.head_dim
    if getattr(nc, "layer_types", None):
        nc.layer_types = [config.layer_types[i] for i in keep_layers]
    return nc


def pruning_record(plan: PrunePlan, drop: list[int], kept: dict[str, Any]) -> dict[str, Any]:
    cfg = plan.config
    return {
        "selection": cfg.selection,
        "seed": cfg.seed if cfg.selection == "random" else None,
        "layer_metric": cfg.layer_metric if cfg.num_layers is not None else None,
        "dropped_layers": sorted(drop),
        "config": cfg.model_dump(mode="json"),
        "source_shape": plan.source.as_dict(),
        "target_shape": plan.target.as_dict(),
        "params_before": plan.source.num_parameters,
        "params_after": plan.target.num_parameters,
        "kept": kept,
    }
