"""Exports load identically where TensorRT-LLM <= 1.2 runs: transformers 4.57.1.

`make test` sets up `.venv-compat` (torch 2.13 CPU + transformers 4.57.1 + this project, no
Model Optimizer): a stand-in for TensorRT-LLM 1.x release containers, which pin that
transformers and cannot run here. A Llama-3.1-style tiny model (rope_theta 500000, llama3 rope
scaling, explicit head_dim 24, 6/2 heads, untied and tied) is exported with the main venv
(transformers 5); `tests/compat/readback.py` reads every export back in `.venv-compat` and its
logits are compared with the source's. Skipped only when `.venv-compat` was not set up (run
`make compat`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from minitron_deploy.testing import LLAMA31_ROPE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPAT_PY = REPO / ".venv-compat" / "bin" / "python"
if not COMPAT_PY.exists():
    pytest.skip("no .venv-compat: run `make compat` (make test does)", allow_module_level=True)


def _compat(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COMPAT_PY), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from minitron_deploy.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("compat")
    common = dict(head_dim=24, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE)
    return {
        "untied": make_tiny_checkpoint(root / "untied", seed=5, **common),
        "tied": make_tiny_checkpoint(
            root / "tied", seed=6, tie_word_embeddings=True, dtype="bfloat16", **common
        ),
    }


@pytest.fixture(scope="module")
def exports(sources, text_dir, tmp_path_factory):
    """Every format of both sources, written by the main venv (transformers 5)."""
    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.export import export_model
    from minitron_deploy.export.format import ExportSettings

    root = tmp_path_factory.mktemp("exports")
    calib = DataRef(source=str(text_dir))
    fp8 = ExportSettings(dtype="fp8", calib_samples=8, calib_seq_len=48, kv_cache_fp8=True)
    out = {}
    for name, src in sources.items():
        for fmt, settings in (
            ("hf", ExportSettings()),
            ("hf-fp8", fp8),
            ("trtllm-ckpt", ExportSettings(tp_size=2)),
            ("trtllm-ckpt-fp8", fp8.model_copy(update={"tp_size": 1})),
        ):
            real = fmt.removesuffix("-fp8") if fmt.startswith("trtllm") else fmt
            dest = root / f"{name}-{fmt}"
            export_model(src, dest, real, settings, calib if settings.dtype == "fp8" else None)
            out[f"{name}-{fmt}"] = (real, dest, src, settings.dtype)
    return out


def _main_logits(fmt: str, dest, tokens):
    """What the main venv (transformers 5) reads from the same files, with the same reader."""
    from minitron_deploy.export.hf import load_hf, logits_of
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint
    from minitron_deploy.export.trtllm_ckpt import load_trtllm_checkpoint

    if fmt == "hf":
        return logits_of(load_hf(dest), tokens)
    if fmt == "hf-fp8":
        return logits_of(load_fp8_checkpoint(dest, dequantize=False), tokens)
    return logits_of(load_trtllm_checkpoint(dest), tokens)


def _readback(specs: dict[str, tuple[str, Path]], refs: dict, tmp: Path) -> dict:
    from safetensors.torch import save_file

    path = tmp / "refs.safetensors"
    save_file({k: v.clone().contiguous() for k, v in refs.items()}, str(path))
    args = [f"{n}={fmt}:{dest}" for n, (fmt, dest) in specs.items()]
    r = _compat(str(REPO / "tests" / "compat" / "readback.py"), str(path), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def readback(exports, tmp_path_factory):
    """Every export read in `.venv-compat`, against the main venv's read of the same files."""
    from minitron_deploy.export.verify import probe_tokens

    tokens = probe_tokens(301, batch=2, seq=32)
    refs = {"tokens": tokens}
    for name, (fmt, dest, _, _) in exports.items():
        refs[name] = _main_logits(fmt, dest, tokens)
    specs = {n: (fmt, dest) for n, (fmt, dest, _, _) in exports.items()}
    return _readback(specs, refs, tmp_path_factory.mktemp("refs"))


def test_the_stand_in_runs_transformers_4_57(readback):
    assert readback["transformers"] == "4.57.1"


@pytest.mark.parametrize("name", ["untied-hf", "tied-hf", "untied-trtllm-ckpt", "tied-trtllm-ckpt"])
def test_bf16_exports_read_back_identically_under_4_57(readback, name):
    row = readback["exports"][name]
    assert row["max_abs_diff"] == 0.0 and row["top1_agreement"] == 1.0, row
    assert row["rope_theta"] == 500000.0
    assert (row["rope_scaling"] or {}).get("rope_type") == "llama3"
    assert (row["rope_scaling"] or {}).get("factor") == 8.0


@pytest.mark.parametrize("name", ["untied-hf", "tied-hf", "untied-hf-fp8"])
def test_tokenizers_load_under_4_57_with_the_same_ids(readback, exports, name):
    from transformers import AutoTokenizer

    row = readback["exports"][name]
    assert row["tokenizer"] == "PreTrainedTokenizerFast"
    ids = AutoTokenizer.from_pretrained(str(exports[name][1]))("def main(argv):")["input_ids"]
    assert row["token_ids"] == ids


# Same files, same reader, another transformers: anything above rounding noise is a bug
# (a rope misread moves KL to ~1e-2 on these models; see the control test below).
COMPAT_MAX_KL = 1e-6


@pytest.mark.parametrize(
    "name", ["untied-hf-fp8", "tied-hf-fp8", "untied-trtllm-ckpt-fp8", "tied-trtllm-ckpt-fp8"]
)
def test_fp8_exports_read_back_the_same_under_4_57(readback, name):
    row = readback["exports"][name]
    assert row["kl_per_token"] <= COMPAT_MAX_KL and row["top1_agreement"] == 1.0, row
    assert row["rope_theta"] == 500000.0


def test_the_read_back_catches_the_old_rope_parameters_only_config(exports, tmp_path):
    """The bug the checks must catch: a config.json with only `rope_parameters` (transformers
    5's own spelling, what exports held before) makes 4.57 run default rope at theta 10000."""
    from minitron_deploy.export.verify import probe_tokens

    _, dest, _, _ = exports["untied-hf-fp8"]
    broken = tmp_path / "broken"
    shutil.copytree(dest, broken)
    cfg = json.loads((broken / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling"):
        cfg.pop(key)
    (broken / "config.json").write_text(json.dumps(cfg))
    tokens = probe_tokens(301, batch=2, seq=32)
    main = _main_logits("hf-fp8", dest, tokens)
    refs = {"tokens": tokens, "broken": main, "good": main}
    specs = {"broken": ("hf-fp8", broken), "good": ("hf-fp8", dest)}
    rows = _readback(specs, refs, tmp_path)["exports"]
    # What a consumer's transformers 4.57 reads (TensorRT-LLM <= 1.2): the silent failure.
    assert rows["broken"]["rope_theta"] == 10000.0 and rows["good"]["rope_theta"] == 500000.0
    # The project's own readers normalise both spellings, so their logits cannot show it ...
    assert rows["broken"]["kl_per_token"] <= COMPAT_MAX_KL
    # ... which is why the read-back checks the consumer's view of the rope exactly, and refuses
    # such a folder under 4.57:
    code = (
        "import sys; from pathlib import Path\n"
        "from minitron_deploy.export.verify import check_rope\n"
        "from minitron_deploy.export.registry import FORMATS\n"
        "check_rope(sys.argv[1], Path(sys.argv[2]), FORMATS['hf-fp8'])"
    )
    r = _compat("-c", code, str(exports["untied-hf-fp8"][2]), str(broken))
    assert r.returncode != 0 and "rope settings read as theta=10000.0" in r.stderr


def test_export_inside_the_stand_in_passes_its_own_read_back(sources, tmp_path):
    """`minitron-deploy export` run with transformers 4.57 (as in the Docker image) on a
    Llama-3.1-style source. FP8 needs Model Optimizer, which the stand-in does not carry."""
    for fmt in ("hf", "trtllm-ckpt"):
        out = tmp_path / fmt
        argv = ["-m", "minitron_deploy", "export", "--model", str(sources["untied"])]
        r = _compat(*argv, "--format", fmt, "--out", str(out), "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        verify = json.loads(r.stdout.strip().splitlines()[-1])["verify"]
        assert verify["max_abs_diff"] == 0.0 and verify["rope_theta"] == 500000.0, verify
