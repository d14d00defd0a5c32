"""FP8 Hugging Face export in NVIDIA Model-Optimizer's format, and a reader that honours the scales.

Writer: load in float32, calibrate FP8 quantizers with Model-Optimizer (`quant.fp8`), then
export with Model-Optimizer's own `export_hf_checkpoint` (bf16 for everything left unquantized).
The result is what TensorRT-LLM's PyTorch backend, vLLM and SGLang load: float8_e4m3fn linear
weights, float32 `weight_scale` / `input_scale` per linear, optional `k_scale` / `v_scale`,
`quantization_config` (quant_method "modelopt") in config.json and `hf_quant_config.json`.

Reader: stock transformers ignores the scales (garbage logits), so `load_fp8_checkpoint`
rebuilds the model itself: dequantized weights (`dequantize=True`) or `Fp8Linear` modules that
keep the FP8 weights and quantize their inputs with the static scales (W8A8, as a GPU runs it).
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.console import info
from minitron_deploy.data.refs import describe
from minitron_deploy.errors import InputError, StageError
from minitron_deploy.export.format import (
    ExportFormat,
    ExportOptions,
    ExportSettings,
    check_tensors,
)
from minitron_deploy.export.hf import LINEARS, expected_tensors, model_logits
from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.model.io import (
    copy_tokenizer,
    llama_config,
    load_llama,
    make_compatible,
    provenance,
    read_config,
    weight_files,
)
from minitron_deploy.model.layerwise import choose, memory_estimate
from minitron_deploy.model.shapes import LlamaShape, transformers_rope
from minitron_deploy.model.stream import TensorReader
from minitron_deploy.quant.fp8 import (
    FP8_MAX,
    calibrate_fp8,
    calibration_tokens,
    dequantize_fp8,
    require_modelopt,
    rounding_error,
)
from minitron_deploy.quant.fp8_layerwise import check_fp8_layout, export_fp8_layerwise

DEFAULTS = ExportOptions()  # the one source of the export defaults

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.data.shards import Split

QUANT_FILE = "hf_quant_config.json"


def export_hf_fp8(
    model_dir: str | Path,
    dest: str | Path,
    *,
    calibration: DataRef | Split | None,
    calib_samples: int = DEFAULTS.calib_samples,
    calib_seq_len: int = DEFAULTS.calib_seq_len,
    kv_cache_fp8: bool = DEFAULTS.kv_cache_fp8,
    seed: int = DEFAULTS.seed,
    record: dict[str, Any] | None = None,
    layer_sequential: str = DEFAULTS.layer_sequential,
) -> dict[str, Any]:
    """Calibrate and write an FP8 checkpoint of `model_dir` into the existing folder `dest`.

    `layer_sequential` (auto|true|false): calibrate and write one decoder layer at a time
    (`quant.fp8_layerwise`, the same tensors and scales) instead of through Model-Optimizer's
    whole-model quantize + export; auto = when the whole model's estimate does not fit.

    Returns:
        {"files": [...], "calib_rows": n, "calib_tokens": n * seq_len}.

    Raises:
        InputError: no or unusable calibration data; a bad source checkpoint.
        DependencyError: nvidia-modelopt is not installed.
    """
    import torch

    require_modelopt()  # fail before the slow parts
    tokens = calibration_tokens(
        model_dir, calibration, num_samples=calib_samples, seq_len=calib_seq_len, seed=seed
    )
    raw = read_config(model_dir)
    batch = 4  # rows per calibration forward (calibrate_fp8's default)
    estimate = memory_estimate(
        raw,
        weight_bytes=4,  # calibrated in float32
        rows=int(tokens.shape[0]),
        seq_len=int(tokens.shape[1]),
        micro_batch=batch,
        state_bytes=4,
        whole_copies=1.5,  # the float32 model, then its exported state dict
    )
    layerwise, why = choose(layer_sequential, estimate)
    info(f"FP8 calibration: {why}")
    if layerwise:
        # layerseq: one decoder layer at a time, same tensors and scales (quant.fp8_layerwise)
        export_fp8_layerwise(model_dir, dest, tokens, kv_cache_fp8=kv_cache_fp8, batch_size=batch)
    else:
        model = load_llama(model_dir, dtype="float32")
        calibrate_fp8(model, tokens, kv_cache_fp8=kv_cache_fp8, batch_size=batch)
        from modelopt.torch.export import export_hf_checkpoint

        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            export_hf_checkpoint(model, dtype=torch.float32, export_dir=str(dest))
        del model
        _unquantized_to_bf16(Path(dest))
    cfg_path = Path(dest) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["head_dim"] = LlamaShape.from_config(raw).head_dim  # always explicit (width-pruned)
    cfg["dtype"] = "bfloat16"
    atomic_write_json(cfg_path, cfg)
    copy_tokenizer(model_dir, dest)
    make_compatible(dest)  # rope / dtype / tokenizer keys transformers 4.57 reads too
    summary = {
        "calib_rows": int(tokens.shape[0]),
        "calib_tokens": int(tokens.numel()),
        "layer_sequential": layerwise,
    }
    rec = record or provenance(model_dir)

    calib = describe(calibration)
    rec = {**rec, "export": {"format": "hf-fp8", "calibration": calib, "seed": seed, **summary}}
    atomic_write_json(Path(dest) / "provenance.json", rec)
    # read back: every linear has its FP8 weight and both scales (streamed when layer-sequential:
    # names and dtypes only, so the check does not hold the model either)
    check_fp8_layout(dest) if layerwise else read_fp8_tensors(dest)
    return {"files": sorted(p.name for p in Path(dest).iterdir()), **summary}


def _unquantized_to_bf16(dest: Path) -> None:
    """Store unquantized tensors (embeddings, norms, lm_head) in bf16; scales stay float32.

    We export with `dtype=float32`: with bf16, Model-Optimizer 0.47 divides weight by scale in
    bf16 and rounds twice (bf16, then FP8), which moved ~3% of FP8 codes off round-to-nearest
    in our tests. In float32 each code is the nearest FP8 value; the unquantized tensors are
    then cast to bf16 here.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    for f in sorted(dest.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata()
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118
        for k, t in tensors.items():
            if t.dtype == torch.float32 and not k.endswith("_scale"):
                tensors[k] = t.to(torch.bfloat16)
        save_file(tensors, str(f), metadata=meta)


def _check_fp8(cfg: dict[str, Any], names: Any, path: str | Path) -> None:
    """Refuse what is not a complete Model-Optimizer FP8 checkpoint (`names`: its tensors).

    Raises:
        InputError: not an FP8 Model-Optimizer checkpoint, or tensors are missing.
    """
    qcfg = cfg.get("quantization_config") or {}
    if qcfg.get("quant_method") != "modelopt" or qcfg.get("quant_algo") != "FP8":
        raise InputError(
            "not a Model-Optimizer FP8 checkpoint (config.json quantization_config has "
            f"quant_method={qcfg.get('quant_method')!r}, quant_algo={qcfg.get('quant_algo')!r})",
            where=str(path),
            fix="export it with `minitron-deploy export --format hf-fp8`",
        )
    need = list(expected_tensors(cfg))
    for i in range(int(cfg["num_hidden_layers"])):
        for lin in LINEARS:
            need += [f"model.layers.{i}.{lin}.{s}" for s in ("weight_scale", "input_scale")]
    missing = [n for n in need if n not in names]
    if missing:
        raise InputError(
            f"FP8 checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}",
            where=str(path),
        )


def read_fp8_state(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, all stored tensors) of a Model-Optimizer FP8 checkpoint.

    Raises:
        InputError: not an FP8 Model-Optimizer checkpoint, or tensors are missing.
    """
    from safetensors import safe_open

    cfg = read_config(path)
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118
                tensors[k] = sf.get_tensor(k)
    _check_fp8(cfg, tensors, path)
    return cfg, tensors


class Fp8Tensors:
    """A Model-Optimizer FP8 checkpoint read one tensor at a time, for the layer-by-layer
    read-back (`model.readback.layerwise_logits`): `get(name)` gives an FP8 linear's weight
    dequantized (`w_fp8 * weight_scale`, float32) and other tensors as stored; `linear(module)`
    gives the W8A8 `Fp8Linear` that also quantizes the input with the static `input_scale` (what
    `load_fp8_checkpoint(dequantize=False)` puts in the whole model), None for unquantized ones.

    Raises:
        InputError: not a complete FP8 Model-Optimizer checkpoint.
    """

    def __init__(self, path: str | Path):
        self.config = read_config(path)
        self.reader = TensorReader(path)
        _check_fp8(self.config, self.reader, path)
        self._last: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def quantized(self, module: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The module's (w_fp8, weight_scale, input_scale), None when it is not quantized; read
        once: `get` of its weight and `linear` of the module ask in turn as a layer loads, so
        the last one is kept."""
        if module + ".weight_scale" not in self.reader:
            return None
        if module not in self._last:
            names = (".weight", ".weight_scale", ".input_scale")
            found = fp8_linears({module + n: self.reader.get(module + n) for n in names})
            self._last = {module: found[module]}
        return self._last[module]

    def get(self, name: str) -> torch.Tensor:
        if name.endswith(".weight") and (q := self.quantized(name[: -len(".weight")])) is not None:
            import torch

            return dequantize_fp8(q[0], q[1], torch.float32)
        return self.reader.get(name)

    def linear(self, module: str) -> torch.nn.Module | None:
        q = self.quantized(module)
        if q is None:
            return None
        from minitron_deploy.quant.linear import Fp8Linear

        return Fp8Linear(*q)


class Fp8TensorCheck:
    """Tensor-level read-back of an hf-fp8 export against its source, one tensor at a time
    (the `ExportFormat.tensors` check of hf-fp8): `see(name, w)` with each source tensor as
    it is read, then `result()`.

    Every FP8 linear: finite scales > 0, no weight clipped (max |w| <= 448 x weight_scale)
    and every code the source weight divided by its scale, rounded to a nearest FP8 value
    (`quant.fp8.rounding_error` <= 1); every other tensor the source's in bf16, bit for bit.
    It holds whatever the logits look like: on a near-flat model (random weights) the top-1
    agreement of the logit read-back says little, this does not. `result()` refuses a check
    that did not see every stored tensor the source has.

    Raises:
        StageError: a tensor does not match (a bug in the exporter).
    """

    def __init__(self, model_dir: str | Path, dest: str | Path):
        self.dest = str(dest)
        self.out = Fp8Tensors(dest)
        src = TensorReader(model_dir)
        # every stored tensor with a source counterpart; scales are checked with their weight
        self.todo = {n for n in self.out.reader.names() if not n.endswith("_scale") and n in src}
        self.fp8 = self.tensors = 0
        self.worst = 0.0

    def _fail(self, what: str) -> StageError:
        return StageError(
            f"hf-fp8 export failed its tensor read-back: {what}",
            where=self.dest,
            fix="this is a bug in the exporter; please report it with the source checkpoint",
        )

    def see(self, name: str, w: torch.Tensor) -> None:
        """Check the export's tensor `name` against the source's `w` (as stored); a name the
        export does not store, or one already checked, is passed over."""
        import torch

        if name not in self.todo:
            return
        self.todo.discard(name)
        q = self.out.quantized(name[: -len(".weight")]) if name.endswith(".weight") else None
        if q is None:
            got = self.out.reader.get(name)
            if not torch.equal(got.to(torch.bfloat16), w.to(torch.bfloat16)):
                raise self._fail(f"{name} is not the source's tensor in bf16")
            self.tensors += 1
            return
        codes, ws, xs = q
        if not all(bool(torch.isfinite(t)) and float(t) > 0 for t in (ws, xs)):
            raise self._fail(f"{name}: scales must be finite and > 0 (weight {ws}, input {xs})")
        if tuple(codes.shape) != tuple(w.shape):
            raise self._fail(f"{name} has shape {tuple(codes.shape)}, the source {tuple(w.shape)}")
        lo, hi = torch.aminmax(w)  # exact in the stored dtype: one pass, no float copy
        amax = max(-float(lo), float(hi))
        if amax > FP8_MAX * float(ws) * (1 + 1e-6):
            raise self._fail(
                f"{name}: max |w| {amax:.6g} is clipped by weight_scale {float(ws):.6g}"
            )
        err = rounding_error(w, ws, codes)
        if err > 1 + 1e-3:
            raise self._fail(
                f"{name}: codes are up to {err:.1f} half FP8 spacings from w / weight_scale "
                "(at most 1 when rounded to nearest)"
            )
        self.worst, self.fp8 = max(self.worst, err), self.fp8 + 1

    def result(self) -> dict[str, Any]:
        """{"fp8_linears_checked", "tensors_checked", "max_rounding_error"}: the last in half
        FP8 spacings over the codes that differ from torch's own rounding (0.0: none differs).

        Raises:
            StageError: some stored tensors were never checked.
        """
        if self.todo:
            left = sorted(self.todo)
            raise self._fail(f"{len(left)} tensor(s) were not checked, e.g. {left[:3]}")
        return {
            "fp8_linears_checked": self.fp8,
            "tensors_checked": self.tensors,
            "max_rounding_error": self.worst,
        }


def check_fp8_tensors(model_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """`Fp8TensorCheck` of every stored tensor, the source read tensor by tensor on its own
    (the export read-back runs the check inside its layer-by-layer pass instead)."""
    return check_tensors(Fp8TensorCheck(model_dir, dest), model_dir)


def fp8_linears(
    tensors: dict[str, torch.Tensor], where: str = "checkpoint"
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The FP8 linears among HF-named `tensors`: {module name: (w_fp8, weight_scale, input_scale)}.

    Raises:
        InputError: a `weight_scale` whose weight is not float8_e4m3fn, or no `input_scale`.
    """
    import torch

    out = {}
    for name, t in tensors.items():
        if name.endswith(".weight_scale"):
            mod = name[: -len(".weight_scale")]
            w, xs = tensors.get(mod + ".weight"), tensors.get(mod + ".input_scale")
            if w is None or w.dtype != torch.float8_e4m3fn or xs is None:
                got = "no weight" if w is None else f"weight dtype {w.dtype}"
                raise InputError(
                    f"{mod} has a weight_scale but {got}"
                    + ("" if xs is not None else " and no input_scale"),
                    where=where,
                    fix="export with Model-Optimizer's HF exporter (static per-tensor FP8)",
                )
            out[mod] = (w, t.float().reshape(()), xs.float().reshape(()))
    return out


def kv_cache_scales(
    tensors: dict[str, torch.Tensor],
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (k_scale, v_scale)} float32 0-dim tensors of the layers that have both."""
    out = {}
    for name, k in tensors.items():
        if name.endswith("self_attn.k_proj.k_scale"):
            v = tensors.get(name.replace("k_proj.k_scale", "v_proj.v_scale"))
            if v is not None:
                out[int(name.split(".")[2])] = (k.float().reshape(()), v.float().reshape(()))
    return out


def read_fp8_tensors(
    path: str | Path,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Raw FP8 linears: {"model.layers.{i}.self_attn.q_proj": (w_fp8, weight_scale, input_scale)}.

    `w_fp8` is float8_e4m3fn [out, in]; both scales are float32 0-dim tensors, so
    `torch._scaled_mm(x_fp8, w_fp8.t(), scale_a=input_scale, scale_b=weight_scale)` computes
    the layer (with `x_fp8 = quantize_fp8(x, input_scale)`).
    """
    _, tensors = read_fp8_state(path)
    return fp8_linears(tensors, str(path))


def read_kv_cache_scales(path: str | Path) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (k_scale, v_scale)} when the checkpoint has an FP8 KV cache, else {}."""
    _, tensors = read_fp8_state(path)
    return kv_cache_scales(tensors)


def load_fp8_checkpoint(
    path: str | Path, dequantize: bool = True, dtype: str = "float32"
) -> LlamaForCausalLM:
    """Load a Model-Optimizer FP8 checkpoint into a torch `LlamaForCausalLM`.

    Args:
        path: the exported folder.
        dequantize: True: plain linears with weights `w_fp8 * weight_scale` (weight-only
            FP8 error). False: `Fp8Linear` modules that also quantize their inputs with the
            static `input_scale` (the full W8A8 error, as served); they run `torch._scaled_mm`
            on CUDA and an exact float32 emulation of it on CPU.
        dtype: dtype of the unquantized parts and of dequantized weights.
    """
    import torch
    from transformers import LlamaForCausalLM

    cfg, tensors = read_fp8_state(path)
    torch_dtype = getattr(torch, dtype)
    config = llama_config(cfg)
    model = LlamaForCausalLM(config).to(torch_dtype)
    fp8 = read_fp8_tensors(path)
    state = {}
    for name, t in tensors.items():
        if name.endswith(("_scale", ".k_scale", ".v_scale")):
            continue
        mod = name.rsplit(".", 1)[0]
        if mod in fp8:
            state[name] = dequantize_fp8(fp8[mod][0], fp8[mod][1], torch_dtype)
        else:
            state[name] = t.to(torch_dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    result = model.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")
    ]
    if missing or result.unexpected_keys:
        raise InputError(
            f"FP8 checkpoint does not match its config (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})",
            where=str(path),
        )
    if not dequantize:
        from minitron_deploy.quant.linear import Fp8Linear

        for mod, (w, ws, xs) in fp8.items():
            parent_name, child = mod.rsplit(".", 1)
            setattr(model.get_submodule(parent_name), child, Fp8Linear(w, ws, xs))
    return model.eval()


def write(
    src: Path,
    dest: Path,
    settings: ExportSettings,
    calibration: Split | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The `hf-fp8` writer of the export table."""
    return export_hf_fp8(
        src,
        dest,
        calibration=calibration,
        calib_samples=settings.get("calib_samples"),
        calib_seq_len=settings.get("calib_seq_len"),
        kv_cache_fp8=settings.get("kv_cache_fp8"),
        seed=settings.get("seed"),
        record=record,
        layer_sequential=settings.get("layer_sequential"),
    )


def _read(path: Path):
    return model_logits(load_fp8_checkpoint(path, dequantize=False))


FORMAT = ExportFormat(
    name="hf-fp8",
    help="Hugging Face checkpoint, FP8 E4M3 in NVIDIA Model-Optimizer's format",
    write=write,
    read=_read,
    check=lambda dtype: "fp8",
    dtypes=("fp8",),
    modules=lambda dtype: ("modelopt",),
    hf_model=True,
    serve_rank=1,
    rope=transformers_rope,
    tensors=Fp8TensorCheck,
)
