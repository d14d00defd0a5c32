"""Activation-based importance of heads, KV groups, MLP neurons, embedding channels and layers.

One forward-only pass over calibration sequences with forward hooks. Nothing is stored per
token: every hook reduces its activation over the sequence at once (one op) and adds the
per-sample vectors into fp32 accumulators (Minitron P1, section 2; the reference code's hooks
take `abs().mean()` over the sequence, square, and sum over the batch, i.e. batch=L2, seq=mean).

Scores (all float32, keys of the returned dict):
    head          [layers, heads]     L2 over head_dim of the o_proj-input channel scores
    kv_group      [layers, kv_heads]  L2 over all channels of the group's query heads
    mlp           [layers, ffn]       gate_proj output (paper) or down_proj input (reference code)
    hidden        [hidden]            RMSNorm output scores summed over layers
    block_importance [layers]         mean over tokens of 1 - cos(layer input, layer output)
    layer_loss_drop{K} [layers-K+1]   (optional) validation loss with layers i..i+K-1 removed
    base_loss     []                  (optional) validation loss of the unpruned model
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

SCORES_FILE = "scores.safetensors"
SUMMARY_FILE = "scores.json"


class ImportanceConfig(BaseModel):
    """Settings of the importance pass (Minitron P1 defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_samples: int = Field(1024, gt=0, description="calibration sequences")
    seq_len: int = Field(512, gt=1, description="tokens per calibration sequence")
    seed: int = Field(0, description="seed for sampling calibration documents")
    batch_agg: Literal["l2", "mean", "var"] = Field(
        "l2", description="aggregation over samples (P1 Table 11: l2 is best)"
    )
    seq_agg: Literal["mean", "l2", "var"] = Field(
        "mean", description="aggregation over the sequence; mean is of |activation|"
    )
    mlp_activation: Literal["pre", "down_input"] = Field(
        "pre",
        description="MLP neuron activation: 'pre' = gate_proj output x@W1.T (paper), "
        "'down_input' = silu(gate)*up, the input of down_proj (reference code)",
    )
    include_final_norm: bool = Field(
        False, description="also add the final RMSNorm's output to the embedding-channel scores"
    )
    micro_batch: int = Field(8, gt=0, description="sequences per forward call")
    layer_loss_blocks: tuple[int, ...] = Field(
        (),
        description="block sizes K for LM-loss layer ranking on validation data "
        "(drop every contiguous block of K layers); empty = skip",
    )
    val_samples: int = Field(64, gt=0, description="validation sequences for loss-based ranking")


class _Acc:
    """Streaming per-channel accumulator of per-sample vectors: count, sum, sum of squares."""

    def __init__(self, dim: int, device: torch.device, agg: str):
        import torch

        self.agg = agg
        self.n = 0
        self.sq = torch.zeros(dim, dtype=torch.float32, device=device)
        self.s = torch.zeros(dim, dtype=torch.float32, device=device) if agg != "l2" else None

    def add(self, v: torch.Tensor) -> None:
        """Add per-sample vectors `v` [B, dim] (float32)."""
        self.n += v.shape[0]
        if self.agg != "mean":
            self.sq.add_(v.square().sum(0))
        if self.s is not None:
            self.s.add_(v.sum(0))

    def result(self) -> torch.Tensor:
        n = max(self.n, 1)
        if self.agg == "l2":
            return self.sq.sqrt()
        if self.agg == "mean":
            return self.s / n
        mean = self.s / n
        return (self.sq / n - mean.square()).clamp_min(0)


def _seq_reduce(x: torch.Tensor, how: str) -> torch.Tensor:
    """[B, L, D] -> [B, D] float32, one reduction over the sequence.

    `vector_norm(ord=1)` gives sum |x| without allocating an |x| temporary: on CPU a fresh
    [B, L, D] buffer per hook costs more (page faults) than the reduction itself.
    """
    import torch

    dt = None if x.dtype == torch.float32 else torch.float32
    if how == "mean":
        return torch.linalg.vector_norm(x, ord=1, dim=1, dtype=dt).div_(x.shape[1])
    if how == "l2":
        return torch.linalg.vector_norm(x, ord=2, dim=1, dtype=dt)
    return x.float().var(dim=1)


def _layers(model: LlamaForCausalLM):
    return model.model.layers


def compute_importance(
    model: LlamaForCausalLM,
    batches: torch.Tensor,
    cfg: ImportanceConfig | None = None,
    val_batches: torch.Tensor | None = None,
    *,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Score every prunable unit of `model` in one forward-only pass over `batches`.

    Args:
        model: a `LlamaForCausalLM` (any dtype/device; scores are accumulated in fp32).
        batches: int64 token ids [N, L].
        cfg: aggregation options; defaults to `ImportanceConfig()`.
        val_batches: validation token ids [M, L']; when given and `cfg.layer_loss_blocks` is set,
            the LM-loss layer ranking is added (`base_loss`, `layer_loss_drop{K}`).
        progress: show a progress bar on stderr.

    Returns:
        dict of float32 CPU tensors, see the module docstring.
    """
    import torch

    cfg = cfg or ImportanceConfig()
    if batches.ndim != 2 or batches.shape[0] == 0:
        raise InputError(
            f"calibration batches must be [N, L] with N > 0, got {tuple(batches.shape)}"
        )
    c = model.config
    layers = _layers(model)
    n_layers, n_heads = len(layers), c.num_attention_heads
    n_kv = c.num_key_value_heads or n_heads
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    dev = next(model.parameters()).device
    head_acc = [_Acc(n_heads * hd, dev, cfg.batch_agg) for _ in layers]
    mlp_acc = [_Acc(c.intermediate_size, dev, cfg.batch_agg) for _ in layers]
    norm_acc = [_Acc(c.hidden_size, dev, cfg.batch_agg) for _ in range(2 * n_layers + 1)]
    bi_sum = torch.zeros(n_layers, dtype=torch.float64, device=dev)
    bi_count = [0]
    hooks = []

    def out_hook(acc: _Acc):
        def hook(_m, _inp, out):
            acc.add(_seq_reduce(out, cfg.seq_agg))

        return hook

    def in_hook(acc: _Acc):
        def hook(_m, args):
            acc.add(_seq_reduce(args[0], cfg.seq_agg))

        return hook

    def bi_hook(i: int):
        def hook(_m, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            x, y = x.float(), y.float()
            # cos per token; vecdot and last-dim norms are far cheaper than F.cosine_similarity
            cos = torch.linalg.vecdot(x, y) / (
                torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(y, dim=-1)
            ).clamp_min_(1e-8)
            bi_sum[i] += cos.numel() - cos.sum(dtype=torch.float64)
            if i == 0:
                bi_count[0] += cos.numel()

        return hook

    try:
        for i, layer in enumerate(layers):
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(in_hook(head_acc[i])))
            if cfg.mlp_activation == "pre":
                hooks.append(layer.mlp.gate_proj.register_forward_hook(out_hook(mlp_acc[i])))
            else:
                hooks.append(layer.mlp.down_proj.register_forward_pre_hook(in_hook(mlp_acc[i])))
            hooks.append(layer.input_layernorm.register_forward_hook(out_hook(norm_acc[2 * i])))
            hooks.append(
                layer.post_attention_layernorm.register_forward_hook(out_hook(norm_acc[2 * i + 1]))
            )
            hooks.append(layer.register_forward_hook(bi_hook(i), with_kwargs=True))
        if cfg.include_final_norm:
            hooks.append(model.model.norm.register_forward_hook(out_hook(norm_acc[-1])))
        chunks = batches.split(cfg.micro_batch)
        if progress:
            from minitron_deploy.console import track

            chunks = track(chunks, "importance", total=len(chunks))
        with torch.inference_mode():
            for chunk in chunks:
                # The base model only: logits are not needed for activation statistics.
                model.model(input_ids=chunk.to(dev), use_cache=False)
    finally:
        for h in hooks:
            h.remove()

    head_ch = torch.stack([a.result() for a in head_acc]).view(n_layers, n_heads, hd)
    per_group = n_heads // n_kv
    scores = {
        "head": torch.linalg.vector_norm(head_ch, dim=2),
        "kv_group": torch.linalg.vector_norm(head_ch.view(n_layers, n_kv, per_group * hd), dim=2),
        "mlp": torch.stack([a.result() for a in mlp_acc]),
        "hidden": torch.stack([a.result() for a in norm_acc[: 2 * n_layers]]).sum(0),
        "block_importance": (bi_sum / max(bi_count[0], 1)).float(),
    }
    if cfg.include_final_norm:
        scores["hidden"] = scores["hidden"] + norm_acc[-1].result()
    if val_batches is not None and cfg.layer_loss_blocks:
        ranking = layer_loss_ranking(model, val_batches, cfg.layer_loss_blocks, cfg.micro_batch)
        scores.update(ranking)
    return {k: v.detach().float().cpu().contiguous() for k, v in scores.items()}


def without_layers(model: LlamaForCausalLM, drop: list[int] | set[int]):
    """Context manager: `model` with the decoder layers in `drop` removed, restored on exit.

    Forward with `use_cache=False` inside (layer_idx is not renumbered).
    """
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        layers = model.model.layers
        n = model.config.num_hidden_layers
        keep = [m for i, m in enumerate(layers) if i not in set(drop)]
        model.model.layers = torch.nn.ModuleList(keep)
        model.config.num_hidden_layers = len(keep)
        try:
            yield model
        finally:
            model.model.layers = layers
            model.config.num_hidden_layers = n

    return ctx()


def layer_loss_ranking(
    model: LlamaForCausalLM,
    val_batches: torch.Tensor,
    block_sizes: tuple[int, ...] | list[int] = (1,),
    micro_batch: int = 8,
) -> dict[str, torch.Tensor]:
    """Validation LM loss with each contiguous block of K layers removed, for each K.

    Returns:
        {"base_loss": scalar, "layer_loss_drop{K}": [layers - K + 1] (entry i: layers i..i+K-1
        removed)}. Lower loss = the block matters less (P2 picks the lowest).
    """
    import torch

    from minitron_deploy.evaluate import evaluate_loss

    n = len(_layers(model))
    out = {"base_loss": torch.tensor(evaluate_loss(model, val_batches, micro_batch)["loss"])}
    for k in block_sizes:
        if not 1 <= k < n:
            raise InputError(f"layer block size {k} must be between 1 and {n - 1}")
        losses = []
        for start in range(n - k + 1):
            with without_layers(model, set(range(start, start + k))):
                losses.append(evaluate_loss(model, val_batches, micro_batch)["loss"])
        out[f"layer_loss_drop{k}"] = torch.tensor(losses, dtype=torch.float32)
    return out


def summarize(scores: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A small JSON-able summary: shapes, and layers ranked by each layer metric."""
    s: dict[str, Any] = {"shapes": {k: list(v.shape) for k, v in scores.items()}}
    if "block_importance" in scores:
        bi = scores["block_importance"]
        s["block_importance"] = [round(float(x), 6) for x in bi]
        s["layers_by_block_importance"] = bi.argsort().tolist()
    for k, v in scores.items():
        if k.startswith("layer_loss_drop"):
            s[k] = [round(float(x), 6) for x in v]
    if "base_loss" in scores:
        s["base_loss"] = float(scores["base_loss"])
    return s


def save_scores(
    scores: dict[str, torch.Tensor],
    out_dir: str | Path,
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write `scores.safetensors` and `scores.json` (meta + summary) into `out_dir`.

    Args:
        scores: output of `compute_importance`.
        out_dir: destination folder.
        meta: provenance (model hash, data source, config, ...), stored in both files.
        overwrite: replace an existing folder.
        extra: more JSON files to write beside them, {file name: object}.
    """
    import json

    from safetensors.torch import save_file

    from minitron_deploy.fsutil import atomic_dir, atomic_write_json

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in scores.items()}
        save_file(tensors, str(tmp / SCORES_FILE), metadata={"meta": json.dumps(meta, default=str)})
        atomic_write_json(tmp / SUMMARY_FILE, {"meta": meta, "summary": summarize(scores)})
        for name, obj in (extra or {}).items():
            atomic_write_json(tmp / name, obj)
    return Path(out_dir)


def load_scores(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read scores written by `save_scores` (the folder or the .safetensors file).

    Raises:
        InputError: missing or unreadable scores.
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    f = path / SCORES_FILE if path.is_dir() else path
    if not f.is_file():
        raise InputError(
            f"no importance scores at {path}",
            fix="run `minitron-deploy importance --model DIR --data SRC --out SCORES` first",
        )
    try:
        with safe_open(str(f), framework="pt") as sf:
            scores = {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118
            meta = json.loads((sf.metadata() or {}).get("meta", "{}"))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise InputError(f"cannot read scores ({e})", where=str(f), fix="recompute them") from e
    return scores, meta


def check_scores(scores: dict[str, torch.Tensor], config: Any) -> None:
    """Raise InputError unless `scores` have the shapes of a model with `config`."""
    n_kv = config.num_key_value_heads or config.num_attention_heads
    want = {
        "head": (config.num_hidden_layers, config.num_attention_heads),
        "kv_group": (config.num_hidden_layers, n_kv),
        "mlp": (config.num_hidden_layers, config.intermediate_size),
        "hidden": (config.hidden_size,),
        "block_importance": (config.num_hidden_layers,),
    }
    for k, shape in want.items():
        if k in scores and tuple(scores[k].shape) != shape:
            raise InputError(
                f"scores[{k!r}] has shape {tuple(scores[k].shape)} but the model needs {shape}",
                fix="compute the scores on this very model",
            )
        if k in scores and not bool(scores[k].isfinite().all()):
            raise InputError(f"scores[{k!r}] hold non-finite values", fix="recompute them")
