"""Tensor-by-tensor access to safetensors checkpoints, so that no step holds a whole model.

`TensorReader` opens a checkpoint folder (one file or shards + `model.safetensors.index.json`)
and reads one tensor at a time (`safe_open` per tensor: the tensor maps the file, its pages are
dropped when it dies). `SafetensorsWriter` writes one safetensors file whose tensors are all
declared up front: the header goes first, then each tensor's bytes in order, so the file is
built without holding more than the tensor being written. `ShardedWriter` splits declared
tensors into HF shards of about `max_shard_bytes` (5 GB, as `huggingface_hub` splits) with the
index file. Peak memory of a streaming step is then the tensors it holds at once, not the model.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.model.shapes import LlamaShape

if TYPE_CHECKING:
    import torch

INDEX_FILE = "model.safetensors.index.json"
SHARD_BYTES = 5 * 10**9  # the usual HF shard size ("5GB")
# safetensors dtype names <-> torch dtype names, and bytes per element.
_DTYPES = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_NAMES = {v[0]: k for k, v in _DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a file to be written: its name, torch dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _DTYPES[_NAMES[self.dtype]][1]
        for d in self.shape:
            n *= d
        return n


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc `malloc_trim`; a no-op elsewhere).

    A layer-by-layer pass frees a layer's tensors before loading the next, but glibc keeps the
    freed chunks under its (self-raising, up to 32 MB) mmap threshold in the heap, so the
    resident set grows with every layer (measured: +150 MB per layer of the 8B shape's FP8
    read-back, 2.3 -> 7 GB over 32 layers). Called between layers, it holds the peak to one
    layer's worth."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None (another C library)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


class TensorReader:
    """Reads an HF checkpoint folder one tensor at a time.

    Attributes:
        files: {tensor name: the file that holds it}.
        specs: {tensor name: TensorSpec} from the headers (no tensor data is read).
    """

    def __init__(self, model_dir: str | Path, files: Sequence[str] | None = None):
        self.root = Path(model_dir)
        index = self.root / INDEX_FILE
        if files is not None:
            names = list(files)
        elif index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        else:
            names = sorted(p.name for p in self.root.glob("*.safetensors"))
        if not names:
            raise InputError(f"{self.root} has no *.safetensors weights")
        self.files: dict[str, Path] = {}
        self.specs: dict[str, TensorSpec] = {}
        for fname in names:
            for k, v in read_header(self.root / fname).items():
                if k == "__metadata__":
                    continue
                self.files[k] = self.root / fname
                self.specs[k] = TensorSpec(k, _DTYPES[v["dtype"]][0], tuple(v["shape"]))

    @classmethod
    def single(cls, path: str | Path) -> TensorReader:
        """A reader of one safetensors file."""
        return cls(Path(path).parent, files=[Path(path).name])

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> torch.Tensor:
        """One tensor as stored (it maps its file; the pages go when the tensor does)."""
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as sf:
            return sf.get_tensor(name)

    def largest_bytes(self) -> int:
        return max((s.nbytes for s in self.specs.values()), default=0)

    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


class SafetensorsWriter:
    """Writes one safetensors file whose tensors are declared up front, in declaration order.

    The header (dtypes, shapes, offsets) is written first, then each `write(name, tensor)`
    appends that tensor's bytes; `close()` checks every declared tensor was written. The file
    is what `safetensors.torch.save_file` writes for the same tensors, up to the order of the
    data (both read back identically).
    """

    def __init__(
        self, path: str | Path, specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None
    ):
        self.path = Path(path)
        self.specs = list(specs)
        header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        off = 0
        for s in self.specs:
            header[s.name] = {
                "dtype": _NAMES[s.dtype],
                "shape": list(s.shape),
                "data_offsets": [off, off + s.nbytes],
            }
            off += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)  # 8-byte alignment of the data, as safetensors pads
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next declared tensor (name, dtype and shape must match the declaration)."""
        spec = self.specs[self._next] if self._next < len(self.specs) else None
        got = (name, _dtype_name(tensor), tuple(tensor.shape))
        if spec is None or got != (spec.name, spec.dtype, spec.shape):
            want = None if spec is None else (spec.name, spec.dtype, spec.shape)
            raise RuntimeError(f"{self.path.name}: wrote {got}, declared {want}")
        import torch

        t = tensor.detach().contiguous()
        if t.numel():
            self._fh.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
        self._next += 1

    def close(self) -> None:
        self._fh.close()
        if self._next != len(self.specs):
            missing = [s.name for s in self.specs[self._next :]][:3]
            raise RuntimeError(f"{self.path.name}: tensors never written, e.g. {missing}")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()


def shard_names(specs: Sequence[TensorSpec], max_shard_bytes: int = SHARD_BYTES) -> list[str]:
    """The file of each tensor, in order: HF names `model-0000k-of-0000n.safetensors`, a new
    shard whenever the next tensor would push the current one past `max_shard_bytes`
    (`model.safetensors` when one shard holds everything)."""
    groups: list[int] = []
    size, k = 0, 0
    for s in specs:
        if size and size + s.nbytes > max_shard_bytes:
            k, size = k + 1, 0
        groups.append(k)
        size += s.nbytes
    n = k + 1
    if n == 1:
        return ["model.safetensors"] * len(specs)
    return [f"model-{g + 1:05d}-of-{n:05d}.safetensors" for g in groups]


class ShardedWriter:
    """Writes declared tensors into HF shards plus `model.safetensors.index.json`.

    Tensors must be written in declaration order; one shard file is open at a time.
    """

    def __init__(
        self,
        dest: str | Path,
        specs: Sequence[TensorSpec],
        max_shard_bytes: int = SHARD_BYTES,
    ):
        self.dest = Path(dest)
        self.specs = list(specs)
        self.files = shard_names(self.specs, max_shard_bytes)
        self._i = 0
        self._open: SafetensorsWriter | None = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        fname = self.files[self._i]
        if self._open is None or self._open.path.name != fname:
            if self._open is not None:
                self._open.close()
            mine = [s for s, f in zip(self.specs, self.files, strict=True) if f == fname]
            self._open = SafetensorsWriter(self.dest / fname, mine)
        self._open.write(name, tensor)
        self._i += 1

    def close(self) -> list[str]:
        """Finish the last shard and write the index (when sharded); returns the file names."""

        if self._open is not None:
            self._open.close()
        if self._i != len(self.specs):
            raise RuntimeError(f"{len(self.specs) - self._i} declared tensors never written")
        names = sorted(set(self.files))
        if len(names) > 1:
            atomic_write_json(
                self.dest / INDEX_FILE,
                {
                    "metadata": {"total_size": sum(s.nbytes for s in self.specs)},
                    "weight_map": {s.name: f for s, f in zip(self.specs, self.files, strict=True)},
                },
            )
            names.append(INDEX_FILE)
        return names


def spec_of(name: str, dtype: str, shape: Iterable[int]) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(int(x) for x in shape))


def llama_specs(cfg: Any, dtype: str = "bfloat16") -> list[TensorSpec]:
    """Every tensor of an HF Llama checkpoint with config `cfg`, in HF order: the embedding,
    each layer, the final norm, and lm_head unless tied."""
    s = LlamaShape.from_config(cfg)
    h, hd = s.hidden_size, s.head_dim
    q, kv = s.num_attention_heads * hd, s.num_key_value_heads * hd
    out = [TensorSpec("model.embed_tokens.weight", dtype, (s.vocab_size, h))]
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            TensorSpec(p + "input_layernorm.weight", dtype, (h,)),
            TensorSpec(p + "self_attn.q_proj.weight", dtype, (q, h)),
            TensorSpec(p + "self_attn.k_proj.weight", dtype, (kv, h)),
            TensorSpec(p + "self_attn.v_proj.weight", dtype, (kv, h)),
            TensorSpec(p + "self_attn.o_proj.weight", dtype, (h, q)),
            TensorSpec(p + "post_attention_layernorm.weight", dtype, (h,)),
            TensorSpec(p + "mlp.gate_proj.weight", dtype, (s.intermediate_size, h)),
            TensorSpec(p + "mlp.up_proj.weight", dtype, (s.intermediate_size, h)),
            TensorSpec(p + "mlp.down_proj.weight", dtype, (h, s.intermediate_size)),
        ]
    out.append(TensorSpec("model.norm.weight", dtype, (h,)))
    if not s.tie_word_embeddings:
        out.append(TensorSpec("lm_head.weight", dtype, (s.vocab_size, h)))
    return out


def check_layout(reader: TensorReader, cfg: dict[str, Any]) -> None:
    """Raise unless the checkpoint holds exactly the tensors of `cfg` with their shapes (an
    lm_head beside tied embeddings is tolerated and ignored), as loading would check.

    Raises:
        InputError: missing, unexpected or mis-shaped tensors.
    """
    want = {s.name: s.shape for s in llama_specs(cfg)}
    missing = [n for n in want if n not in reader]
    tied = bool(cfg.get("tie_word_embeddings", False))
    extra = [n for n in reader.names() if n not in want and not (tied and n == "lm_head.weight")]
    wrong = [
        f"{n} {reader.specs[n].shape} (config: {want[n]})"
        for n in want
        if n in reader and reader.specs[n].shape != want[n]
    ]
    if missing or extra or wrong:
        parts = [
            f"{label}: {items[:3]}"
            for label, items in (("missing", missing), ("unexpected", extra), ("shape", wrong))
            if items
        ]
        raise InputError(
            f"checkpoint tensors do not match its config ({'; '.join(parts)})",
            where=str(reader.root),
            fix="the checkpoint is incomplete or its config is wrong",
        )
