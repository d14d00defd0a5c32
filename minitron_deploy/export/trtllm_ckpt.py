"""Legacy TensorRT-LLM checkpoint (input of `trtllm-build`), BF16 or FP8, tp >= 1, and its reader.

Layout: `config.json` + `rank{r}.safetensors`. Names and tensor-parallel splits follow
TensorRT-LLM's `models/llama/convert.py` (checked against its source):
- per rank, `attention.qkv.weight` = cat(q_r, k_r, v_r) where q, k, v are each split into tp
  equal row blocks (GQA; tp must divide the KV heads here, we do not duplicate KV heads);
- `attention.dense` (o_proj) and `mlp.proj` (down_proj) split along dim 1 (input);
- `mlp.fc` (= gate_proj, the activated branch) and `mlp.gate` (= up_proj) split along dim 0;
- `lm_head` zero-padded to a multiple of tp rows, then split along dim 0; `vocab_embedding`
  and the norms are replicated (TensorRT-LLM's default, `use_parallel_embedding=False`).
FP8: float8_e4m3fn weights with `weights_scaling_factor` / `activation_scaling_factor` of shape
(1,); the fused qkv is requantized to one shared scale (the largest of q, k, v); an FP8 KV cache
adds `attention.kv_cache_scaling_factor` = max(k_scale, v_scale, 1.0) (`legacy_kv_cache_scale`,
clamped as Model-Optimizer's TensorRT-LLM exporter does; why: see KV_SCALE_DECISION). Scales
are replicated per rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError
from minitron_deploy.export.format import ExportFormat, ExportSettings
from minitron_deploy.export.hf import model_logits, source_reader
from minitron_deploy.export.hf_fp8 import read_fp8_state
from minitron_deploy.export.hf_fp8 import write as write_hf_fp8
from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.model.io import compat_config, llama_config
from minitron_deploy.model.shapes import LlamaShape, rope_settings
from minitron_deploy.model.stream import SafetensorsWriter, TensorReader, TensorSpec
from minitron_deploy.quant.fp8 import dequantize_fp8, requantize_shared

# The TensorRT-LLM name and split dim of each HF linear besides the fused qkv (convert.py).
TRT_LINEARS = (
    ("attention.dense", "self_attn.o_proj", 1),
    ("mlp.fc", "mlp.gate_proj", 0),
    ("mlp.gate", "mlp.up_proj", 0),
    ("mlp.proj", "mlp.down_proj", 1),
)

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.shards import Split


# Why the legacy KV-cache scale is clamped to >= 1.0 (measured by benchmarks/fp8_kv_scale.py,
# result in benchmarks/results/fp8_kv_scale.{json,md}; quoted there).
KV_SCALE_DECISION = (
    "kv_cache_scaling_factor = max(k_scale, v_scale, 1.0), as Model-Optimizer's TensorRT-LLM "
    "exporter writes it (quant_utils.get_kv_cache_scaling_factor clamps each scale to >= 1.0), "
    "and trtllm-build gets --use_fp8_context_fmha enable only with an FP8 KV cache, disable "
    "otherwise (its default is on for any FP8 checkpoint). FP8 context FMHA quantizes Q with "
    "the same scale as K and V (attentionOp.cpp: qkv_scale_orig_quant = kv_scale_orig_quant), "
    "so with the unclamped max(K, V) scale every Q value above max(|K|, |V|) saturates; the "
    "clamped scale keeps Q, K and V unclipped up to 448."
)


def legacy_kv_cache_scale(
    k_scale: torch.Tensor, v_scale: torch.Tensor, *, clamp: bool = True
) -> torch.Tensor:
    """The one K/V scale of a legacy TensorRT-LLM checkpoint layer: max(k, v), and at least
    1.0 with `clamp` (the default; see KV_SCALE_DECISION). float32, shape (1,)."""
    import torch

    s = torch.maximum(k_scale.float().reshape(()), v_scale.float().reshape(()))
    if clamp:
        s = torch.clamp(s, min=1.0)
    return s.reshape(1).clone()


def trtllm_config(cfg: dict[str, Any], *, tp: int, fp8: bool, kv_fp8: bool) -> dict[str, Any]:
    """The TensorRT-LLM `config.json` for an HF Llama config dict (rope settings always set)."""

    s = LlamaShape.from_config(cfg)
    theta, scaling = rope_settings(cfg)
    return {
        "architecture": "LlamaForCausalLM",
        "dtype": "bfloat16",
        "logits_dtype": "float32",
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "num_hidden_layers": s.num_hidden_layers,
        "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "head_size": s.head_dim,
        "intermediate_size": s.intermediate_size,
        "hidden_act": cfg.get("hidden_act", "silu"),
        "norm_epsilon": float(cfg.get("rms_norm_eps", 1e-5)),
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 2048)),
        "rotary_base": theta,
        "rotary_scaling": scaling,
        "tie_word_embeddings": s.tie_word_embeddings,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {
            "quant_algo": "FP8" if fp8 else None,
            "kv_cache_quant_algo": "FP8" if kv_fp8 else None,
            "exclude_modules": ["lm_head"] if fp8 else None,
        },
    }


def check_tp(cfg: dict[str, Any], tp: int) -> None:
    """Raise InputError unless tp splits heads, KV heads and the FFN evenly."""

    s = LlamaShape.from_config(cfg)
    sizes = {
        "num_key_value_heads": s.num_key_value_heads,
        "num_attention_heads": s.num_attention_heads,
        "intermediate_size": s.intermediate_size,
    }
    bad = {k: v for k, v in sizes.items() if tp < 1 or v % tp}
    if bad:
        raise InputError(
            f"tensor parallelism tp={tp} does not divide {bad}",
            where="--tp",
            fix=f"use a tp that divides num_key_value_heads={s.num_key_value_heads}",
        )


def _rank_weights(
    cfg: dict[str, Any], t: dict[str, torch.Tensor], tp: int, r: int
) -> dict[str, torch.Tensor]:
    """The tensors of rank `r` from HF-named tensors (bf16, or FP8 with scales)."""
    import torch

    def part(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.chunk(x, tp, dim=dim)[r].contiguous()

    def scal(x: torch.Tensor) -> torch.Tensor:
        return x.float().reshape(1).clone()

    fp8 = "model.layers.0.self_attn.q_proj.weight_scale" in t
    out: dict[str, torch.Tensor] = {}
    for i in range(int(cfg["num_hidden_layers"])):
        h, p = f"model.layers.{i}.", f"transformer.layers.{i}."
        out[p + "input_layernorm.weight"] = t[h + "input_layernorm.weight"]
        out[p + "post_layernorm.weight"] = t[h + "post_attention_layernorm.weight"]
        qkv = [t[f"{h}self_attn.{x}_proj.weight"] for x in "qkv"]
        if fp8:
            scales = [t[f"{h}self_attn.{x}_proj.weight_scale"] for x in "qkv"]
            qkv, ws = requantize_shared(list(zip(qkv, scales, strict=True)))
            xs = torch.stack([t[f"{h}self_attn.{x}_proj.input_scale"].float() for x in "qkv"])
            out[p + "attention.qkv.weights_scaling_factor"] = scal(ws)
            out[p + "attention.qkv.activation_scaling_factor"] = scal(xs.max())
            if h + "self_attn.k_proj.k_scale" in t:
                out[p + "attention.kv_cache_scaling_factor"] = legacy_kv_cache_scale(
                    t[h + "self_attn.k_proj.k_scale"], t[h + "self_attn.v_proj.v_scale"]
                )
        out[p + "attention.qkv.weight"] = torch.cat([part(x, 0) for x in qkv], dim=0)
        for ours, theirs, dim in (
            ("attention.dense", "self_attn.o_proj", 1),
            ("mlp.fc", "mlp.gate_proj", 0),
            ("mlp.gate", "mlp.up_proj", 0),
            ("mlp.proj", "mlp.down_proj", 1),
        ):
            out[f"{p}{ours}.weight"] = part(t[f"{h}{theirs}.weight"], dim)
            if fp8:
                out[f"{p}{ours}.weights_scaling_factor"] = scal(t[f"{h}{theirs}.weight_scale"])
                out[f"{p}{ours}.activation_scaling_factor"] = scal(t[f"{h}{theirs}.input_scale"])
    emb = t["model.embed_tokens.weight"]
    head = t.get("lm_head.weight", emb)
    pad = (-head.shape[0]) % tp
    if pad:
        head = torch.cat([head, head.new_zeros(pad, head.shape[1])], dim=0)
    out["transformer.vocab_embedding.weight"] = emb.contiguous()
    out["lm_head.weight"] = part(head, 0).clone()  # never share storage with the embedding
    out["transformer.ln_f.weight"] = t["model.norm.weight"]
    return out


def write_trtllm_checkpoint(
    cfg: dict[str, Any], tensors: dict[str, torch.Tensor], dest: str | Path, *, tp: int = 1
) -> list[str]:
    """Write config.json and rank{r}.safetensors into the existing folder `dest`.

    Args:
        cfg: the HF config dict.
        tensors: HF-named tensors: bf16 weights, or an FP8 checkpoint's tensors (FP8 weights
            with `weight_scale` / `input_scale`, optional `k_scale` / `v_scale`).
        tp: tensor-parallel ranks.

    Returns:
        The names of the files written.
    """
    import torch
    from safetensors.torch import save_file

    check_tp(cfg, tp)
    fp8 = "model.layers.0.self_attn.q_proj.weight_scale" in tensors
    kv_fp8 = "model.layers.0.self_attn.k_proj.k_scale" in tensors
    t = {
        k: (v if v.dtype == torch.float8_e4m3fn or k.endswith("_scale") else v.to(torch.bfloat16))
        for k, v in tensors.items()
    }
    dest = Path(dest)
    atomic_write_json(dest / "config.json", trtllm_config(cfg, tp=tp, fp8=fp8, kv_fp8=kv_fp8))
    for r in range(tp):
        save_file(_rank_weights(cfg, t, tp, r), str(dest / f"rank{r}.safetensors"))
    return ["config.json", *(f"rank{r}.safetensors" for r in range(tp))]


def hf_config_of(tcfg: dict[str, Any]) -> dict[str, Any]:
    """An HF LlamaConfig dict from a TensorRT-LLM config, in both the transformers 4.57 and 5.x
    spellings of the rope settings (`model.io.compat_config`)."""

    scaling = tcfg.get("rotary_scaling") or None
    return compat_config(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": tcfg["vocab_size"],
            "hidden_size": tcfg["hidden_size"],
            "intermediate_size": tcfg["intermediate_size"],
            "num_hidden_layers": tcfg["num_hidden_layers"],
            "num_attention_heads": tcfg["num_attention_heads"],
            "num_key_value_heads": tcfg["num_key_value_heads"],
            "head_dim": tcfg["head_size"],
            "hidden_act": tcfg["hidden_act"],
            "rms_norm_eps": tcfg["norm_epsilon"],
            "max_position_embeddings": tcfg["max_position_embeddings"],
            "rope_theta": tcfg["rotary_base"],
            "rope_scaling": scaling,
            "tie_word_embeddings": tcfg["tie_word_embeddings"],
        }
    )


def read_trtllm_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(HF config dict, HF state dict in float32) from a legacy TensorRT-LLM checkpoint.

    Merges the tp shards, un-fuses qkv and dequantizes FP8 weights with their scales.

    Raises:
        InputError: config or a rank file is missing.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError("no config.json: not a TensorRT-LLM checkpoint", where=str(path))
    tcfg = json.loads((path / "config.json").read_text())
    tp = int(tcfg["mapping"]["tp_size"])
    files = [path / f"rank{r}.safetensors" for r in range(tp)]
    if missing := [f.name for f in files if not f.is_file()]:
        raise InputError(f"rank files missing: {missing}", where=str(path))
    ranks = [load_file(str(f)) for f in files]

    def full(name: str, dim: int) -> torch.Tensor:
        parts = []
        for rk in ranks:
            w = rk[name + ".weight"]
            if w.dtype == torch.float8_e4m3fn:
                w = dequantize_fp8(w, rk[name + ".weights_scaling_factor"])
            parts.append(w.float())
        return torch.cat(parts, dim=dim)

    nq, nkv, hd = tcfg["num_attention_heads"], tcfg["num_key_value_heads"], tcfg["head_size"]
    sizes = [nq * hd // tp, nkv * hd // tp, nkv * hd // tp]
    sd: dict[str, torch.Tensor] = {}
    for i in range(tcfg["num_hidden_layers"]):
        h, p = f"model.layers.{i}.", f"transformer.layers.{i}."
        sd[h + "input_layernorm.weight"] = ranks[0][p + "input_layernorm.weight"].float()
        sd[h + "post_attention_layernorm.weight"] = ranks[0][p + "post_layernorm.weight"].float()
        per_rank = [torch.split(x, sizes, dim=0) for x in full(p + "attention.qkv", 0).chunk(tp)]
        for j, x in enumerate("qkv"):
            sd[f"{h}self_attn.{x}_proj.weight"] = torch.cat([pr[j] for pr in per_rank], dim=0)
        for ours, theirs, dim in (
            ("attention.dense", "self_attn.o_proj", 1),
            ("mlp.fc", "mlp.gate_proj", 0),
            ("mlp.gate", "mlp.up_proj", 0),
            ("mlp.proj", "mlp.down_proj", 1),
        ):
            sd[f"{h}{theirs}.weight"] = full(p + ours, dim)
    sd["model.embed_tokens.weight"] = ranks[0]["transformer.vocab_embedding.weight"].float()
    sd["model.norm.weight"] = ranks[0]["transformer.ln_f.weight"].float()
    sd["lm_head.weight"] = full("lm_head", 0)[: tcfg["vocab_size"]]
    return hf_config_of(tcfg), sd


def load_trtllm_checkpoint(path: str | Path) -> LlamaForCausalLM:
    """A float32 `LlamaForCausalLM` rebuilt from a TensorRT-LLM checkpoint (for checks)."""
    from transformers import LlamaForCausalLM

    cfg, sd = read_trtllm_checkpoint(path)
    model = LlamaForCausalLM(llama_config(cfg))
    if cfg["tie_word_embeddings"]:
        sd.pop("lm_head.weight")
    res = model.load_state_dict(sd, strict=False)
    if res.unexpected_keys or [k for k in res.missing_keys if k != "lm_head.weight"]:
        raise InputError(f"TensorRT-LLM checkpoint does not map back to HF: {res}")
    return model.eval()


def _rank_specs(cfg: dict[str, Any], tp: int) -> list[TensorSpec]:
    """The tensors of one rank file of a bf16 TensorRT-LLM checkpoint, in write order."""
    s = LlamaShape.from_config(cfg)
    h, hd, f = s.hidden_size, s.head_dim, s.intermediate_size
    qkv = (s.num_attention_heads + 2 * s.num_key_value_heads) * hd // tp
    out: list[TensorSpec] = []
    for i in range(s.num_hidden_layers):
        p = f"transformer.layers.{i}."
        out += [
            TensorSpec(p + "input_layernorm.weight", "bfloat16", (h,)),
            TensorSpec(p + "post_layernorm.weight", "bfloat16", (h,)),
            TensorSpec(p + "attention.qkv.weight", "bfloat16", (qkv, h)),
            TensorSpec(
                p + "attention.dense.weight", "bfloat16", (h, s.num_attention_heads * hd // tp)
            ),
            TensorSpec(p + "mlp.fc.weight", "bfloat16", (f // tp, h)),
            TensorSpec(p + "mlp.gate.weight", "bfloat16", (f // tp, h)),
            TensorSpec(p + "mlp.proj.weight", "bfloat16", (h, f // tp)),
        ]
    head_rows = (s.vocab_size + (-s.vocab_size) % tp) // tp
    out += [
        TensorSpec("transformer.vocab_embedding.weight", "bfloat16", (s.vocab_size, h)),
        TensorSpec("lm_head.weight", "bfloat16", (head_rows, h)),
        TensorSpec("transformer.ln_f.weight", "bfloat16", (h,)),
    ]
    return out


def stream_trtllm(
    model_dir: str | Path, dest: str | Path, tp: int, record: dict[str, Any]
) -> list[str]:
    """Write a bf16 legacy TensorRT-LLM checkpoint (config.json + rank{r}.safetensors) into
    the existing folder `dest`, reading each source tensor once and writing its part to every
    rank file (splits as `trtllm_ckpt._rank_weights`)."""
    import torch

    dest = Path(dest)
    cfg, reader = source_reader(model_dir)
    check_tp(cfg, tp)
    atomic_write_json(dest / "config.json", trtllm_config(cfg, tp=tp, fp8=False, kv_fp8=False))
    specs = _rank_specs(cfg, tp)
    writers = [SafetensorsWriter(dest / f"rank{r}.safetensors", specs) for r in range(tp)]

    def get(name: str) -> torch.Tensor:
        return reader.get(name).to(torch.bfloat16)

    def put(name: str, full: torch.Tensor | None, dim: int | None = None, parts=None) -> None:
        parts = parts or (
            [full] * tp if dim is None else [c.contiguous() for c in torch.chunk(full, tp, dim)]
        )
        for w, part in zip(writers, parts, strict=True):
            w.write(name, part)

    try:
        for i in range(int(cfg["num_hidden_layers"])):
            h, p = f"model.layers.{i}.", f"transformer.layers.{i}."
            put(p + "input_layernorm.weight", get(h + "input_layernorm.weight"))
            put(p + "post_layernorm.weight", get(h + "post_attention_layernorm.weight"))
            qkv = [torch.chunk(get(f"{h}self_attn.{x}_proj.weight"), tp, 0) for x in "qkv"]
            put(
                p + "attention.qkv.weight",
                None,
                parts=[torch.cat(z, 0) for z in zip(*qkv, strict=True)],
            )
            del qkv
            for ours, theirs, dim in TRT_LINEARS:
                put(f"{p}{ours}.weight", get(f"{h}{theirs}.weight"), dim)
        emb = get("model.embed_tokens.weight")
        put("transformer.vocab_embedding.weight", emb)
        head = emb if cfg.get("tie_word_embeddings", False) else None
        del emb  # untied: the embedding unmapped before the head is read (8B: 1 GB each)
        if head is None:
            head = get("lm_head.weight")
        pad = (-head.shape[0]) % tp
        if pad:
            head = torch.cat([head, head.new_zeros(pad, head.shape[1])], dim=0)
        put("lm_head.weight", head, 0)
        del head
        put("transformer.ln_f.weight", get("model.norm.weight"))
    finally:
        for w in writers:
            w.close()
    atomic_write_json(dest / "provenance.json", record)
    return ["config.json", *(f"rank{r}.safetensors" for r in range(tp)), "provenance.json"]


class TrtllmTensors:
    """HF-named tensors of a bf16 legacy TensorRT-LLM checkpoint, one at a time: qkv un-fused
    and every split merged over the rank files (what `read_trtllm_checkpoint` returns, without
    holding the model)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise InputError("no config.json: not a TensorRT-LLM checkpoint", where=str(path))
        self.tcfg = json.loads(cfg_path.read_text())
        self.config = hf_config_of(self.tcfg)
        self.tp = int(self.tcfg["mapping"]["tp_size"])
        self.ranks = [TensorReader.single(path / f"rank{r}.safetensors") for r in range(self.tp)]

    def _cat(self, name: str, dim: int) -> torch.Tensor:
        import torch

        if len(self.ranks) == 1:  # no copy beside the mapped tensor (8B lm_head: 1 GB)
            return self.ranks[0].get(name)
        # one rank's part mapped at a time, copied into the merged tensor (not every part
        # mapped beside the merged copy: at tp=2 half the 8B lm_head, 0.5 GB, less at the peak)
        spec = self.ranks[0].specs[name]
        shape = list(spec.shape)
        shape[dim] = sum(r.specs[name].shape[dim] for r in self.ranks)
        out = torch.empty(shape, dtype=getattr(torch, spec.dtype))
        at = 0
        for r in self.ranks:
            part = r.get(name)
            out.narrow(dim, at, part.shape[dim]).copy_(part)
            at += part.shape[dim]
            del part
        return out

    def get(self, name: str) -> torch.Tensor:
        import torch

        t = self.tcfg
        if name == "model.embed_tokens.weight":
            return self.ranks[0].get("transformer.vocab_embedding.weight")
        if name == "model.norm.weight":
            return self.ranks[0].get("transformer.ln_f.weight")
        if name == "lm_head.weight":
            return self._cat("lm_head.weight", 0)[: t["vocab_size"]]
        i, rest = name.split(".")[2], name.split(".", 3)[3]
        p = f"transformer.layers.{i}."
        if rest == "input_layernorm.weight":
            return self.ranks[0].get(p + "input_layernorm.weight")
        if rest == "post_attention_layernorm.weight":
            return self.ranks[0].get(p + "post_layernorm.weight")
        if rest.startswith("self_attn.") and rest[10] in "qkv" and rest[11:] == "_proj.weight":
            nq, nkv, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_size"]
            sizes = [nq * hd // self.tp, nkv * hd // self.tp, nkv * hd // self.tp]
            j = "qkv".index(rest[10])
            parts = [
                torch.split(r.get(p + "attention.qkv.weight"), sizes, 0)[j] for r in self.ranks
            ]
            return torch.cat(parts, 0)
        for ours, theirs, dim in TRT_LINEARS:
            if rest == f"{theirs}.weight":
                return self._cat(f"{p}{ours}.weight", dim)
        raise KeyError(name)


def write(
    src: Path,
    dest: Path,
    settings: ExportSettings,
    calibration: Split | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The `trtllm-ckpt` writer: BF16 from the HF tensors, FP8 through an HF FP8 export."""
    import tempfile

    info: dict[str, Any] = {}
    if settings.dtype != "fp8":  # scale: bf16 streams tensor by tensor, never the whole model
        return {"files": stream_trtllm(src, dest, settings.get("tp_size"), record)}
    with tempfile.TemporaryDirectory(prefix=".fp8-hf.", dir=dest.parent) as tmp:
        info = write_hf_fp8(src, Path(tmp), settings, calibration, record)
        cfg, tensors = read_fp8_state(tmp)
    files = write_trtllm_checkpoint(cfg, tensors, dest, tp=settings.get("tp_size"))
    atomic_write_json(dest / "provenance.json", record)
    return {**info, "files": [*files, "provenance.json"]}


def _trtllm_rope(path: Path):
    """(theta, scaling) as trtllm-build reads them: `rotary_base`, `rotary_scaling`."""
    tcfg = json.loads((Path(path) / "config.json").read_text())
    return float(tcfg["rotary_base"]), tcfg.get("rotary_scaling") or None


def _read(path: Path):
    return model_logits(load_trtllm_checkpoint(path))


FORMAT = ExportFormat(
    name="trtllm-ckpt",
    help="legacy TensorRT-LLM checkpoint (config.json + rank{r}.safetensors) for trtllm-build",
    write=write,
    read=_read,
    check=lambda dtype: "fp8" if dtype == "fp8" else "exact",
    dtypes=("bf16", "fp8"),
    options=("tp_size", "trtllm_dtype"),
    modules=lambda dtype: ("modelopt",) if dtype == "fp8" else (),
    rope=lambda path: _trtllm_rope(path),
)
