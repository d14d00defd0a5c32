"""Weights for the built-in engine: dense and FP8 linears, rope tables, checkpoint loading.

FP8 linears are `quant.linear.Fp8Linear` (Model-Optimizer's layout: float8_e4m3fn weight with
per-tensor `weight_scale` and `input_scale`; `torch._scaled_mm` on CUDA, an exact float32
emulation elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minitron_deploy.errors import InputError
from minitron_deploy.export.hf_fp8 import fp8_linears
from minitron_deploy.model.io import llama_config, weight_files
from minitron_deploy.model.shapes import LINEARS
from minitron_deploy.quant.fp8 import quantize_fp8
from minitron_deploy.quant.linear import Fp8Linear


class DenseLinear:
    """y = x @ W.T in the compute dtype."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class PackedLinear:
    """y = x @ W.T with W reordered once by oneDNN into the blocked layout its CPU GEMM uses.

    `F.linear` on plain CPU weights makes oneDNN repack W on every call; at decode shapes
    (M = batch) that repacking costs about as much as the GEMM. Results can differ from
    `F.linear` in the last bits (another accumulation order; ~1e-5 relative in float32).
    """

    def __init__(self, weight: torch.Tensor):
        self.out_features = weight.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")


def can_prepack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `PackedLinear` works here: CPU with oneDNN, float32 or (AVX-512/AMX) bfloat16."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def prepack_weights(weights: dict[str, Any]) -> dict[str, Any]:
    """Replace every dense linear (and lm_head) of `load_weights`' result by a `PackedLinear`."""

    def pack(lin: Any) -> Any:
        if isinstance(lin, DenseLinear):
            return PackedLinear(lin.weight)
        if isinstance(lin, SplitLinear):
            return SplitLinear([pack(p) for p in lin.parts])
        return lin

    layers = [{k: pack(v) for k, v in layer.items()} for layer in weights["layers"]]
    return weights | {"layers": layers, "lm_head": pack(weights["lm_head"])}


class SplitLinear:
    """Several linears on the same input, outputs concatenated (when they cannot be fused)."""

    def __init__(self, parts: list[Callable[[torch.Tensor], torch.Tensor]]):
        self.parts = parts

    @property
    def out_features(self) -> int:
        return sum(p.out_features for p in self.parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def fuse(parts: list[Any]) -> Any:
    """Fuse linears that share an input into one GEMM (dense, or FP8 with equal scales)."""
    if all(isinstance(p, DenseLinear) for p in parts):
        return DenseLinear(torch.cat([p.weight for p in parts], dim=0))
    if all(isinstance(p, Fp8Linear) for p in parts):
        same = all(
            torch.equal(p.weight_scale, parts[0].weight_scale)
            and torch.equal(p.input_scale, parts[0].input_scale)
            for p in parts
        )
        if same:
            w = torch.cat([p.weight for p in parts], dim=0)
            return Fp8Linear(w, parts[0].weight_scale, parts[0].input_scale, parts[0].out_dtype)
    return SplitLinear(parts)


@dataclass(frozen=True)
class Spec:
    """The sizes the engine needs, read from config.json."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Spec:
        heads = int(cfg["num_attention_heads"])
        return cls(
            hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )


def rope_tables(
    cfg: dict[str, Any], max_len: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin tables [max_len, head_dim], computed exactly as transformers does.

    The inverse frequencies (default, llama3, linear, ... scaling) and the attention scaling
    come from transformers' own `LlamaRotaryEmbedding`, so any rope type it knows is matched.
    """
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = llama_config(cfg)
    rot = LlamaRotaryEmbedding(config)
    inv_freq = rot.inv_freq.float()
    pos = torch.arange(max_len, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = float(rot.attention_scaling)
    return (emb.cos() * scale).to(device), (emb.sin() * scale).to(device)


def read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's safetensors files, by name."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(model_dir):
        sd.update(load_file(str(f)))
    return sd


def load_weights(
    model_dir: str | Path,
    spec: Spec,
    dtype: torch.dtype,
    device: str | torch.device,
    *,
    fp8: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Engine weights: embedding, per-layer fused linears and norms, final norm, lm_head linear.

    Args:
        model_dir: checkpoint folder (read unless `state_dict` is given; named in errors).
        spec: model sizes.
        dtype: compute dtype for dense weights, norms and FP8 outputs.
        device: target device.
        fp8: read FP8 linears (weights + scales) from the checkpoint.
        state_dict: HF-named tensors to use instead of reading files (already read, or random
            weights); FP8 linears as `<name>.weight` float8 with `.weight_scale`/`.input_scale`.

    Raises:
        InputError: a tensor is missing or has the wrong shape.
    """

    sd = state_dict if state_dict is not None else read_safetensors(Path(model_dir))
    fp8_map = fp8_linears(sd, str(model_dir)) if fp8 else {}

    def get(name: str) -> torch.Tensor:
        if name not in sd:
            raise InputError(f"checkpoint has no tensor {name}", where=str(model_dir))
        return sd[name].to(device=device, dtype=dtype)

    def linear(name: str) -> Any:
        if name in fp8_map:
            w, ws, xs = fp8_map[name]
            return Fp8Linear(w.to(device), ws.to(device), xs.to(device), out_dtype=dtype)
        return DenseLinear(get(f"{name}.weight"))

    layers = []
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        lin = {n.split(".")[1]: linear(p + n) for n in LINEARS}
        layers.append(
            {
                "ln1": get(p + "input_layernorm.weight"),
                "ln2": get(p + "post_attention_layernorm.weight"),
                "qkv": fuse([lin["q_proj"], lin["k_proj"], lin["v_proj"]]),
                "o": lin["o_proj"],
                "gate_up": fuse([lin["gate_proj"], lin["up_proj"]]),
                "down": lin["down_proj"],
            }
        )
    qkv_out = (spec.num_attention_heads + 2 * spec.num_key_value_heads) * spec.head_dim
    if layers and layers[0]["qkv"].out_features != qkv_out:
        raise InputError(
            f"q/k/v weights give {layers[0]['qkv'].out_features} outputs, config says {qkv_out}",
            where=str(model_dir),
            fix="write head_dim and num_key_value_heads explicitly in config.json",
        )
    embed = get("model.embed_tokens.weight")
    lm_head = DenseLinear(embed if spec.tie_word_embeddings else get("lm_head.weight"))
    return {"embed": embed, "layers": layers, "norm": get("model.norm.weight"), "lm_head": lm_head}


def random_state_dict(
    config: dict[str, Any],
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    *,
    fp8: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """HF-named random Llama weights for speed benchmarks (no checkpoint needed).

    With `fp8`, every decoder linear is stored as float8_e4m3fn with per-tensor `weight_scale`
    and a fixed `input_scale`, as in a Model-Optimizer FP8 export (embeddings, norms and lm_head
    stay in `dtype`). Values are N(0, 0.02); only shapes and dtypes matter for speed.
    """
    spec = Spec.from_config(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    h, d = spec.hidden_size, spec.head_dim
    shapes = {
        "self_attn.q_proj": (spec.num_attention_heads * d, h),
        "self_attn.k_proj": (spec.num_key_value_heads * d, h),
        "self_attn.v_proj": (spec.num_key_value_heads * d, h),
        "self_attn.o_proj": (h, spec.num_attention_heads * d),
        "mlp.gate_proj": (spec.intermediate_size, h),
        "mlp.up_proj": (spec.intermediate_size, h),
        "mlp.down_proj": (h, spec.intermediate_size),
    }

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype) * 0.02

    sd = {"model.embed_tokens.weight": rnd(spec.vocab_size, h)}
    sd["model.norm.weight"] = torch.ones(h, device=device, dtype=dtype)
    if not spec.tie_word_embeddings:
        sd["lm_head.weight"] = rnd(spec.vocab_size, h)
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.ones(h, device=device, dtype=dtype)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h, device=device, dtype=dtype)
        for name, shape in shapes.items():
            w = rnd(*shape)
            if fp8:
                w8, ws = quantize_fp8(w)
                sd[p + name + ".weight"], sd[p + name + ".weight_scale"] = w8, ws
                sd[p + name + ".input_scale"] = torch.tensor(0.05, device=device)
            else:
                sd[p + name + ".weight"] = w
    return sd
