"""Layer-sequential forward passes: one decoder layer in memory at a time, read from safetensors.

For models that do not fit in memory (an 8B model in float32 is 32 GB), the passes that only
need activations (importance, FP8 calibration) run the way sequential calibration pipelines do
(GPTQ, llm-compressor's sequential pipeline, Model-Optimizer's layerwise calibration): the
hidden states of all calibration sequences are held between layers, and each decoder layer is
loaded from the checkpoint (`safe_open`, tensor by tensor), run over every sequence, and freed.

`LayerwiseLlama` builds the model's skeleton on the meta device (no weights), so forward hooks
attach to the same modules, with the same names, as on a loaded `LlamaForCausalLM`; the inputs
of the first layer (attention mask, rotary embeddings, position ids) are captured from the
model's own forward, stopped at the first layer. Each layer then runs with exactly the
arguments the whole model passes it, so the activations (and every statistic computed from
them) are bitwise those of the whole-model pass with the same micro-batches.

Peak memory: the largest of (embedding matrix, one decoder layer) in the compute dtype, plus
the held hidden states (sequences x tokens x hidden in the hidden-state dtype), plus the
hooks' accumulators.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator

from minitron_deploy.console import track
from minitron_deploy.errors import InputError
from minitron_deploy.hardware import available_memory
from minitron_deploy.model.io import load_config, read_config, resolve_dtype, weight_files
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.model.stream import release_memory

if TYPE_CHECKING:
    import torch


def _tristate(v: Any) -> Any:
    return ("true" if v else "false") if isinstance(v, bool) else v


# auto | true | false, YAML booleans accepted: whether a forward pass runs one decoder layer at a
# time (`model.layerwise`). It never changes results, so it is excluded from artifact keys.
LayerSequential = Annotated[Literal["auto", "true", "false"], BeforeValidator(_tristate)]
LAYER_SEQUENTIAL_HELP = (
    "run one decoder layer at a time, reading its weights from the checkpoint, with the "
    "calibration activations held between layers (same results, bitwise): auto = when the "
    "whole model's memory estimate exceeds the host's available memory"
)


class _FirstLayerReached(Exception):
    """Raised by the capture hook to stop the model's forward at its first decoder layer."""


def first_layer_inputs(inner: torch.nn.Module, **inputs: Any) -> tuple[Any, dict[str, Any]]:
    """(hidden states, keyword arguments) the stock `LlamaModel` `inner` passes to its first
    decoder layer when called with `inputs` (input_ids or inputs_embeds; mask, rotary tables,
    ...): its forward runs until then and stops, so no decoder layer needs weights."""
    seen: list[Any] = []

    def capture(_mod, args, kw):
        seen.append((args[0] if args else kw.pop("hidden_states"), dict(kw)))
        raise _FirstLayerReached

    hook = inner.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with contextlib.suppress(_FirstLayerReached):
            inner(**inputs, use_cache=False)
    finally:
        hook.remove()
    return seen[0]


class LayerwiseLlama:
    """A `LlamaForCausalLM` skeleton whose weights are read from `path` one module at a time.

    Args:
        path: an HF Llama checkpoint folder (safetensors, single file or sharded).
        dtype: dtype of the loaded weights ("float32", "bfloat16", "auto", a torch dtype).
    """

    def __init__(self, path: str | Path, dtype: Any = "float32"):
        import torch
        from transformers import LlamaForCausalLM

        self.path = Path(path)
        raw = read_config(path)
        files = weight_files(path)
        self.dtype = resolve_dtype(dtype, raw)
        config = load_config(path)
        config._attn_implementation = "sdpa"  # what `from_pretrained` picks on CPU
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model.to(self.dtype)
        # Buffers are computed, not stored: the rotary embedding is built for real, in float32
        # as `from_pretrained` leaves it.
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
        self.model = model.eval()
        self.config = model.config
        self._where: dict[str, Path] = {}
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            for name, f in json.loads(index.read_text())["weight_map"].items():
                self._where[name] = self.path / f
        else:
            from safetensors import safe_open

            for f in files:
                with safe_open(str(f), framework="pt") as sf:
                    for name in sf.keys():  # noqa: SIM118
                        self._where[name] = f

    # -- weights -------------------------------------------------------------------------------
    def _file(self, name: str) -> tuple[str, Path]:
        if name not in self._where and name == "lm_head.weight":
            name = "model.embed_tokens.weight"  # tied
        return name, self._where[name]

    def tensors(self, names: Iterable[str], dtype: Any = None) -> dict[str, torch.Tensor]:
        """Stored tensors by name (tied lm_head: the embedding), cast to `dtype` (default: the
        skeleton's). Each file is opened per call and closed after it: a kept memory map would
        leave every page read so far in this process's resident set."""
        from safetensors import safe_open

        by_file: dict[Path, list[tuple[str, str]]] = {}
        for n in names:
            stored, f = self._file(n)
            by_file.setdefault(f, []).append((n, stored))
        out = {}
        for f, pairs in by_file.items():
            with safe_open(str(f), framework="pt") as sf:
                for n, stored in pairs:
                    out[n] = sf.get_tensor(stored).to(self.dtype if dtype is None else dtype)
        return out

    def tensor(self, name: str, dtype: Any = None) -> torch.Tensor:
        """One stored tensor (see `tensors`)."""
        return self.tensors([name], dtype)[name]

    def load(self, prefix: str, module: torch.nn.Module) -> None:
        """Materialize `module` (named `prefix` in the checkpoint) from the stored tensors."""
        names = list(module.state_dict())
        got = self.tensors([prefix + k for k in names])
        state = {k: got[prefix + k] for k in names}
        module.load_state_dict(state, strict=True, assign=True)

    @staticmethod
    def unload(module: torch.nn.Module) -> None:
        """Free `module`'s weights (back to the meta device, their pages to the system)."""
        module.to("meta")
        release_memory()

    @contextlib.contextmanager
    def loaded(self, prefix: str, module: torch.nn.Module):
        self.load(prefix, module)
        try:
            yield module
        finally:
            self.unload(module)

    # -- the pass ------------------------------------------------------------------------------
    def decoder_pass(
        self,
        chunks: Iterable[torch.Tensor],
        *,
        final_norm: bool = True,
        after_layer: Callable[[int, torch.nn.Module], None] | None = None,
        autocast: Any = None,
        progress: str | None = None,
    ) -> None:
        """Run the decoder (no lm_head) over token `chunks`, one layer at a time.

        Equals `model.model(input_ids=chunk, use_cache=False)` per chunk, so forward hooks
        attached to `self.model`'s modules see the same tensors.

        Args:
            chunks: int64 token ids, one [B, L] tensor per forward call (micro-batch).
            final_norm: also run the final RMSNorm (the whole model does; its hooks may read it).
            after_layer: called with (index, layer) after a layer ran over every chunk, while
                its weights are still loaded.
            autocast: a dtype to run under CPU autocast (None: no autocast).
            progress: a label for a progress bar over the layers (None: no bar).
        """
        import torch

        m = self.model.model
        states: list[torch.Tensor] = []
        kwargs: list[dict[str, Any]] = []

        amp = (
            torch.autocast("cpu", dtype=autocast)
            if autocast is not None and autocast != torch.float32
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), amp:
            with self.loaded("model.embed_tokens.", m.embed_tokens):
                for chunk in chunks:
                    x, kw = first_layer_inputs(m, input_ids=chunk)
                    states.append(x)
                    kwargs.append(kw)
            layers: Iterable[Any] = enumerate(m.layers)
            if progress:
                layers = track(layers, progress, total=len(m.layers))
            for i, layer in layers:
                with self.loaded(f"model.layers.{i}.", layer):
                    for j, x in enumerate(states):
                        out = layer(x, **kwargs[j])
                        states[j] = out[0] if isinstance(out, tuple) else out
                    if after_layer is not None:
                        after_layer(i, layer)
            if final_norm:
                with self.loaded("model.norm.", m.norm):
                    for x in states:
                        m.norm(x)


BASE_BYTES = 700 * 2**20  # the interpreter with torch and transformers imported
FIT_SHARE = 0.8  # auto: layer-sequential when the whole-model estimate exceeds this share


def _activation_bytes(shape: Any, tokens: int, seq_len: int, micro_batch: int) -> int:
    """Transient activations of one forward call of `micro_batch` rows (float32 upper bound)."""
    per_token = 8 * shape.hidden_size + 3 * shape.intermediate_size
    attn = micro_batch * shape.num_attention_heads * seq_len * seq_len  # scores, if materialized
    return 4 * (micro_batch * seq_len * per_token + attn)


def memory_estimate(
    config: Any,
    *,
    weight_bytes: int,
    rows: int,
    seq_len: int,
    micro_batch: int,
    state_bytes: int,
    whole_copies: float = 1.0,
) -> dict[str, int]:
    """Peak bytes of a forward-only pass, whole model vs layer-sequential.

    Args:
        config: the model's config (dict or object).
        weight_bytes: bytes per weight in the compute dtype.
        rows, seq_len, micro_batch: calibration sequences, their length, rows per forward call.
        state_bytes: bytes per element of the hidden states held between layers.
        whole_copies: copies of the weights the whole-model path holds at its peak (FP8 export:
            the float32 model and its exported state dict).

    Returns:
        {"whole": bytes, "layer_sequential": bytes}.
    """

    s = LlamaShape.from_config(config)
    act = _activation_bytes(s, rows * seq_len, seq_len, micro_batch)
    whole = int(s.num_parameters * weight_bytes * whole_copies) + act + BASE_BYTES
    largest = max(s.vocab_size * s.hidden_size, s.params_per_layer) * weight_bytes
    # a stored tensor is read (up to 4 bytes/element) and cast: two copies of the largest module
    states = rows * seq_len * s.hidden_size * state_bytes
    return {"whole": whole, "layer_sequential": 2 * largest + states + act + BASE_BYTES}


def choose(
    setting: str, estimate: dict[str, int], available: int | None = None
) -> tuple[bool, str]:
    """(run layer-sequentially?, why) for a setting auto|true|false and `memory_estimate`'s output.

    Raises:
        InputError: the pass cannot fit even layer-sequentially (with the numbers).
    """

    gib = 2**30
    avail = available_memory() if available is None else available
    whole, seq = estimate["whole"], estimate["layer_sequential"]
    numbers = f"whole model ~{whole / gib:.1f} GiB, layer-sequential ~{seq / gib:.1f} GiB"
    if setting == "true":
        return True, f"layer_sequential: true ({numbers})"
    if setting == "false":
        return False, f"layer_sequential: false ({numbers})"
    if whole <= FIT_SHARE * avail:
        return False, f"auto: the whole model fits ({numbers}, {avail / gib:.1f} GiB available)"
    if seq > FIT_SHARE * avail:
        raise InputError(
            f"the pass does not fit in memory even one layer at a time ({numbers}, "
            f"{avail / gib:.1f} GiB available)",
            fix="use fewer or shorter calibration sequences, or a host with more memory",
        )
    return True, f"auto: layer-sequential ({numbers}, {avail / gib:.1f} GiB available)"
