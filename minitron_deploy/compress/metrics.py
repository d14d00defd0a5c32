"""Activation importance metrics: one hook class per metric, each declaring its score keys.

A metric attaches forward hooks to a `LlamaForCausalLM`, reduces every activation over the
sequence at once (nothing is stored per token) and adds the per-sample vectors into float32
accumulators (Minitron P1, section 2; the reference code's hooks take `abs().mean()` over the
sequence, square, and sum over the batch, i.e. batch=L2, seq=mean). `scores()` returns its keys.

To add a metric: a class with `keys`, `shapes(shape)`, `attach(model)` and `scores()`, and one
entry in `METRICS`. The pruner names the keys it needs (`slicing.required_scores`), and
`scores.check_scores` checks them against the declared shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from minitron_deploy.compress.config import ImportanceConfig
    from minitron_deploy.model.shapes import LlamaShape


class _Acc:
    """Streaming per-channel accumulator of per-sample vectors: count, sum, sum of squares."""

    def __init__(self, dim: int, device: Any, agg: str):
        import torch

        self.agg = agg
        self.n = 0
        self.sq = torch.zeros(dim, dtype=torch.float32, device=device)
        self.s = torch.zeros(dim, dtype=torch.float32, device=device) if agg != "l2" else None

    def add(self, v: torch.Tensor) -> None:
        """Add per-sample vectors `v` [B, dim] (float32)."""
        self.n += v.shape[0]
        if self.agg != "mean":
            self.sq.add_(v.square().sum(0))
        if self.s is not None:
            self.s.add_(v.sum(0))

    def tensors(self) -> list[torch.Tensor]:
        """The raw sums (for an all-reduce over data-parallel ranks)."""
        return [self.sq] if self.s is None else [self.sq, self.s]

    def result(self, n: int | None = None) -> torch.Tensor:
        n = max(self.n if n is None else n, 1)
        if self.agg == "l2":
            return self.sq.sqrt()
        if self.agg == "mean":
            return self.s / n
        mean = self.s / n
        return (self.sq / n - mean.square()).clamp_min(0)


def seq_reduce(x: torch.Tensor, how: str) -> torch.Tensor:
    """[B, L, D] -> [B, D] float32, one reduction over the sequence.

    `vector_norm(ord=1)` gives sum |x| without allocating an |x| temporary: on CPU a fresh
    [B, L, D] buffer per hook costs more (page faults) than the reduction itself.
    """
    import torch

    dt = None if x.dtype == torch.float32 else torch.float32
    if how == "mean":
        return torch.linalg.vector_norm(x, ord=1, dim=1, dtype=dt).div_(x.shape[1])
    if how == "l2":
        return torch.linalg.vector_norm(x, ord=2, dim=1, dtype=dt)
    return x.float().var(dim=1)


class _ChannelMetric:
    """Base for metrics made of per-channel accumulators fed by forward hooks."""

    keys: tuple[str, ...] = ()

    def __init__(self, shape: LlamaShape, cfg: ImportanceConfig, device: Any):
        self.shape, self.cfg, self.device = shape, cfg, device
        self.accs: list[_Acc] = []

    def _out_hook(self, acc: _Acc):
        def hook(_m, _inp, out):
            acc.add(seq_reduce(out, self.cfg.seq_agg))

        return hook

    def _in_hook(self, acc: _Acc):
        def hook(_m, args):
            acc.add(seq_reduce(args[0], self.cfg.seq_agg))

        return hook

    def state(self) -> list[torch.Tensor]:
        """Tensors to sum over data-parallel ranks."""
        return [t for a in self.accs for t in a.tensors()]

    def samples(self) -> int:
        return self.accs[0].n if self.accs else 0


class HeadScores(_ChannelMetric):
    """Attention heads and KV groups from the input of o_proj (each head's output slice)."""

    keys = ("head", "kv_group")

    @staticmethod
    def shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
        n = shape.num_hidden_layers
        return {"head": (n, shape.num_attention_heads), "kv_group": (n, shape.num_key_value_heads)}

    def attach(self, model: Any) -> list[Any]:
        s = self.shape
        self.accs = [
            _Acc(s.num_attention_heads * s.head_dim, self.device, self.cfg.batch_agg)
            for _ in model.model.layers
        ]
        return [
            layer.self_attn.o_proj.register_forward_pre_hook(self._in_hook(acc))
            for layer, acc in zip(model.model.layers, self.accs, strict=True)
        ]

    def scores(self, n: int | None = None) -> dict[str, torch.Tensor]:
        import torch

        s = self.shape
        layers, heads, kv, hd = (
            s.num_hidden_layers,
            s.num_attention_heads,
            s.num_key_value_heads,
            s.head_dim,
        )
        ch = torch.stack([a.result(n) for a in self.accs]).view(layers, heads, hd)
        return {
            "head": torch.linalg.vector_norm(ch, dim=2),
            "kv_group": torch.linalg.vector_norm(ch.view(layers, kv, heads // kv * hd), dim=2),
        }


class MlpScores(_ChannelMetric):
    """MLP neurons: gate_proj output (P1) or the input of down_proj (reference code)."""

    keys = ("mlp",)

    @staticmethod
    def shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
        return {"mlp": (shape.num_hidden_layers, shape.intermediate_size)}

    def attach(self, model: Any) -> list[Any]:
        ffn = self.shape.intermediate_size
        self.accs = [_Acc(ffn, self.device, self.cfg.batch_agg) for _ in model.model.layers]
        hooks = []
        for layer, acc in zip(model.model.layers, self.accs, strict=True):
            if self.cfg.mlp_activation == "pre":
                hooks.append(layer.mlp.gate_proj.register_forward_hook(self._out_hook(acc)))
            else:
                hooks.append(layer.mlp.down_proj.register_forward_pre_hook(self._in_hook(acc)))
        return hooks

    def scores(self, n: int | None = None) -> dict[str, torch.Tensor]:
        import torch

        return {"mlp": torch.stack([a.result(n) for a in self.accs])}


class HiddenScores(_ChannelMetric):
    """Embedding channels: every RMSNorm output (optionally the final norm too), summed."""

    keys = ("hidden",)

    @staticmethod
    def shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
        return {"hidden": (shape.hidden_size,)}

    def attach(self, model: Any) -> list[Any]:
        h = self.shape.hidden_size
        norms = []
        for layer in model.model.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        if self.cfg.include_final_norm:
            norms.append(model.model.norm)
        self.accs = [_Acc(h, self.device, self.cfg.batch_agg) for _ in norms]
        return [
            m.register_forward_hook(self._out_hook(acc))
            for m, acc in zip(norms, self.accs, strict=True)
        ]

    def scores(self, n: int | None = None) -> dict[str, torch.Tensor]:
        import torch

        return {"hidden": torch.stack([a.result(n) for a in self.accs]).sum(0)}


class BlockImportance:
    """Block Importance per layer: mean over tokens of 1 - cos(layer input, layer output)."""

    keys = ("block_importance",)

    def __init__(self, shape: LlamaShape, cfg: ImportanceConfig, device: Any):
        import torch

        self.sum = torch.zeros(shape.num_hidden_layers, dtype=torch.float64, device=device)
        self.count = torch.zeros(1, dtype=torch.float64, device=device)

    @staticmethod
    def shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
        return {"block_importance": (shape.num_hidden_layers,)}

    def attach(self, model: Any) -> list[Any]:
        import torch

        def hook_for(i: int):
            def hook(_m, args, kwargs, out):
                x = args[0] if args else kwargs["hidden_states"]
                y = out[0] if isinstance(out, tuple) else out
                x, y = x.float(), y.float()
                # cos per token; vecdot and last-dim norms are far cheaper than cosine_similarity
                cos = torch.linalg.vecdot(x, y) / (
                    torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(y, dim=-1)
                ).clamp_min_(1e-8)
                self.sum[i] += cos.numel() - cos.sum(dtype=torch.float64)
                if i == 0:
                    self.count += cos.numel()

            return hook

        return [
            layer.register_forward_hook(hook_for(i), with_kwargs=True)
            for i, layer in enumerate(model.model.layers)
        ]

    def state(self) -> list[torch.Tensor]:
        return [self.sum, self.count]

    def samples(self) -> int:
        return 0

    def scores(self, n: int | None = None) -> dict[str, torch.Tensor]:
        return {"block_importance": (self.sum / self.count.clamp_min(1)).float()}


METRICS: tuple[type, ...] = (HeadScores, MlpScores, HiddenScores, BlockImportance)


def score_shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
    """Every activation score key with its shape for a model of `shape`."""
    out: dict[str, tuple[int, ...]] = {}
    for m in METRICS:
        out.update(m.shapes(shape))
    return out
