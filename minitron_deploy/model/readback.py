"""Forward passes that hold one decoder layer at a time, for read-back checks of big models.

`lockstep_logits(sides, tokens)` builds the stock `LlamaForCausalLM` of each side (a config and
a tensor getter: the source, the export) on the meta device (no memory), gathers the probe
tokens' embedding rows, lets transformers' own `LlamaModel.forward` compute what its first
decoder layer receives (hidden states, mask, rotary tables), then runs the decoder layers
itself, layer i of every side before layer i + 1 of any: each side's layer is loaded (float32,
from its `get(name)`) just before it runs and dropped right after. So a read-back that compares
an export with its source reads each checkpoint once, and the two reads of one layer come
together (a per-tensor check hooked into one side's `get` finds the other side's tensor in the
page cache). The final norm and the lm_head (in row blocks) follow. Peak memory: one layer per
side in float32, the largest stored tensor (the embedding / lm_head), and the activations of
the few probe tokens. It computes what the stock float32 model computes: the same modules,
kernels, mask and rotary code (tests/unit/test_stream.py), so a checkpoint's logits can be
compared without ever loading it whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from minitron_deploy.console import track
from minitron_deploy.model.io import llama_config
from minitron_deploy.model.layerwise import first_layer_inputs
from minitron_deploy.model.shapes import LINEARS
from minitron_deploy.model.stream import release_memory

if TYPE_CHECKING:
    import torch

HEAD_ROWS = 16384  # lm_head rows per float32 block (256 MB at hidden 4096)


def _drop(module: torch.nn.Module) -> None:
    """Give a layer's weights back (to the meta device, and their pages to the system)."""
    module.to("meta")
    release_memory()


Get = Callable[[str], "torch.Tensor"]
Linear = Callable[[str], "torch.nn.Module | None"]


def layerwise_logits(
    cfg: dict[str, Any], get: Get, tokens: torch.Tensor, linear: Linear | None = None
) -> torch.Tensor:
    """Float32 logits [batch, seq, vocab] of the Llama with config `cfg` whose HF-named tensors
    `get(name)` returns, computed one decoder layer at a time (`lockstep_logits` of one side)."""
    return lockstep_logits([(cfg, get, linear)], tokens)[0]


def lockstep_logits(
    sides: Sequence[tuple[dict[str, Any], Get, Linear | None]],
    tokens: torch.Tensor,
    progress: str | None = None,
) -> list[torch.Tensor]:
    """Float32 logits [batch, seq, vocab] of each side, its decoder layers run in lockstep.

    Args:
        sides: (config dict, get, linear) per model, all with the same number of layers:
            `get(name)` returns an HF-named tensor (any float dtype; computed in float32);
            `linear(name)` (e.g. "model.layers.0.self_attn.q_proj") the module to run in the
            stock one's place, or None to keep it (FP8 W8A8 read-backs); `linear` may be None.
        tokens: int64 token ids [batch, seq].
        progress: a label for a progress bar over the layers (None: no bar).
    """
    import torch
    from transformers import LlamaForCausalLM

    runs = []
    for cfg, get, linear in sides:
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
        with torch.no_grad():
            runs.append((config, inner, get, linear, first_layer_inputs(inner, inputs_embeds=x)))
    if len({len(r[1].layers) for r in runs}) > 1:
        raise ValueError("lockstep_logits: the sides have different numbers of layers")

    def load(get: Get, linear: Linear | None, prefix: str, module: torch.nn.Module) -> None:
        swaps = {}  # linears run by other modules: their stock weights are never read
        for name in LINEARS if linear is not None and prefix.startswith("model.layers.") else ():
            if (swap := linear(prefix + name)) is not None:
                swaps[name] = swap
        keys = [k for k in module.state_dict() if k.rsplit(".", 1)[0] not in swaps]
        missing = module.load_state_dict(
            {k: get(prefix + k).float() for k in keys}, strict=not swaps, assign=True
        ).missing_keys
        if {k.rsplit(".", 1)[0] for k in missing} - set(swaps):
            raise KeyError(f"{prefix}: no tensors for {missing}")
        for name, swap in swaps.items():
            parent, child = name.rsplit(".", 1)
            setattr(module.get_submodule(parent), child, swap)

    states = [h for *_, (h, _) in runs]
    layers: Iterable[int] = range(len(runs[0][1].layers))
    if progress:
        layers = track(layers, progress)
    with torch.no_grad():
        for i in layers:
            for j, (_config, inner, get, linear, (_, kwargs)) in enumerate(runs):
                layer = inner.layers[i]
                load(get, linear, f"model.layers.{i}.", layer)
                out = layer(states[j], **kwargs)
                states[j] = out[0] if isinstance(out, tuple) else out
                _drop(layer)
        logits = []
        for j, (config, inner, get, _linear, _) in enumerate(runs):
            load(get, None, "model.norm.", inner.norm)
            h = inner.norm(states[j])
            head = get(
                "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
            )
            blocks = [
                torch.nn.functional.linear(h, head[a : a + HEAD_ROWS].float())
                for a in range(0, head.shape[0], HEAD_ROWS)
            ]
            del head
            logits.append(torch.cat(blocks, dim=-1))
    return logits
