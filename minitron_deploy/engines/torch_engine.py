"""The built-in engine: a small Llama decoder in plain torch that runs on CPU and CUDA.

Per call: a preallocated KV cache [layers, batch, kv_heads, max_len, head_dim], a batched prefill
of the prompts (causal SDPA, GQA via `enable_gqa`), lm_head on the last position only, then greedy
decode one token per step. Numerics follow transformers' Llama (RMSNorm in float32, rope tables
from transformers' own rotary module, cos/sin cast to the compute dtype), so greedy tokens match
HF `generate`. On CUDA the decode step can be compiled (`compile=True`) and captured in a CUDA
graph (`cuda_graphs=True`); the graph path attends over the whole cache with a position mask so
that every step has the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minitron_deploy.engines.base import (
    Sampling,
    as_rows,
    check_lengths,
    eos_ids_of,
    is_fp8_checkpoint,
    truncate_at_eos,
)
from minitron_deploy.engines.torch_weights import (
    Spec,
    can_prepack,
    load_weights,
    prepack_weights,
    read_safetensors,
    rope_tables,
)
from minitron_deploy.errors import InputError
from minitron_deploy.export.hf_fp8 import kv_cache_scales
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import read_config
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.quant.fp8 import FP8_MAX


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half's negation folded into the sin table.

    x [B, n, heads, D] (q and k heads together); cos, sin_signed [n, D]. Negating the first
    half of sin is exact, so this equals transformers' `apply_rotary_pos_emb` bit for bit.
    """
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + swapped * sin_signed[:, None]


def _attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Decode attention for one query position with GQA by reshaping (K/V read once, no copy).

    q [B, H, 1, D]; k, v [B, KV, T, D]; mask [T] bool (True = attend) or None.
    """
    b, h, _, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, kv, h // kv, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * d**-0.5  # [B, KV, G, T]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(b, h, 1, d)


class _Chooser:
    """Picks each row's next token from float32 logits [B, V] by its `Sampling`, and keeps the
    log-probability (under the model's own distribution) of each token it picked."""

    def __init__(self, sampling: list[Sampling], device: torch.device):
        self.sampling = sampling
        self.gens = []
        for s in sampling:
            g = None
            if not s.greedy:  # CPU generators: the same draws on every device
                g = torch.Generator()
                g.manual_seed(s.seed if s.seed is not None else int(torch.seed() % (1 << 63)))
            self.gens.append(g)
        self.steps: list[list[float]] = [[] for _ in sampling]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        tok = logits.argmax(-1)
        for i, (s, g) in enumerate(zip(self.sampling, self.gens, strict=True)):
            if g is None:
                continue
            row = logits[i] / s.temperature
            if s.top_k and s.top_k < row.numel():
                kth = torch.topk(row, s.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            if s.top_p < 1.0:
                order = row.argsort(descending=True)
                probs = row[order].softmax(-1)
                # keep the smallest prefix whose mass reaches top_p (always the first token)
                drop = probs.cumsum(-1) - probs >= s.top_p
                row[order[drop]] = float("-inf")
            probs = row.softmax(-1).cpu()
            tok[i] = int(torch.multinomial(probs, 1, generator=g))
        lp = logits.log_softmax(-1).gather(1, tok[:, None])[:, 0].double().cpu()
        for i, v in enumerate(lp.tolist()):
            self.steps[i].append(v)
        return tok


class TorchEngine:
    """Built-in greedy engine (see module docstring).

    Args:
        model_dir: HF checkpoint folder (BF16/FP32, or FP8 from Model-Optimizer's export).
        dtype: "auto" (the device's fastest native dtype: bfloat16 on CUDA and on CPUs with
            AVX512-BF16/AMX, else float32; see `hardware`), "bfloat16", "float16", "float32".
        device: "cpu" or "cuda[:N]".
        compile: `torch.compile` the decode step (CUDA only; ignored with a note on CPU).
        cuda_graphs: capture the decode step in a CUDA graph per (batch, max_len) (CUDA only).
        max_prefill_tokens: prefill in row chunks of at most this many tokens (bounds memory).
        kv_cache_dtype: "auto" (FP8 when the checkpoint has KV-cache scales, else the compute
            dtype), "fp8" (require the scales) or "compute" (ignore them).
        fp8_context_fmha: emulate TensorRT-LLM's FP8 context FMHA (needs an FP8 KV cache): in
            the context (prefill) phase Q, K and V enter attention as FP8 values quantized with
            the KV-cache scales, Q with the larger of the two (see `_fmha_fp8`).
        prepack: reorder dense weights once into oneDNN's blocked layout (CPU, float32 or
            bfloat16). None = for bfloat16 where supported (where it pays most); True also for
            float32. Results differ from `F.linear` in the last bits (another accumulation
            order), so float32 stays on `F.linear` by default: the same kernels as HF.
        config: config.json contents, to build from `state_dict` without a folder.
        state_dict: HF-named tensors (random-init benchmarks); FP8 linears allowed.
    """

    name = "torch"

    def __init__(
        self,
        model_dir: str | Path | None,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        compile: bool = False,
        cuda_graphs: bool = False,
        max_prefill_tokens: int = 65536,
        prepack: bool | None = None,
        kv_cache_dtype: str = "auto",
        fp8_context_fmha: bool = False,
        config: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ):
        if config is None:
            if model_dir is None:
                raise InputError("TorchEngine needs a model folder or a config + state_dict")
            config = read_config(model_dir)
        self.model_dir = None if model_dir is None else Path(model_dir)
        self.cfg = config
        self.spec = Spec.from_config(config)
        if state_dict is not None:
            self.fp8 = any(t.dtype == torch.float8_e4m3fn for t in state_dict.values())
        else:
            self.fp8 = is_fp8_checkpoint(self.model_dir)
        self.dtype = compute_dtype(dtype, device)  # auto: the device's fastest native dtype
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device cuda requested but CUDA is not available", fix="--device cpu")
        on_cuda = self.device.type == "cuda"
        self.compile, self.cuda_graphs = compile and on_cuda, cuda_graphs and on_cuda
        self.notes = (
            []
            if on_cuda or not (compile or cuda_graphs)
            else ["torch.compile / CUDA graphs requested but skipped on CPU"]
        )
        self.max_prefill_tokens = max(1, int(max_prefill_tokens))
        if state_dict is None:  # read once: weights, FP8 scales and KV-cache scales
            state_dict = read_safetensors(self.model_dir)
        self.kv_scales = self._kv_cache_scales(kv_cache_dtype, state_dict)
        if fp8_context_fmha and not self.kv_scales:
            raise InputError(
                "fp8_context_fmha needs an FP8 KV cache (k_scale / v_scale in the checkpoint)",
                fix="export with `kv_cache_fp8: true`, or leave fp8_context_fmha off",
            )
        self.fp8_context_fmha = fp8_context_fmha
        with torch.no_grad():
            self.w = load_weights(
                self.model_dir,
                self.spec,
                self.dtype,
                self.device,
                fp8=self.fp8,
                state_dict=state_dict,
            )
            supported = can_prepack(self.dtype, self.device)
            if prepack and not supported:
                self.notes.append(f"prepack skipped: not supported for {self.dtype} on {device}")
            wanted = self.dtype == torch.bfloat16 if prepack is None else prepack
            self.prepacked = supported and wanted
            if self.prepacked:
                self.w = prepack_weights(self.w)
        self.eos_ids = eos_ids_of(self.model_dir) if self.model_dir else set()
        self._rope_len = 0
        self._cache: dict[tuple[int, int], dict[str, Any]] = {}
        self._step = self._decode_static
        if self.compile:
            self._step = torch.compile(self._decode_static, dynamic=False, fullgraph=True)

    # ---- public API -------------------------------------------------------------------------
    def generate(
        self, input_ids: Any, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[list[int]]:
        """Greedy tokens after each prompt (new tokens only).

        Prompts of different lengths are run as separate equal-length groups (no padding).
        With `ignore_eos` every row gets exactly `max_new_tokens` tokens (benchmarks);
        otherwise rows stop after their first EOS and the loop ends when all have.
        """
        rows = as_rows(input_ids)
        check_lengths(rows, max_new_tokens, self.spec.max_position_embeddings, self.spec.vocab_size)
        out: list[list[int] | None] = [None] * len(rows)
        for length in sorted({len(r) for r in rows}):
            idx = [i for i, r in enumerate(rows) if len(r) == length]
            ids = torch.tensor([rows[i] for i in idx], dtype=torch.long, device=self.device)
            with torch.inference_mode():
                gen = self._generate_equal(ids, max_new_tokens, ignore_eos)
            for i, g in zip(idx, gen, strict=True):
                out[i] = g
        return [o or [] for o in out]

    def sample(
        self,
        input_ids: Any,
        max_new_tokens: int,
        sampling: list[Sampling] | None = None,
        ignore_eos: bool = False,
    ) -> list[tuple[list[int], list[float]]]:
        """New tokens per prompt with each row's own `Sampling` (greedy rows stay exact), and
        the log-probability of each token chosen (under the model's distribution).

        One generator per row (seeded by its `seed`) draws one sample per step, so a row gets
        the same tokens batched or alone, and streamed (`stream`) or not.
        """
        rows = as_rows(input_ids)
        check_lengths(rows, max_new_tokens, self.spec.max_position_embeddings, self.spec.vocab_size)
        sampling = sampling or [Sampling()] * len(rows)
        if len(sampling) != len(rows):
            raise InputError(f"{len(sampling)} sampling settings for {len(rows)} prompts")
        out: list[tuple[list[int], list[float]] | None] = [None] * len(rows)
        for length in sorted({len(r) for r in rows}):
            idx = [i for i, r in enumerate(rows) if len(r) == length]
            ids = torch.tensor([rows[i] for i in idx], dtype=torch.long, device=self.device)
            chooser = _Chooser([sampling[i] for i in idx], self.device)
            with torch.inference_mode():
                tokens = self._generate_equal(ids, max_new_tokens, ignore_eos, chooser)
            for j, (i, t) in enumerate(zip(idx, tokens, strict=True)):
                out[i] = (t, chooser.steps[j][: len(t)])
        return [o or ([], []) for o in out]

    def stream(
        self, input_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None
    ):
        """Yield (token, its log-probability) one step at a time for one prompt, until
        `max_new_tokens` or EOS (included)."""
        (row,) = as_rows([list(input_ids)])
        check_lengths(
            [row], max_new_tokens, self.spec.max_position_embeddings, self.spec.vocab_size
        )
        chooser = _Chooser([sampling or Sampling()], self.device)
        with torch.inference_mode():
            ids = torch.tensor([row], dtype=torch.long, device=self.device)
            n = ids.shape[1]
            cache = self._get_cache(1, n + max_new_tokens)
            tok = chooser(self._prefill(ids, cache).float())
            for t in range(max_new_tokens):
                yield int(tok[0]), chooser.steps[0][t]
                if int(tok[0]) in self.eos_ids or t + 1 == max_new_tokens:
                    return
                tok = chooser(self._decode_eager(tok, n + t, cache, logits=True))

    def prefill_logits(self, input_ids: Any) -> torch.Tensor:
        """float32 logits of the last position after each (equal-length) prompt, [B, vocab]."""
        rows = as_rows(input_ids)
        check_lengths(rows, 1, self.spec.max_position_embeddings, self.spec.vocab_size)
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            cache = self._get_cache(ids.shape[0], ids.shape[1] + 1)
            return self._prefill(ids, cache).float()

    def score(self, input_ids: Any, context_len: int) -> torch.Tensor:
        """Negative log-likelihood of each next token of equal-length rows, float32 [B, L-1].

        Tokens 1..context_len-1 are scored from one context (prefill) pass over the first
        `context_len` tokens; each later token from one decode step that attends over the KV
        cache, so both phases' numerics count (an FP8 KV cache's scales act in the decode
        steps, FP8 context FMHA in the context pass).
        """
        rows = as_rows(input_ids)
        check_lengths(rows, 1, self.spec.max_position_embeddings, self.spec.vocab_size)
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        b, n = ids.shape
        if not 1 <= context_len <= n:
            raise InputError(f"context_len {context_len} must be in [1, {n}]")
        with torch.inference_mode():
            cache = self._get_cache(b, n)
            ctx = self._prefill(ids[:, :context_len], cache, all_positions=True).float()
            nll = [-ctx[:, :-1].log_softmax(-1).gather(2, ids[:, 1:context_len, None])[..., 0]]
            last = ctx[:, -1]
            for pos in range(context_len, n):
                nll.append(-last.log_softmax(-1).gather(1, ids[:, pos, None]))
                if pos + 1 < n:
                    last = self._decode_eager(ids[:, pos], pos, cache, logits=True)
        return torch.cat(nll, dim=1).cpu()

    def describe(self) -> dict[str, Any]:
        """Engine name, dtype, device, FP8/compile/graph settings and model shape."""

        return {
            "engine": self.name,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "dtype": self.dtype_name,
            "weights": "fp8" if self.fp8 else self.dtype_name,
            "device": str(self.device),
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "prepacked": self.prepacked,
            "kv_cache_dtype": "float8_e4m3fn" if self.kv_scales else self.dtype_name,
            "fp8_context_fmha": self.fp8_context_fmha,
            "notes": self.notes,
            "shape": LlamaShape.from_config(self.cfg).as_dict(),
        }

    def close(self) -> None:
        """Drop weights and caches (and CUDA graphs)."""
        self._cache.clear()
        self.w = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # ---- internals --------------------------------------------------------------------------
    def _kv_cache_scales(
        self, kv_cache_dtype: str, state_dict: dict[str, torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per-layer (k_scale, v_scale) float32 scalars when the KV cache is FP8, else None."""

        if kv_cache_dtype not in ("auto", "fp8", "compute"):
            raise InputError(
                f"kv_cache_dtype {kv_cache_dtype!r} is not known", fix="use auto, fp8 or compute"
            )
        found = kv_cache_scales(state_dict)
        if kv_cache_dtype == "compute" or (kv_cache_dtype == "auto" and not found):
            return None
        missing = sorted(set(range(self.spec.num_hidden_layers)) - set(found))
        if missing:
            raise InputError(
                f"FP8 KV cache needs k_scale/v_scale for every layer; layers {missing} have none",
                where=str(self.model_dir) if self.model_dir else "state_dict",
                fix="export with `kv_cache_fp8: true`, or use kv_cache_dtype compute",
            )
        return [
            (k.to(self.device), v.to(self.device))
            for k, v in (found[i] for i in range(self.spec.num_hidden_layers))
        ]

    def _kv_store(self, i: int, x: torch.Tensor, j: int) -> torch.Tensor:
        """K (j=0) or V (j=1) of layer i as kept in the cache: FP8 = x / scale, saturated."""
        if self.kv_scales is None:
            return x
        q = (x.float() / self.kv_scales[i][j]).clamp(-FP8_MAX, FP8_MAX)
        return q.to(torch.float8_e4m3fn)

    def _fmha_fp8(
        self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as TensorRT-LLM's FP8 context FMHA sees them: each quantized to FP8 with the
        KV-cache scale before the attention kernel (attentionOp.cpp sets the QKV
        preprocessing's `qkv_scale_orig_quant` to `kv_scale_orig_quant`; a legacy checkpoint
        has one `kv_cache_scaling_factor` for K and V). Q takes the larger of layer i's K and V
        scales, so |Q| above 448 x that scale saturates."""
        ks, vs = self.kv_scales[i]

        def fake(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            q8 = (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return (q8.float() * s).to(x.dtype)

        return fake(q, torch.maximum(ks, vs)), fake(k, ks), fake(v, vs)

    def _kv_load(self, i: int, x: torch.Tensor, j: int) -> torch.Tensor:
        """Cached K/V back in the compute dtype (FP8 values times their scale)."""
        if self.kv_scales is None:
            return x
        return (x.float() * self.kv_scales[i][j]).to(self.dtype)

    def _get_cache(self, batch: int, max_len: int) -> dict[str, Any]:
        """KV buffers for (batch, max_len); kept (one shape) so CUDA graphs can be replayed."""
        key = (batch, max_len)
        if key in self._cache:
            return self._cache[key]
        self._cache.clear()
        if max_len > self._rope_len:
            cos, sin = rope_tables(self.cfg, max_len, self.device)
            sign = torch.ones(sin.shape[-1], device=sin.device)
            sign[: sin.shape[-1] // 2] = -1.0
            self._cos, self._sin = cos.to(self.dtype), (sin * sign).to(self.dtype)
            self._rope_len = max_len
        s = self.spec
        shape = (s.num_hidden_layers, batch, s.num_key_value_heads, max_len, s.head_dim)
        kv_dtype = torch.float8_e4m3fn if self.kv_scales else self.dtype
        cache = {
            "k": torch.zeros(shape, dtype=kv_dtype, device=self.device),
            "v": torch.zeros(shape, dtype=kv_dtype, device=self.device),
            "graph": None,
        }
        self._cache[key] = cache
        return cache

    def _layer(
        self, i: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Any
    ) -> torch.Tensor:
        s, lw = self.spec, self.w["layers"][i]
        b, n, _ = h.shape
        qkv = lw["qkv"](_rms(h, lw["ln1"], s.rms_norm_eps))
        nq, nkv = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
        qk, v = qkv.split([nq + nkv, nkv], dim=-1)
        qk = _rope(qk.view(b, n, -1, s.head_dim), cos, sin).transpose(1, 2)
        q, k = qk.split([s.num_attention_heads, s.num_key_value_heads], dim=1)
        v = v.view(b, n, -1, s.head_dim).transpose(1, 2)
        a = attend(i, q, k, v)
        h = h + lw["o"](a.transpose(1, 2).reshape(b, n, nq))
        g, u = lw["gate_up"](_rms(h, lw["ln2"], s.rms_norm_eps)).chunk(2, dim=-1)
        return h + lw["down"](F.silu(g) * u)

    def _logits(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.w["lm_head"](_rms(h_last, self.w["norm"], self.spec.rms_norm_eps))

    def _prefill(
        self, ids: torch.Tensor, cache: dict[str, Any], all_positions: bool = False
    ) -> torch.Tensor:
        """Run the prompts, fill cache positions [0, L), return last-position logits [B, V]
        (every position's, [B, L, V], with `all_positions`)."""
        b, n = ids.shape
        cos, sin = self._cos[:n], self._sin[:n]
        chunk = max(1, self.max_prefill_tokens // n)
        on_cuda = self.device.type == "cuda"
        logits = []
        for r0 in range(0, b, chunk):
            r1 = min(b, r0 + chunk)

            def attend(i, q, k, v, r0=r0, r1=r1):
                # the prompt attends over K/V as computed; later steps read the (FP8) cache
                cache["k"][i, r0:r1, :, :n] = self._kv_store(i, k, 0)
                cache["v"][i, r0:r1, :, :n] = self._kv_store(i, v, 1)
                if self.fp8_context_fmha:
                    q, k, v = self._fmha_fp8(i, q, k, v)
                if on_cuda:  # expand K/V so that the flash kernel (no GQA flag) is eligible
                    rep = q.shape[1] // k.shape[1]
                    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

            h = F.embedding(ids[r0:r1], self.w["embed"])
            for i in range(self.spec.num_hidden_layers):
                h = self._layer(i, h, cos, sin, attend)
            logits.append(self._logits(h if all_positions else h[:, -1]))
        return torch.cat(logits, dim=0)

    def _decode_eager(
        self, tok: torch.Tensor, pos: int, cache: dict[str, Any], logits: bool = False
    ) -> torch.Tensor:
        """One step at position `pos`, attending over cache[:pos+1] (fastest without graphs);
        the greedy next tokens, or the float32 logits [B, V] with `logits`."""
        cos, sin = self._cos[pos : pos + 1], self._sin[pos : pos + 1]
        on_cuda = self.device.type == "cuda"

        def attend(i, q, k, v):
            cache["k"][i, :, :, pos : pos + 1] = self._kv_store(i, k, 0)
            cache["v"][i, :, :, pos : pos + 1] = self._kv_store(i, v, 1)
            kk = self._kv_load(i, cache["k"][i, :, :, : pos + 1], 0)
            vv = self._kv_load(i, cache["v"][i, :, :, : pos + 1], 1)
            if on_cuda:  # SDPA's GQA path may fall back to a K/V-copying kernel
                return _attend_one(q, kk, vv)
            return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)

        h = F.embedding(tok[:, None], self.w["embed"])
        for i in range(self.spec.num_hidden_layers):
            h = self._layer(i, h, cos, sin, attend)
        out = self._logits(h[:, -1]).float()
        return out if logits else out.argmax(-1)

    def _decode_static(
        self, tok: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """One step with a tensor position: fixed shapes, so it compiles and graph-captures."""
        p = pos.view(1)
        cos, sin = self._cos.index_select(0, p), self._sin.index_select(0, p)
        max_len = k_cache.shape[3]
        mask = torch.arange(max_len, device=tok.device) <= pos

        def attend(i, q, k, v):
            for j, (c, x) in enumerate(((k_cache[i], k), (v_cache[i], v))):
                x = self._kv_store(i, x, j)
                if x.dtype == torch.float8_e4m3fn:  # no index_copy_ kernel for float8
                    c, x = c.view(torch.uint8), x.view(torch.uint8)
                c.index_copy_(2, p, x)
            kk, vv = self._kv_load(i, k_cache[i], 0), self._kv_load(i, v_cache[i], 1)
            return _attend_one(q, kk, vv, mask)

        h = F.embedding(tok[:, None], self.w["embed"])
        for i in range(self.spec.num_hidden_layers):
            h = self._layer(i, h, cos, sin, attend)
        return self._logits(h[:, -1]).float().argmax(-1)

    def _graph_step(self, cache: dict[str, Any], batch: int) -> Any:
        """Capture (once per cache) a CUDA graph of the static decode step; returns replay fn."""
        if cache["graph"] is None:
            st = {
                "tok": torch.zeros(batch, dtype=torch.long, device=self.device),
                "pos": torch.zeros((), dtype=torch.long, device=self.device),
            }
            args = (st["tok"], st["pos"], cache["k"], cache["v"])
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up (and compile) outside the graph
                    self._step(*args)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                st["out"] = self._step(*args)
            cache["graph"], cache["static"] = graph, st
        graph, st = cache["graph"], cache["static"]

        def step(tok: torch.Tensor, pos: int) -> torch.Tensor:
            st["tok"].copy_(tok)
            st["pos"].fill_(pos)
            graph.replay()
            return st["out"].clone()

        return step

    def _generate_equal(
        self, ids: torch.Tensor, osl: int, ignore_eos: bool, chooser: _Chooser | None = None
    ) -> list[list[int]]:
        b, n = ids.shape
        cache = self._get_cache(b, n + osl)
        if chooser is not None:  # sampling or log-probabilities: the step returns logits

            def step(tok, pos):
                return chooser(self._decode_eager(tok, pos, cache, logits=True))

        elif self.cuda_graphs:  # capture first: warm-up writes garbage that prefill overwrites
            step = self._graph_step(cache, b)
        elif self.compile:

            def step(tok, pos):
                return self._step(
                    tok, torch.tensor(pos, device=self.device), cache["k"], cache["v"]
                )
        else:

            def step(tok, pos):
                return self._decode_eager(tok, pos, cache)

        out = torch.empty(b, osl, dtype=torch.long, device=self.device)
        first = self._prefill(ids, cache).float()
        tok = chooser(first) if chooser is not None else first.argmax(-1)
        out[:, 0] = tok
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=self.device)
        track = not ignore_eos and eos.numel() > 0
        done = torch.isin(tok, eos) if track else None
        for t in range(1, osl):
            if track and bool(done.all()):
                out = out[:, :t]
                break
            tok = step(tok, n + t - 1)
            out[:, t] = tok
            if track:
                done |= torch.isin(tok, eos)
        rows = out.tolist()
        return truncate_at_eos(rows, self.eos_ids) if track else rows
