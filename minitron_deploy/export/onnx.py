"""ONNX export with a KV cache in the I/O layout of onnxruntime-genai and TensorRT, and a check.

Graph inputs: `input_ids` [batch, seq] int64, `attention_mask` [batch, past+seq] int64 (1 = real
token), `position_ids` [batch, seq] int64, `past_key_values.{i}.key|value`
[batch, kv_heads, past, head_dim] float32. Outputs: `logits` [batch, seq, vocab] float32 and
`present.{i}.key|value` [batch, kv_heads, past+seq, head_dim]. A first step passes past length 0.

The graph is traced from a small explicit Llama forward (`_KVLlama`) that reuses the HF
modules' weights, norms and MLPs and the HF rotary frequencies (llama3 scaling included), so
what is exported is plain MatMul/Softmax math, and width-pruned shapes (hidden != heads x
head_dim) need no special case. Weights are stored as external data (`model.onnx.data`).
A `genai_config.json` beside it lets onnxruntime-genai load the folder (`og.Model(dir)`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import DependencyError, InputError, StageError
from minitron_deploy.export.format import ExportFormat, ExportSettings
from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.model.io import copy_tokenizer, load_llama

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.shards import Split

ONNX_FILE = "model.onnx"
OPSET = 18


def _kv_llama(model: LlamaForCausalLM):
    import torch

    class _KVLlama(torch.nn.Module):
        """Llama forward with explicit past/present KV tensors (no HF cache objects)."""

        def __init__(self, m: LlamaForCausalLM):
            super().__init__()
            c = m.config
            self.m = m
            self.nq, self.nkv = c.num_attention_heads, c.num_key_value_heads
            self.hd = c.head_dim or c.hidden_size // c.num_attention_heads
            rot = m.model.rotary_emb
            self.register_buffer("inv_freq", rot.inv_freq.detach().float().clone())
            self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))

        def forward(self, input_ids, attention_mask, position_ids, *past):
            b, s = input_ids.shape
            x = self.m.model.embed_tokens(input_ids)
            freqs = position_ids[..., None].float() * self.inv_freq
            emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [b, 1, s, hd]
            cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
            t = attention_mask.shape[1]
            q_pos = torch.arange(s, device=x.device) + (t - s)
            allowed = torch.arange(t, device=x.device)[None, :] <= q_pos[:, None]
            allowed = allowed[None, None] & attention_mask[:, None, None, :].bool()
            bias = torch.zeros(allowed.shape, dtype=x.dtype).masked_fill(
                ~allowed, torch.finfo(x.dtype).min
            )
            presents = []
            for i, layer in enumerate(self.m.model.layers):
                at = layer.self_attn
                h = layer.input_layernorm(x)
                q = at.q_proj(h).view(b, s, self.nq, self.hd).transpose(1, 2)
                k = at.k_proj(h).view(b, s, self.nkv, self.hd).transpose(1, 2)
                v = at.v_proj(h).view(b, s, self.nkv, self.hd).transpose(1, 2)
                q, k = q * cos + _rotate(q) * sin, k * cos + _rotate(k) * sin
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                presents += [k, v]
                rep = self.nq // self.nkv
                kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                scores = q @ kr.transpose(2, 3) * self.hd**-0.5 + bias
                o = (scores.softmax(-1) @ vr).transpose(1, 2).reshape(b, s, self.nq * self.hd)
                x = x + at.o_proj(o)
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            logits = self.m.lm_head(self.m.model.norm(x))
            return (logits, *presents)

    def _rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    return _KVLlama(model).eval()


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_onnx(model_dir: str | Path, dest: str | Path) -> list[str]:
    """Export `model_dir` (float32) to `dest/model.onnx` (+ external data) and check it.

    Returns:
        The names of the files written.
    """
    import torch

    _require()
    model = load_llama(model_dir, dtype="float32")
    c = model.config
    n, hd = c.num_hidden_layers, c.head_dim
    wrapper = _kv_llama(model)
    b, s, p = 2, 5, 3  # example shapes; all dims are exported as dynamic
    ids = torch.randint(0, c.vocab_size, (b, s))
    mask = torch.ones(b, p + s, dtype=torch.long)
    pos = torch.arange(p, p + s)[None].expand(b, s).contiguous()
    past = [torch.zeros(b, c.num_key_value_heads, p, hd) for _ in range(2 * n)]
    ins, outs = io_names(n)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    axes.update({k: {0: "batch", 2: "past"} for k in ins[3:]})
    axes.update({k: {0: "batch", 2: "total"} for k in outs[1:]})
    path = Path(dest) / ONNX_FILE
    # The TorchScript exporter (dynamo=False) traces our plain-tensor forward reliably with
    # dynamic axes; it warns that it is deprecated in favour of the dynamo exporter.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (ids, mask, pos, *past),
            str(path),
            input_names=ins,
            output_names=outs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            external_data=True,
        )
    _tidy_external_data(path)
    copy_tokenizer(model_dir, dest)
    meta = {
        "num_hidden_layers": n,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": hd,
        "vocab_size": c.vocab_size,
        "inputs": ins,
        "outputs": outs,
        "opset": OPSET,
    }
    (Path(dest) / "onnx_io.json").write_text(json.dumps(meta, indent=2) + "\n")
    genai = genai_config(c.to_dict(), model.generation_config)
    (Path(dest) / "genai_config.json").write_text(json.dumps(genai, indent=2) + "\n")
    check_onnx(path)
    return sorted(x.name for x in Path(dest).iterdir())


def genai_config(cfg: dict[str, Any], generation_config: Any = None) -> dict[str, Any]:
    """onnxruntime-genai's `genai_config.json` for our graph (its "llama" type, our I/O names).

    `past_present_share_buffer` is off: our cache inputs grow by concatenation.
    """
    gen = generation_config.to_dict() if generation_config is not None else {}

    def first(key: str, default: int | None) -> int | None:
        v = gen.get(key, cfg.get(key, default))
        return v[0] if isinstance(v, list) else v

    context = int(cfg.get("max_position_embeddings", 2048))
    return {
        "model": {
            "type": "llama",
            "bos_token_id": first("bos_token_id", None),
            "eos_token_id": first("eos_token_id", None),
            "pad_token_id": first("pad_token_id", 0) or 0,
            "vocab_size": cfg["vocab_size"],
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": ONNX_FILE,
                "head_size": cfg.get("head_dim")
                or cfg["hidden_size"] // cfg["num_attention_heads"],
                "hidden_size": cfg["hidden_size"],
                "num_attention_heads": cfg["num_attention_heads"],
                "num_hidden_layers": cfg["num_hidden_layers"],
                "num_key_value_heads": cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "max_length": context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "top_k": 1,
            "top_p": 1.0,
            "temperature": 1.0,
            "repetition_penalty": 1.0,
            "length_penalty": 1.0,
            "early_stopping": True,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
        },
    }


def _tidy_external_data(path: Path) -> None:
    """Store all weights in one `model.onnx.data` file beside the graph."""
    import onnx

    proto = onnx.load(str(path), load_external_data=True)
    for f in path.parent.iterdir():
        if f != path and f.suffix not in (".json", ".txt", ".jinja", ".model"):
            f.unlink()
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise DependencyError(
            f"ONNX export needs the onnx and onnxruntime packages ({e})",
            fix="pip install 'onnx>=1.17' 'onnxruntime>=1.20' (or: pip install -e '.[deploy]')",
        ) from e


def check_onnx(path: str | Path) -> None:
    """Run `onnx.checker` (full check, weights included) on an exported graph.

    Raises:
        InputError: the model is invalid.
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        path = path / ONNX_FILE
    if not path.is_file():
        raise InputError(f"{path.name} not found", where=str(path.parent))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise StageError(f"invalid ONNX model: {e}", where=str(path)) from e


def onnx_session(path: str | Path):
    """An onnxruntime CPU inference session for an exported folder or .onnx file."""
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        path = path / ONNX_FILE
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(
    session, input_ids, attention_mask=None, past: list[Any] | None = None, past_len: int = 0
) -> tuple[Any, list[Any]]:
    """One forward in onnxruntime: (logits, presents) as numpy arrays.

    Args:
        session: from `onnx_session`.
        input_ids: int64 [batch, seq] (numpy or torch).
        attention_mask: int64 [batch, past+seq]; all ones when None.
        past: the previous call's presents; empty cache when None.
        past_len: length of `past` (0 when None).
    """
    import numpy as np

    ids = np.asarray(input_ids, dtype=np.int64)
    b, s = ids.shape
    meta = {i.name: i for i in session.get_inputs()}
    n = (len(meta) - 3) // 2
    kv_heads, hd = meta["past_key_values.0.key"].shape[1], meta["past_key_values.0.key"].shape[3]
    if past is None:
        past = [np.zeros((b, kv_heads, 0, hd), np.float32) for _ in range(2 * n)]
    mask = (
        np.ones((b, past_len + s), np.int64)
        if attention_mask is None
        else np.asarray(attention_mask, dtype=np.int64)
    )
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -s:].astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    feed.update({name: past[j] for j, name in enumerate(io_names(n)[0][3:])})
    outs = session.run(None, feed)
    return outs[0], outs[1:]


def write(
    src: Path,
    dest: Path,
    settings: ExportSettings,
    calibration: Split | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The `onnx` writer of the export table (a float32 graph)."""

    files = export_onnx(src, dest)
    atomic_write_json(dest / "provenance.json", record)
    return {"files": [*files, "provenance.json"]}


def _read(path: Path):
    import torch

    session = onnx_session(path)
    return lambda tokens: torch.from_numpy(run_onnx(session, tokens.numpy())[0])


FORMAT = ExportFormat(
    name="onnx",
    help="ONNX graph (float32) with KV-cache inputs/outputs (onnxruntime, TensorRT)",
    write=write,
    read=_read,
    check=lambda dtype: "float32",
    modules=lambda dtype: ("onnx", "onnxruntime"),
)
