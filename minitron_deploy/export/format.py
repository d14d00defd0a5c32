"""The record types of the export table: `ExportFormat` (one format), `ExportOptions` (every
export default, declared once) and `ExportSettings` (what one format's writer reads, generated
from `ExportOptions`). Torch-free; format modules import only this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, create_model

from minitron_deploy.model.layerwise import LAYER_SEQUENTIAL_HELP, LayerSequential
from minitron_deploy.model.stream import TensorReader

# Settings that only FP8 exports read (calibration of the static scales).
CALIB_FIELDS = ("calib_samples", "calib_seq_len", "kv_cache_fp8", "seed", "layer_sequential")


class ExportOptions(BaseModel):
    """The export settings and their defaults: the one place they are declared. The profile's
    export section (`ExportConfig`) extends it; one format's settings (`ExportSettings`) are
    generated from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    calib_samples: int = Field(
        512, ge=1, description="calibration sequences for FP8 activation scales"
    )
    calib_seq_len: int = Field(512, ge=2, description="tokens per calibration sequence")
    kv_cache_fp8: bool = Field(False, description="also calibrate FP8 KV-cache scales")
    tp_size: int = Field(1, ge=1, description="tensor-parallel ranks of a TensorRT-LLM checkpoint")
    seed: int = Field(0, description="seed of the calibration sample order")
    verify: bool = Field(
        True, description="read the export back and compare its logits with the source"
    )
    layer_sequential: LayerSequential = Field(
        "auto", exclude=True, description=f"FP8 calibration: {LAYER_SEQUENTIAL_HELP}"
    )  # how, not what: out of every key


def _unset(name: str) -> Any:
    """`name` of `ExportOptions` as an `ExportSettings` field: same type and bounds, None when
    the format does not read it (so it enters no cache key), its default named in the help."""
    info = ExportOptions.model_fields[name]
    ann = info.annotation | None
    if info.metadata:  # bounds such as ge=1
        ann = Annotated[(ann, *info.metadata)]
    desc = f"{info.description} (default {info.default})"
    return (ann, Field(None, description=desc, exclude=info.exclude))


class _SettingsBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def get(self, name: str) -> Any:
        """The value of setting `name`: as given, else its `ExportOptions` default."""
        value = getattr(self, name)
        return ExportOptions.model_fields[name].default if value is None else value


ExportSettings = create_model(
    "ExportSettings",
    __base__=_SettingsBase,
    __module__=__name__,
    __doc__="What one format's writer reads. Fields a format does not use stay None; "
    "`settings.get(name)` gives a field's value or its `ExportOptions` default.",
    dtype=(Literal["bf16", "fp8"], Field("bf16", description="weight dtype of the export")),
    **{  # verify applies to every format: its value is always set
        name: (bool, info) if name == "verify" else _unset(name)
        for name, info in ExportOptions.model_fields.items()
    },
)


class TensorCheck(Protocol):
    """A tensor-level read-back of one export against its source."""

    def see(self, name: str, tensor: Any) -> None:
        """Check the export's counterpart of source tensor `name` (as stored); raises
        StageError on a mismatch."""

    def result(self) -> dict[str, Any]:
        """The check's metrics; raises StageError when a stored tensor was never seen."""


def check_tensors(check: TensorCheck, model_dir: Any) -> dict[str, Any]:
    """Run `check` on every tensor of the source `model_dir`, read one at a time, on its own
    (the streamed read-back feeds it from its layer-by-layer pass instead); its metrics."""
    src = TensorReader(model_dir)
    for name in src.names():
        check.see(name, src.get(name))
    return check.result()


@dataclass(frozen=True)
class ExportFormat:
    """One deployment format.

    Attributes:
        name: the name used by `--format` and profiles; also the output folder's name.
        help: one line for `--help` and `doctor`.
        write: `write(src, dest, settings, calibration, record) -> summary dict`; `dest`
            exists and is empty; the summary lists the files written.
        read: `read(dest) -> logits function` (int64 tokens [b, s] -> float32 logits) for the
            read-back check, or None when the format cannot be read here.
        check: how the read-back compares with the source: "exact" (identical to the
            bf16-rounded source), "float32" (float32 graph: within ONNX_TOL) or "fp8".
        dtypes: weight dtypes the format takes; the first is its default.
        options: setting names it reads besides dtype and verify ("tp_size", "trtllm_dtype").
        modules: Python modules it needs, as a function of the dtype.
        hf_model: the output is an HF checkpoint folder (servable, benchable): the Triton
            trtllm and vllm backends serve such an export.
        serve_rank: among a variant's `hf_model` exports, the one of highest rank is served
            (FP8 before BF16: fewer bytes per weight).
        rope: `rope(dest) -> (theta, scaling)` as the format's consumer reads them (for HF
            folders: the installed transformers' view of config.json, which is what
            TensorRT-LLM <= 1.2 reads through transformers 4.57); None when the rope is baked
            in (ONNX). The read-back check requires the source's own settings.
        tensors: `tensors(src, dest) -> TensorCheck`, a tensor-level read-back (raises on a
            mismatch), or None: the logit read-back feeds it each source tensor as it reads
            it, so the source is read once for both.
    """

    name: str
    help: str
    write: Callable[..., dict[str, Any]]
    read: Callable[[Any], Callable[[Any], Any]] | None
    check: Callable[[str], Literal["exact", "float32", "fp8"]]
    dtypes: tuple[str, ...] = ("bf16",)
    options: tuple[str, ...] = ()
    modules: Callable[[str], tuple[str, ...]] = lambda dtype: ()
    hf_model: bool = False
    serve_rank: int = 0
    rope: Callable[[Any], tuple[float, dict | None]] | None = None
    tensors: Callable[[Any, Any], TensorCheck] | None = None

    def fields(self, dtype: str) -> tuple[str, ...]:
        """The `ExportSettings` fields this format reads at `dtype`."""
        own = tuple(o for o in self.options if o != "trtllm_dtype")
        return ("dtype", "verify", *own, *(CALIB_FIELDS if dtype == "fp8" else ()))

    def needs_calibration(self, dtype: str) -> bool:
        return dtype == "fp8"
