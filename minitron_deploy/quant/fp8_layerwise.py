"""Layer-sequential FP8 calibration and export, for models that do not fit in memory.

Writes what `export.hf_fp8` writes through Model-Optimizer (`mtq.quantize` with
`FP8_DEFAULT_CFG` [+ `FP8_KV_CFG`], then `export_hf_checkpoint`), without holding the model:
the decoder runs one layer at a time (`model.layerwise`, float32 weights under the device's
autocast, as `quant.fp8.calibrate_fp8` runs the whole model), hooks collect the same maxima
Model-Optimizer's max calibration collects, and each layer's tensors are written while it is
loaded. The math is Model-Optimizer 0.47's (read from its source, checked bitwise against its
output in tests/unit/test_fp8_layerwise.py):

- input scale of a linear = max |input| over all calibration tokens / 448 (its input
  quantizer sits before the matmul, so it sees the tensor the previous op produced);
- weight scale = max |W| / 448 of the float32 weight; weight = (W / scale) cast to
  float8_e4m3fn (round to nearest, no clamp needed); an all-zero tensor gets amax 448;
- with an FP8 KV cache, k_scale / v_scale = max |key| / 448 (keys after RoPE, as the attention
  function receives them) and max |value| / 448;
- everything else (embeddings, norms, lm_head) in bfloat16; config.json carries
  `quantization_config` and hf_quant_config.json the Model-Optimizer record, both built with
  Model-Optimizer's own converter.

Calibration activations are not quantized while calibrating (max calibration collects, then
quantizes), so the hidden states passed between layers are the float ones, as in the whole-model
pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import read_config, weight_files
from minitron_deploy.model.layerwise import LayerwiseLlama
from minitron_deploy.model.shapes import LINEARS
from minitron_deploy.quant.fp8 import FP8_MAX

if TYPE_CHECKING:
    import torch

IGNORED = ["lm_head", "model.embed_tokens"]  # left unquantized, as FP8_DEFAULT_CFG does
SHARD_BYTES = 2**30  # output held before a shard is written: bounds the peak


def _scale(amax: torch.Tensor) -> torch.Tensor:
    """Model-Optimizer's export scale: amax (0 -> 448, clamped to float32's range) / 448."""
    import torch

    amax = amax.float().reshape(())
    amax = torch.where(amax == 0, torch.full_like(amax, FP8_MAX), amax)
    fi = torch.finfo(torch.float32)
    return amax.clamp(min=fi.tiny, max=fi.max) / FP8_MAX


class _ShardWriter:
    """Safetensors shards of about `limit` bytes, written as tensors come; an index at the end
    when there is more than one shard (one shard: model.safetensors, as save_pretrained)."""

    def __init__(self, dest: Path, limit: int = SHARD_BYTES):
        self.dest, self.limit = dest, limit
        self.buf: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[Path, list[str]]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        self.buf[name] = t.contiguous()
        self.size += t.numel() * t.element_size()
        if self.size >= self.limit:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buf:
            return
        f = self.dest / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.buf, str(f), metadata={"format": "pt"})
        self.parts.append((f, list(self.buf)))
        self.buf, self.size = {}, 0

    def finish(self) -> list[str]:
        self.flush()
        n = len(self.parts)
        if n == 1:
            self.parts[0][0].rename(self.dest / "model.safetensors")
            return ["model.safetensors"]
        weight_map, total, names = {}, 0, []
        for i, (f, keys) in enumerate(self.parts):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            f.rename(self.dest / name)
            names.append(name)
            total += (self.dest / name).stat().st_size
            weight_map.update(dict.fromkeys(keys, name))
        atomic_write_json(
            self.dest / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
        return names


def hf_quant_config(kv_cache_fp8: bool) -> dict[str, Any]:
    """The hf_quant_config.json Model-Optimizer writes for FP8 (+ FP8 KV cache)."""
    import modelopt

    quant = {
        "quant_algo": "FP8",
        "kv_cache_quant_algo": "FP8" if kv_cache_fp8 else None,
        "exclude_modules": list(IGNORED),
    }
    return {
        "producer": {"name": "modelopt", "version": modelopt.__version__},
        "quantization": quant,
    }


def export_fp8_layerwise(
    model_dir: str | Path,
    dest: str | Path,
    tokens: torch.Tensor,
    *,
    kv_cache_fp8: bool = False,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate and write the FP8 tensors, config.json, generation_config.json and
    hf_quant_config.json of `model_dir` into the existing folder `dest`, one layer at a time.

    Returns:
        {"shards": [file names]}.
    """
    import torch
    from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format
    from transformers import GenerationConfig
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    dest = Path(dest)
    lw = LayerwiseLlama(model_dir, dtype="float32")
    net = lw.model.model
    amax: dict[str, torch.Tensor] = {}
    rope: dict[int, Any] = {}

    def track_max(name: str, x: torch.Tensor) -> None:
        m = x.detach().abs().amax().float()
        amax[name] = m if name not in amax else torch.maximum(amax[name], m)

    def input_hook(name: str):
        return lambda _m, args: track_max(name, args[0])

    def attn_pre(i: int):
        def hook(_m, args, kwargs):
            rope[i] = kwargs["position_embeddings"]

        return hook

    def key_hook(i: int, attn: Any):
        def hook(_m, _inp, out):
            shape = (*out.shape[:-1], -1, attn.head_dim)
            k = out.view(shape).transpose(1, 2)
            cos, sin = rope[i]
            _, k = apply_rotary_pos_emb(k, k, cos, sin)  # what the attention function gets
            track_max(f"model.layers.{i}.self_attn.k_proj.k", k)

        return hook

    def value_hook(i: int):
        return lambda _m, _inp, out: track_max(f"model.layers.{i}.self_attn.v_proj.v", out)

    hooks = []
    for i, layer in enumerate(net.layers):
        for lin in LINEARS:
            mod = layer.get_submodule(lin)
            hooks.append(mod.register_forward_pre_hook(input_hook(f"model.layers.{i}.{lin}")))
        if kv_cache_fp8:
            a = layer.self_attn
            hooks.append(a.register_forward_pre_hook(attn_pre(i), with_kwargs=True))
            hooks.append(a.k_proj.register_forward_hook(key_hook(i, a)))
            hooks.append(a.v_proj.register_forward_hook(value_hook(i)))

    out = _ShardWriter(dest)
    bf16 = torch.bfloat16
    out.add("model.embed_tokens.weight", lw.tensor("model.embed_tokens.weight", bf16))

    def write_layer(i: int, layer: Any) -> None:
        pre = f"model.layers.{i}."
        for name, p in layer.named_parameters():
            mod = name.rsplit(".", 1)[0]
            if mod in LINEARS:
                w = p.detach().float()
                ws = _scale(w.abs().amax())
                out.add(pre + name, (w / ws).to(torch.float8_e4m3fn))
                out.add(pre + mod + ".weight_scale", ws)
                out.add(pre + mod + ".input_scale", _scale(amax.pop(pre + mod)))
            else:
                out.add(pre + name, p.detach().to(bf16))
        if kv_cache_fp8:
            for kv in ("k", "v"):
                out.add(
                    f"{pre}self_attn.{kv}_proj.{kv}_scale",
                    _scale(amax.pop(f"{pre}self_attn.{kv}_proj.{kv}")),
                )
        rope.pop(i, None)

    try:
        lw.decoder_pass(
            tokens.split(batch_size),
            final_norm=False,
            after_layer=write_layer,
            autocast=compute_dtype("auto"),
            progress="FP8 calibration (by layer)" if progress else None,
        )
    finally:
        for h in hooks:
            h.remove()
    out.add("model.norm.weight", lw.tensor("model.norm.weight", bf16))
    if not lw.config.tie_word_embeddings:
        out.add("lm_head.weight", lw.tensor("lm_head.weight", bf16))
    shards = out.finish()

    config = lw.config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32  # as the whole-model path saves it (the caller rewrites it)
    config.save_pretrained(str(dest))
    src_gen = Path(model_dir) / "generation_config.json"
    gen = (
        GenerationConfig.from_pretrained(str(model_dir))
        if src_gen.is_file()
        else GenerationConfig.from_model_config(config)
    )
    gen.save_pretrained(str(dest))
    hq = hf_quant_config(kv_cache_fp8)
    (dest / "hf_quant_config.json").write_text(json.dumps(hq, indent=4))
    cfg = json.loads((dest / "config.json").read_text())
    cfg["quantization_config"] = convert_hf_quant_config_format(hq)
    atomic_write_json(dest / "config.json", cfg)
    return {"shards": shards}


def check_fp8_layout(dest: str | Path) -> None:
    """Stream the written tensors' names and dtypes (no data read): every linear of every layer
    has a float8_e4m3fn weight, a weight_scale and an input_scale.

    Raises:
        RuntimeError: a tensor is missing or of the wrong dtype (a bug, not an input error).
    """
    from safetensors import safe_open

    cfg = read_config(dest)
    dtypes: dict[str, str] = {}
    for f in weight_files(dest):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118
                dtypes[k] = sf.get_slice(k).get_dtype()
    bad = []
    for i in range(int(cfg["num_hidden_layers"])):
        for lin in LINEARS:
            pre = f"model.layers.{i}.{lin}."
            if dtypes.get(pre + "weight") != "F8_E4M3":
                bad.append(pre + "weight")
            bad += [pre + s for s in ("weight_scale", "input_scale") if pre + s not in dtypes]
    if bad:
        raise RuntimeError(f"FP8 export is missing or mistyped {len(bad)} tensor(s): {bad[:3]}")
