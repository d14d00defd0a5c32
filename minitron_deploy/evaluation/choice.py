"""Fast item scoring for the offline tasks: each item's context runs once, its choices
continue from the context's key/value cache (`DynamicCache.batch_repeat_interleave`), so an item
of 4 choices costs one context plus 4 short continuations instead of 4 whole sequences.

The scores are those of lm-evaluation-harness's definitions (`offline_tasks.py` writes the same
items as lm-eval tasks): a multiple-choice item is right when the true choice has the highest
summed log-probability (`acc`) or the highest log-probability per byte of the choice
(`acc_norm`); a last-word item is right when every target token is the greedy one (`acc`).
Context and choice are encoded apart, and whitespace at the end of the context moves to the
front of the choices, as lm-eval does. Contexts keep their last `context_tokens` tokens.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

CONTEXT_TOKENS = 128


def _split_ws(context: str) -> tuple[str, str]:
    """(context without its trailing whitespace, that whitespace)."""
    stripped = context.rstrip(" \t")
    return stripped, context[len(stripped) :]


def encode_item(tok: Any, item: dict, context_tokens: int = CONTEXT_TOKENS) -> dict:
    """Token ids of an item: {"context": [...], "choices": [[...], ...], "label", "nbytes"}.

    A multiple-choice item has `choices` and `label`; a last-word item has `target` (one choice,
    label 0)."""
    ctx, ws = _split_ws(item["context"])
    choices = item["choices"] if "choices" in item else [item["target"]]
    texts = [ws + c for c in choices]
    ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"][-context_tokens:]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    if not ctx_ids or any(not x for x in ids):
        raise InputError(f"item {item.get('id')!r}: empty context or choice after encoding")
    return {
        "context": ctx_ids,
        "choices": ids,
        "label": int(item.get("label", 0)),
        "nbytes": [len(t.encode()) for t in texts],
    }


def score_encoded(
    model: LlamaForCausalLM, items: list[dict], batch_size: int = 16
) -> list[dict[str, Any]]:
    """Per item: {"logprobs": summed log-prob of each choice, "greedy": whether each choice is
    the greedy continuation, "acc", "acc_norm" (multiple choice), "greedy_acc"}; items from
    `encode_item`."""
    import torch
    from transformers import DynamicCache

    # transformers 5.2x names the forward's cache argument `cache` (`past_key_values` warns and
    # goes in 5.40); 4.57, which TensorRT-LLM's containers pin, knows only `past_key_values`
    cache_kw = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    dev = next(model.parameters()).device
    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            b = len(chunk)
            k = len(chunk[0]["choices"])
            if any(len(x["choices"]) != k for x in chunk):  # mixed widths: one at a time
                for x in chunk:
                    out += score_encoded(model, [x], 1)
                continue
            lc = max(len(x["context"]) for x in chunk)
            ctx = torch.zeros(b, lc, dtype=torch.long)
            cmask = torch.zeros(b, lc, dtype=torch.long)
            for i, x in enumerate(chunk):  # left padding: every context ends at column lc - 1
                n = len(x["context"])
                ctx[i, lc - n :] = torch.tensor(x["context"])
                cmask[i, lc - n :] = 1
            cpos = (cmask.cumsum(1) - 1).clamp(min=0)
            cache = DynamicCache()
            res = model(
                input_ids=ctx.to(dev),
                attention_mask=cmask.to(dev),
                position_ids=cpos.to(dev),
                **{cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits are read
            )
            first = res.logits[:, -1].float().log_softmax(-1)  # [b, V]: each choice's 1st token
            cache.batch_repeat_interleave(k)  # filled in place by the context's forward
            flat = [c for x in chunk for c in x["choices"]]
            lm = max(len(c) for c in flat)
            ch = torch.zeros(b * k, lm, dtype=torch.long)
            chmask = torch.zeros(b * k, lm, dtype=torch.long)
            for j, c in enumerate(flat):  # right padding: pads come after every real token
                ch[j, : len(c)] = torch.tensor(c)
                chmask[j, : len(c)] = 1
            mask = torch.cat([cmask.repeat_interleave(k, 0), chmask], 1)
            pos = cmask.sum(1).repeat_interleave(k, 0)[:, None] + torch.arange(lm)[None, :]
            logp = (
                model(
                    input_ids=ch.to(dev),
                    attention_mask=mask.to(dev),
                    position_ids=pos.to(dev),
                    **{cache_kw: cache},
                    use_cache=False,
                )
                .logits.float()
                .log_softmax(-1)
                .cpu()
            )
            first = first.cpu().repeat_interleave(k, 0)
            for i, x in enumerate(chunk):
                lps, greedy = [], []
                for c_i, c in enumerate(x["choices"]):
                    j = i * k + c_i
                    # token 0 from the context's last position, token t from choice position t-1
                    dists = torch.cat([first[j : j + 1], logp[j, : len(c) - 1]], 0)
                    tgt = torch.tensor(c)
                    lps.append(float(dists.gather(1, tgt[:, None]).sum()))
                    greedy.append(bool((dists.argmax(-1) == tgt).all()))
                rec: dict[str, Any] = {"logprobs": lps, "greedy": greedy}
                if k > 1:
                    label = x["label"]
                    norm = [lp / nb for lp, nb in zip(lps, x["nbytes"], strict=True)]
                    rec["acc"] = float(max(range(k), key=lps.__getitem__) == label)
                    rec["acc_norm"] = float(max(range(k), key=norm.__getitem__) == label)
                rec["greedy_acc"] = float(greedy[x["label"]])
                out.append(rec)
    return out


def score_items(
    model: LlamaForCausalLM,
    tok: Any,
    items: list[dict],
    context_tokens: int = CONTEXT_TOKENS,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """`score_encoded` of raw task items (dicts with context + choices/label, or + target)."""
    enc = [encode_item(tok, x, context_tokens) for x in items]
    return score_encoded(model, enc, batch_size)
