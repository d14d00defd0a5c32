"""Homogeneous width and depth pruning of a Hugging Face Llama model.

Width: every layer keeps the same numbers of embedding channels, query heads, KV groups and MLP
neurons (TensorRT-LLM cannot load per-layer sizes), chosen per layer by importance (or at
random, for baselines). head_dim never changes; query heads are pruned equally inside every KV
group, so query head i still reads KV head i // (heads / kv_heads). Depth: an explicit list of
layers, or `num_layers` picked by a layer metric (`layers.py`; default: the contiguous block
whose removal hurts validation loss least, Minitron P2).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.layers import (
    DEPTH_METRICS,
    choose_drop_layers,
    depth_score_key,
    drop_count,
)
from minitron_deploy.compress.scores import SCORES_FILE, check_scores, load_scores
from minitron_deploy.compress.targets import resolve_targets
from minitron_deploy.data.refs import as_split, describe
from minitron_deploy.errors import InputError
from minitron_deploy.evaluation.harness import resolve_tasks
from minitron_deploy.fsutil import (
    atomic_dir,
    atomic_write_json,
    check_output_dir,
    sha256_file,
    sha256_tree,
)
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import (
    PROVENANCE,
    load_llama,
    load_tokenizer,
    provenance,
    read_config,
    resolve_dtype,
    write_llama,
)
from minitron_deploy.model.shapes import LlamaShape

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.data.shards import Split

PRUNING_FILE = "pruning.json"
# Score key each width axis reads when it shrinks.
AXIS_SCORES = {
    "hidden_size": "hidden",
    "intermediate_size": "mlp",
    "num_attention_heads": "head",
    "num_key_value_heads": "kv_group",
}


def _autocast():
    """bf16 autocast where the CPU computes bf16 natively (`hardware.compute_dtype`)."""
    import contextlib

    import torch

    dtype = compute_dtype("auto")
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def required_scores(source: Any, cfg: PruneConfig, *, with_depth: bool = True) -> set[str]:
    """The score keys pruning `source` by `cfg` reads (loss rankings only if `with_depth`)."""

    if cfg.selection == "random":
        return set()
    src = LlamaShape.from_config(source)
    t = resolve_targets(src, cfg)
    need = {key for f, key in AXIS_SCORES.items() if t[f] != getattr(src, f)}
    if t["num_attention_heads"] != src.num_attention_heads:
        need.add("kv_group")  # groups are ranked before the heads inside them
    depth = depth_score_key(cfg, src.num_hidden_layers)
    if depth is not None and (with_depth or DEPTH_METRICS[cfg.layer_metric].reads == "scores"):
        need.add(depth)
    return need


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


def prune_model(
    model: LlamaForCausalLM,
    scores: dict[str, torch.Tensor] | None,
    cfg: PruneConfig,
    val_batches: torch.Tensor | None = None,
    *,
    micro_batch: int = 8,
    progress: bool = False,
    tokenizer: Any = None,
) -> tuple[LlamaForCausalLM, dict[str, Any]]:
    """A new, smaller `LlamaForCausalLM` sliced from `model` (which is left unchanged).

    Args:
        model: the source model.
        scores: output of `importance.compute_importance` (or `load_scores`); may be None when
            nothing is chosen by importance (explicit drop_layers, unchanged widths, random).
        cfg: targets and selection.
        val_batches: validation token ids, for loss-based layer metrics without stored losses.
        micro_batch: sequences per forward call of that ranking.
        progress: show a progress bar while ranking layers.
        tokenizer: the model's tokenizer (layer_metric task_accuracy runs a task).

    Returns:
        (pruned model in the source dtype, record with kept indices per axis and shapes).
    """
    import torch
    from transformers import LlamaForCausalLM

    c = model.config
    t = resolve_targets(c, cfg)
    need = required_scores(c, cfg, with_depth=False)
    if need and not scores:
        raise InputError(
            f"pruning by importance needs scores ({sorted(need)})", fix="pass --scores SCORES"
        )
    if scores is not None:
        check_scores(scores, c, need)
    src = LlamaShape.from_config(c)
    n, nh, nkv, hd = (
        src.num_hidden_layers,
        src.num_attention_heads,
        src.num_key_value_heads,
        src.head_dim,
    )
    per_src, per_t = nh // nkv, t["num_attention_heads"] // t["num_key_value_heads"]
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.selection == "random" else None

    drop = set(
        choose_drop_layers(
            model,
            scores,
            cfg,
            val_batches,
            micro_batch=micro_batch,
            progress=progress,
            tokenizer=tokenizer,
        )
    )
    keep_layers = [i for i in range(n) if i not in drop]
    hid = _top(_score(scores, "hidden", (src.hidden_size,)), t["hidden_size"], gen)
    head_s = _score(scores, "head", (n, nh))
    kv_s = _score(scores, "kv_group", (n, nkv))
    mlp_s = _score(scores, "mlp", (n, src.intermediate_size))
    kept: dict[str, Any] = {"layers": keep_layers, "hidden": hid.tolist()}
    kept.update(kv_groups=[], heads=[], mlp=[])
    sd = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    ar = torch.arange(hd)
    for j, i in enumerate(keep_layers):
        groups = _top(kv_s[i], t["num_key_value_heads"], gen)
        heads = torch.cat(
            [g * per_src + _top(head_s[i].view(nkv, per_src)[g], per_t, gen) for g in groups]
        )
        neurons = _top(mlp_s[i], t["intermediate_size"], gen)
        kept["kv_groups"].append(groups.tolist())
        kept["heads"].append(heads.tolist())
        kept["mlp"].append(neurons.tolist())
        q = (heads[:, None] * hd + ar).flatten()
        kvc = (groups[:, None] * hd + ar).flatten()
        rows = {"q_proj": q, "k_proj": kvc, "v_proj": kvc, "o_proj": hid}
        rows.update(gate_proj=neurons, up_proj=neurons, down_proj=hid)
        cols = {"q_proj": hid, "k_proj": hid, "v_proj": hid, "o_proj": q}
        cols.update(gate_proj=hid, up_proj=hid, down_proj=neurons)
        pre, npre = f"model.layers.{i}.", f"model.layers.{j}."
        for name, w in sd.items():
            if not name.startswith(pre):
                continue
            rest = name[len(pre) :]
            mod, kind = rest.split(".")[-2], rest.split(".")[-1]
            if mod in rows and kind == "weight":
                w = w.index_select(0, rows[mod]).index_select(1, cols[mod])
            elif mod in rows:  # bias
                w = w.index_select(0, rows[mod])
            else:  # RMSNorm weights
                w = w.index_select(0, hid)
            new[npre + rest] = w.clone()
    new["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].index_select(1, hid).clone()
    new["model.norm.weight"] = sd["model.norm.weight"].index_select(0, hid).clone()
    tied = bool(getattr(c, "tie_word_embeddings", False))
    new["lm_head.weight"] = (
        new["model.embed_tokens.weight"]
        if tied
        else sd["lm_head.weight"].index_select(1, hid).clone()
    )

    nc = copy.deepcopy(c)
    nc.hidden_size, nc.intermediate_size = t["hidden_size"], t["intermediate_size"]
    nc.num_attention_heads, nc.num_key_value_heads = (
        t["num_attention_heads"],
        t["num_key_value_heads"],
    )
    nc.num_hidden_layers, nc.head_dim = len(keep_layers), hd
    if getattr(nc, "layer_types", None):
        nc.layer_types = [c.layer_types[i] for i in keep_layers]
    dtype = next(model.parameters()).dtype
    out = LlamaForCausalLM(nc).to(dtype)
    missing, unexpected = out.load_state_dict(new, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:  # a bug, not a user error
        raise RuntimeError(
            f"pruned state dict mismatch: missing {missing}, unexpected {unexpected}"
        )
    if tied:
        out.tie_weights()
    out.eval()
    dst = LlamaShape.from_config(nc)
    record = {
        "selection": cfg.selection,
        "seed": cfg.seed if cfg.selection == "random" else None,
        "layer_metric": cfg.layer_metric if cfg.num_layers is not None else None,
        "dropped_layers": sorted(drop),
        "config": cfg.model_dump(mode="json"),
        "source_shape": src.as_dict(),
        "target_shape": dst.as_dict(),
        "params_before": src.num_parameters,
        "params_after": dst.num_parameters,
        "kept": kept,
    }
    return out, record


def prune_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    cfg: PruneConfig,
    scores_path: str | Path | None = None,
    val_data: DataRef | Split | None = None,
    *,
    micro_batch: int = 8,
    overwrite: bool = False,
    command: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Prune a checkpoint folder and write the result (atomically) with `pruning.json`.

    Everything that can be checked is checked before any model loads, so bad input fails in a
    second and leaves no output folder behind.

    Args:
        model_dir: source HF Llama checkpoint.
        out_dir: destination folder (must not exist unless `overwrite`).
        cfg: targets and selection.
        scores_path: folder or file written by `scores.save_scores`.
        val_data: validation text for loss-based layer choice (`cfg.ranking_rows`): a
            prepared split, or a `DataRef` prepared only if layers are ranked here; not needed
            when the scores hold the loss ranking.
        micro_batch: sequences per forward call.
        overwrite: replace an existing `out_dir`.
        command: the command line recorded in the provenance.
        progress: show progress bars while ranking layers.

    Returns:
        The pruning record (also written to `out_dir/pruning.json`).
    """

    raw = read_config(model_dir)
    check_output_dir(out_dir, overwrite=overwrite)
    resolve_targets(raw, cfg)
    need = required_scores(raw, cfg, with_depth=val_data is None)
    scores, scores_meta, scores_hash = None, None, None
    if scores_path is not None:
        scores, scores_meta = load_scores(scores_path)
        check_scores(scores, raw, need)
        p = Path(scores_path)
        scores_hash = sha256_file(p / SCORES_FILE if p.is_dir() else p)
    elif need:
        raise InputError(
            f"pruning by importance needs importance scores ({sorted(need)})",
            fix="pass --scores SCORES (from `minitron-deploy importance`), or --random",
        )
    # Loss rankings stored with the scores are reused; otherwise layers are ranked here. With
    # nothing to drop (num_layers = the source's) there is nothing to rank.
    depth_key = depth_score_key(cfg, raw["num_hidden_layers"])
    rank_here = (
        depth_key is not None and cfg.ranks_layers_by_loss and not (scores and depth_key in scores)
    )
    if rank_here and val_data is None:
        raise InputError(
            f"layer_metric {cfg.layer_metric} needs validation text or scores with {depth_key}",
            fix="pass --data SRC, or scores from `importance --layer-loss-blocks`",
        )
    val_split = as_split(val_data, model_dir) if rank_here else None
    model = load_llama(model_dir, dtype="float32")
    val = None
    if val_split is not None:
        val = val_split.rows(cfg.ranking_rows[0], cfg.ranking_rows[1], seed=cfg.seed)
    tok = None
    reads = DEPTH_METRICS[cfg.layer_metric].reads
    if reads == "task" and drop_count(cfg, raw["num_hidden_layers"]):
        resolve_tasks([cfg.task_ranking[0]])  # an unknown task fails before any work
        tok = load_tokenizer(model_dir)
    with _autocast():  # layer ranking in the device's native dtype; slicing is exact
        pruned, record = prune_model(
            model, scores, cfg, val, micro_batch=micro_batch, progress=progress, tokenizer=tok
        )
    record = {
        "source": {"path": str(model_dir), "sha256": sha256_tree(model_dir, exclude=(PROVENANCE,))},
        "scores": {"path": str(scores_path), "sha256": scores_hash, "meta": scores_meta}
        if scores_path
        else None,
        "val_data": describe(val_split),
        **record,
    }
    src_dtype = resolve_dtype("auto", raw)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        prov = provenance(
            model_dir,
            command,
            extra={"pruning": {k: record[k] for k in ("target_shape", "dropped_layers")}},
        )
        write_llama(pruned, tmp, source=model_dir, dtype=src_dtype, record=prov)
        atomic_write_json(Path(tmp) / PRUNING_FILE, record)
    return record
