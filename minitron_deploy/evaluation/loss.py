"""Validation loss and perplexity of a causal LM on packed token sequences."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from minitron_deploy.console import track
from minitron_deploy.errors import InputError
from minitron_deploy.stats import bootstrap_mean, paired_bootstrap

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

# Tokens per lm_head + cross-entropy chunk: bounds the [tokens, vocab] float32 logits in memory.
LOGIT_CHUNK_TOKENS = 2048


def evaluate_loss(
    model: LlamaForCausalLM,
    batches: torch.Tensor,
    micro_batch: int = 8,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean next-token cross-entropy over every position of `batches`.

    The base model runs per micro-batch; lm_head and the loss run in chunks of
    `LOGIT_CHUNK_TOKENS` tokens so full-vocabulary logits never exist for a whole batch.

    Args:
        model: a causal LM with `.model` (decoder) and `.lm_head`.
        batches: int64 token ids [N, L], L >= 2.
        micro_batch: sequences per forward call.
        progress: show a progress bar on stderr.

    Returns:
        {"loss": mean loss in nats, "ppl": exp(loss), "tokens": number of predicted tokens,
        "window_losses": each sequence's mean loss (for paired comparisons of models on the
        same windows), "loss_lo"/"loss_hi": a 95% bootstrap interval of the mean over windows}.
    """
    import torch
    import torch.nn.functional as F

    if batches.ndim != 2 or batches.shape[0] == 0 or batches.shape[1] < 2:
        raise InputError(f"evaluation batches must be [N, L>=2], got {tuple(batches.shape)}")
    dev = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=dev)
    tokens = 0
    windows: list[float] = []
    chunks = batches.split(micro_batch)
    if progress:
        chunks = track(chunks, "eval", total=len(chunks))
    with torch.inference_mode():
        for chunk in chunks:
            ids = chunk.to(dev)
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
            h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
            labels = ids[:, 1:].reshape(-1)
            per_token = []
            for s in range(0, h.shape[0], LOGIT_CHUNK_TOKENS):
                logits = model.lm_head(h[s : s + LOGIT_CHUNK_TOKENS]).float()
                per_token.append(
                    F.cross_entropy(logits, labels[s : s + LOGIT_CHUNK_TOKENS], reduction="none")
                )
            per_row = torch.cat(per_token).double().view(ids.shape[0], -1).sum(1)
            total += per_row.sum()
            windows += (per_row / (ids.shape[1] - 1)).tolist()
            tokens += labels.numel()
    loss = float(total) / tokens
    iv = bootstrap_mean(windows)  # windows are equally long: their mean is the token mean
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "tokens": tokens,
        "loss_lo": iv["lo"],
        "loss_hi": iv["hi"],
        "window_losses": windows,
    }


def compare_losses(model: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Two `evaluate_loss` results on the same windows: the mean difference model - baseline with
    a 95% paired bootstrap interval over windows (`minitron_deploy.stats.paired_bootstrap`)."""
    a, b = model["window_losses"], baseline["window_losses"]
    if len(a) != len(b):
        raise InputError(f"not the same windows: {len(a)} vs {len(b)} sequences")
    return paired_bootstrap(a, b)
