"""Llama shapes from a config: head_dim, rope settings, parameter counts. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_LLAMA31_8B: dict[str, Any] = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
)
# The published config.json of each Llama the rehearsal reproduces (meta-llama/Llama-3.2-1B,
# Llama-3.2-3B, Llama-3.1-8B on the Hugging Face hub): GQA, llama3 rope scaling, the 128,256
# vocabulary, tied embeddings for 1B/3B and untied for 8B. `fetch random:NAME` writes random
# weights of these shapes (`model/random_init.py`).
_LLAMA3_COMMON: dict[str, Any] = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    attention_bias=False,
    attention_dropout=0.0,
    mlp_bias=False,
    hidden_act="silu",
    initializer_range=0.02,
    max_position_embeddings=131072,
    pretraining_tp=1,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    bos_token_id=128000,
    eos_token_id=128001,
    vocab_size=128256,
    torch_dtype="bfloat16",
    use_cache=True,
)


def _llama3_rope(factor: float) -> dict[str, Any]:
    return {
        "factor": factor,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }


PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        **_LLAMA3_COMMON,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "rope_scaling": _llama3_rope(32.0),
        "tie_word_embeddings": True,
    },
    "llama-3.2-3b": {
        **_LLAMA3_COMMON,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rope_scaling": _llama3_rope(32.0),
        "tie_word_embeddings": True,
    },
    "llama-3.1-8b": {
        **_LLAMA3_COMMON,
        **_LLAMA31_8B,
        "rope_scaling": _llama3_rope(8.0),
    },
}
_SHAPE_KEYS = (*_LLAMA31_8B, "head_dim")

# The linear layers of one decoder layer, by their module path (HF Llama names).
LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

# Published shapes (method.md) and the built-in teacher, so plans and checks work without the
# checkpoints at hand.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "llama-3.1-8b": _LLAMA31_8B,
    "llama-3.1-70b": {
        **_LLAMA31_8B,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
    },
    "llama-3.2-1b": {k: PUBLISHED_CONFIGS["llama-3.2-1b"][k] for k in _SHAPE_KEYS},
    "llama-3.2-3b": {k: PUBLISHED_CONFIGS["llama-3.2-3b"][k] for k in _SHAPE_KEYS},
    "llama-3.1-minitron-4b-width": {**_LLAMA31_8B, "hidden_size": 3072, "intermediate_size": 9216},
    "llama-3.1-minitron-4b-depth": {**_LLAMA31_8B, "num_hidden_layers": 16},
}


@dataclass(frozen=True)
class LlamaShape:
    """The sizes that pruning changes, with HF names."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, cfg: Any) -> LlamaShape:
        """Build from a `LlamaConfig` or a config.json dict."""
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def params_per_layer(self) -> int:
        h, hd = self.hidden_size, self.head_dim
        attn = h * self.num_attention_heads * hd * 2 + h * self.num_key_value_heads * hd * 2
        mlp = 3 * h * self.intermediate_size
        return attn + mlp + 2 * h  # + two RMSNorm weights

    @property
    def num_parameters(self) -> int:
        """Total parameters, counting a tied lm_head once (as `model.num_parameters()` does)."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return emb + head + self.num_hidden_layers * self.params_per_layer + self.hidden_size

    @property
    def non_embedding_parameters(self) -> int:
        return self.num_hidden_layers * self.params_per_layer + self.hidden_size

    def forward_flops_per_token(self, context: int = 0) -> float:
        """Approximate forward FLOPs per token: 2 x matmul parameters + attention over `context`."""
        matmul = self.num_hidden_layers * (self.params_per_layer - 2 * self.hidden_size)
        matmul += self.vocab_size * self.hidden_size
        attn = 2 * 2 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * context
        return 2.0 * matmul + attn


def rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from a config dict, in either transformers spelling.

    transformers 5 keeps rope settings in `rope_parameters`; older configs use `rope_theta` and
    `rope_scaling`. Scaling of type "default" means none.
    """
    params = cfg.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = cfg.get("rope_scaling")
    if scaling is None and params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        scaling = dict(scaling)
        rtype = scaling.get("rope_type", scaling.get("type"))
        if rtype in (None, "default"):
            return theta, None
        scaling.setdefault("rope_type", rtype)
    return theta, scaling or None


def transformers_rope(path: str | Path) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) as the installed transformers reads an HF folder's config.json: 4.x
    uses `rope_theta` / `rope_scaling` (what TensorRT-LLM <= 1.2 reads), 5.x `rope_parameters`."""
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path))
    if int(transformers.__version__.split(".")[0]) >= 5:
        params = dict(cfg.rope_parameters or {})
        theta = float(params.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:  # `rope_parameters` is an inert extra attribute there, never read
        theta = float(getattr(cfg, "rope_theta", 10000.0))
        scaling = dict(getattr(cfg, "rope_scaling", None) or {})
    kind = scaling.get("rope_type", scaling.get("type"))
    return theta, (scaling if kind not in (None, "default") else None)


def same_rope(want: tuple[float, dict | None], got: tuple[float, dict | None]) -> bool:
    """Whether two (theta, scaling) pairs give the same rotary embedding."""
    (t1, s1), (t2, s2) = want, got
    if t1 != t2 or (s1 is None) != (s2 is None):
        return False
    if s1 is None:
        return True
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    kind = s1.get("rope_type", s1.get("type")), s2.get("rope_type", s2.get("type"))
    return kind[0] == kind[1] and all(s1.get(k) == s2.get(k) for k in keys)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
