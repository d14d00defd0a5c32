"""A forward pass that holds one decoder layer at a time, for read-back checks of big models.

`layerwise_logits(cfg, get, tokens)` builds the stock `LlamaForCausalLM` on the meta device
(no memory), gathers the probe tokens' embedding rows, and runs transformers' own
`LlamaModel.forward`: a hook loads each decoder layer's weights (float32, from `get(name)`)
just before the layer runs and drops them right after. The lm_head is applied in row blocks.
Peak memory: one layer in float32, the largest stored tensor (the embedding / lm_head), and the
activations of the few probe tokens. It computes what the stock float32 model computes: the
same modules, kernels and mask code, so a checkpoint's logits can be compared without ever
loading it whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from minitron_deploy.model.io import llama_config
from minitron_deploy.model.shapes import LINEARS

if TYPE_CHECKING:
    import torch

HEAD_ROWS = 16384  # lm_head rows per float32 block (256 MB at hidden 4096)


def _drop(module: torch.nn.Module) -> None:
    """Give a layer's weights back (to the meta device); returns None, so the output stays."""
    module.to("meta")


def layerwise_logits(
    cfg: dict[str, Any],
    get: Callable[[str], torch.Tensor],
    tokens: torch.Tensor,
    linear: Callable[[str], torch.nn.Module | None] | None = None,
) -> torch.Tensor:
    """Float32 logits [batch, seq, vocab] of the Llama with config `cfg` whose HF-named tensors
    `get(name)` returns, computed one decoder layer at a time (no KV cache).

    Args:
        cfg: the config dict.
        get: HF tensor name -> tensor (any float dtype; computed in float32).
        tokens: int64 token ids [batch, seq].
        linear: decoder-layer linear name (e.g. "model.layers.0.self_attn.q_proj") -> the
            module to run in its place, or None to keep the stock one (FP8 W8A8 read-backs).
    """
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(cfg)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.eval()
    inner = model.model
    # The rotary tables are computed at construction, not loaded: build them for real.
    inner.rotary_emb = type(inner.rotary_emb)(config=config)
    emb = get("model.embed_tokens.weight")
    x = emb[tokens].float()  # what nn.Embedding computes on float32 weights (a gather)
    del emb

    def load(prefix: str, module: torch.nn.Module) -> None:
        sd = {k: get(prefix + k).float() for k in module.state_dict()}
        module.load_state_dict(sd, assign=True)
        for name in LINEARS if linear is not None and prefix.startswith("model.layers.") else ():
            if (swap := linear(prefix + name)) is not None:
                parent, child = name.rsplit(".", 1)
                setattr(module.get_submodule(parent), child, swap)

    hooks = []
    for i, layer in enumerate(inner.layers):
        hooks.append(
            layer.register_forward_pre_hook(lambda mod, args, i=i: load(f"model.layers.{i}.", mod))
        )
        hooks.append(layer.register_forward_hook(lambda mod, args, out: _drop(mod)))
    load("model.norm.", inner.norm)
    try:
        with torch.no_grad():
            h = inner(inputs_embeds=x, use_cache=False).last_hidden_state
            head = get(
                "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
            )
            blocks = [
                torch.nn.functional.linear(h, head[a : a + HEAD_ROWS].float())
                for a in range(0, head.shape[0], HEAD_ROWS)
            ]
    finally:
        for hk in hooks:
            hk.remove()
    return torch.cat(blocks, dim=-1)
