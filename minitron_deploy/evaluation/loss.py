"""Validation loss and perplexity of a causal LM on packed token sequences."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError

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
        {"loss": mean loss in nats, "ppl": exp(loss), "tokens": number of predicted tokens}.
    """
    import torch
    import torch.nn.functional as F

    if batches.ndim != 2 or batches.shape[0] == 0 or batches.shape[1] < 2:
        raise InputError(f"evaluation batches must be [N, L>=2], got {tuple(batches.shape)}")
    dev = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=dev)
    tokens = 0
    chunks = batches.split(micro_batch)
    if progress:
        from minitron_deploy.console import track

        chunks = track(chunks, "eval", total=len(chunks))
    with torch.inference_mode():
        for chunk in chunks:
            ids = chunk.to(dev)
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
            h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
            labels = ids[:, 1:].reshape(-1)
            for s in range(0, h.shape[0], LOGIT_CHUNK_TOKENS):
                logits = model.lm_head(h[s : s + LOGIT_CHUNK_TOKENS]).float()
                total += F.cross_entropy(
                    logits, labels[s : s + LOGIT_CHUNK_TOKENS], reduction="sum"
                ).double()
            tokens += labels.numel()
    loss = float(total) / tokens
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": tokens}
