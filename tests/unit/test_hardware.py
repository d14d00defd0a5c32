"""The compute dtype `auto` resolves to on every kind of device, with the processor's capability
functions substituted by stand-ins (this host is one CPU kind only)."""

from __future__ import annotations

import json

import pytest
import torch

from minitron_deploy import hardware
from minitron_deploy.errors import InputError

AVX2 = {"capability": "AVX2", "avx512_bf16": False, "amx_tile": False}
AVX512_BF16 = {"capability": "AVX512", "avx512_bf16": True, "amx_tile": False}
AMX = {"capability": "AVX512", "avx512_bf16": False, "amx_tile": True}


@pytest.fixture(autouse=True)
def _unforced(monkeypatch):
    """These tests stand in for the processor: the forcing setting must not mask it."""
    monkeypatch.delenv(hardware.AUTO_DTYPE_ENV, raising=False)


def _standin_cpu(monkeypatch, flags: dict, fp16: bool = False) -> None:
    """Replace the CPU capability probe by a stand-in reporting `flags`."""
    feats = {**flags, "avx512_fp16": fp16, "amx_fp16": False}
    monkeypatch.setattr(hardware, "cpu_features", lambda: feats)
    hardware._warn_slow.cache_clear()


def _standin_cuda(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    "flags,fp16,request_,want,warns",
    [
        (AVX2, False, "auto", torch.float32, False),
        (AVX2, False, "float32", torch.float32, False),
        (AVX2, False, "bfloat16", torch.bfloat16, True),  # honoured, with a warning
        (AVX2, False, "bf16", torch.bfloat16, True),
        (AVX2, False, "float16", torch.float16, True),
        (AVX512_BF16, False, "auto", torch.bfloat16, False),
        (AVX512_BF16, False, "bfloat16", torch.bfloat16, False),
        (AVX512_BF16, False, "float32", torch.float32, False),
        (AVX512_BF16, False, "float16", torch.float16, True),
        (AMX, True, "auto", torch.bfloat16, False),
        (AMX, True, "float16", torch.float16, False),
    ],
)
def test_cpu_resolution(monkeypatch, capsys, flags, fp16, request_, want, warns):
    _standin_cpu(monkeypatch, flags, fp16)
    monkeypatch.setattr(hardware, "slowdown", lambda name: 42.0)  # the probe, stood in
    assert hardware.compute_dtype(request_, "cpu") == want
    err = capsys.readouterr().err
    assert ("not native" in err) == warns, err
    if warns:
        assert "about 42x slower" in err and "auto would use" in err
        hardware.compute_dtype(request_, "cpu")
        assert capsys.readouterr().err == ""  # once per process


@pytest.mark.parametrize("bf16,want", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_resolution(monkeypatch, bf16, want):
    _standin_cuda(monkeypatch, bf16)
    assert hardware.compute_dtype("auto", "cuda") == want
    assert hardware.compute_dtype("float32", "cuda:0") == torch.float32


def test_unknown_dtype_is_an_input_error():
    with pytest.raises(InputError, match="unsupported dtype 'int8'"):
        hardware.compute_dtype("int8")


def test_the_real_probe_measures_this_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITRON_CACHE", str(tmp_path))
    factor = hardware.slowdown("bfloat16", size=64)
    assert factor > 0
    cached = json.loads((tmp_path / "cpu-probe.json").read_text())
    assert len(cached) == 2  # float32 and bfloat16 GFLOP/s, reused by the next call
    assert hardware.slowdown("bfloat16", size=64) == factor


@pytest.mark.parametrize("flags,want", [(AVX2, "float32"), (AMX, "bfloat16")])
def test_engine_eval_and_distillation_follow_the_resolution(
    monkeypatch, tiny_ckpt, text_dir, capsys, flags, want
):
    from minitron_deploy.cli import main
    from minitron_deploy.distill.config import DistillConfig
    from minitron_deploy.distill.trainer import _use_bf16
    from minitron_deploy.engines import get_engine

    _standin_cpu(monkeypatch, flags)
    eng = get_engine("torch", tiny_ckpt)  # the checkpoint is float32: auto still decides
    assert eng.describe()["dtype"] == want
    assert len(eng.generate([[5, 6, 7]], 3, ignore_eos=True)[0]) == 3
    assert _use_bf16(DistillConfig(), torch.device("cpu")) == (want == "bfloat16")
    argv = ["eval", "--model", str(tiny_ckpt), "--data", str(text_dir), "--num-samples", "2"]
    assert main([*argv, "--seq-len", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["dtype"] == want


def test_keys_of_computing_stages_carry_the_auto_dtype(monkeypatch, tmp_path):
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    p = tmp_path / "p.yaml"
    p.write_text(
        "name: k\nsource: builtin:tiny-llama\n"
        "variants: [{name: w, prune: {hidden_size: 48}}]\n"
        'bench: {engine: torch, isl_osl: "8/4"}\n'
    )
    _standin_cpu(monkeypatch, AVX2)
    avx2 = {n.id: n.key for n in Pipeline(load_profile(p), tmp_path / "wd", p).nodes}
    _standin_cpu(monkeypatch, AMX)
    amx = {n.id: n.key for n in Pipeline(load_profile(p), tmp_path / "wd", p).nodes}
    assert avx2["source"] == amx["source"]  # a conversion does not depend on the CPU
    assert all(avx2[n] != amx[n] for n in ("w/importance", "w/prune", "bench"))


@pytest.mark.parametrize("flags", [AVX2, AMX])
@pytest.mark.parametrize("forced", ["float32", "bfloat16", "bf16"])
def test_setting_forces_auto_on_cpu_only(monkeypatch, flags, forced):
    _standin_cpu(monkeypatch, flags)
    _standin_cuda(monkeypatch, bf16=True)
    monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, forced)
    want = hardware.dtype_name(forced)
    assert hardware.auto_dtype_name("cpu") == want
    assert hardware.compute_dtype("auto", "cpu") == getattr(torch, want)
    assert hardware.compute_dtype("float32", "cpu") == torch.float32  # explicit wins
    assert hardware.auto_dtype_name("cuda") == "bfloat16"  # never applies to CUDA
    assert hardware.processor()["auto_dtype_forced"] == forced


def test_setting_reaches_subprocesses_and_bad_values_exit_2(tiny_ckpt):
    import os
    import subprocess
    import sys

    def doctor(value: str) -> subprocess.CompletedProcess:
        env = {**os.environ, hardware.AUTO_DTYPE_ENV: value}
        cmd = [sys.executable, "-m", "minitron_deploy", "doctor", "--json"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    for value in ("float32", "bfloat16"):
        r = doctor(value)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["auto_dtype"]["cpu"] == value
    r = doctor("float16")
    assert r.returncode == 2 and "MINITRON_AUTO_DTYPE" in r.stderr and "float32" in r.stderr


def test_steady_heap_lets_a_step_reuse_freed_pages():
    """After `steady_heap`, allocating and freeing the same 48 MB block again and again faults
    no new pages in (glibc's default maps each such block afresh: ~12k faults a time). Needs
    glibc (the setting is a no-op elsewhere, which the second part checks)."""
    import platform
    import resource

    import torch

    from minitron_deploy.hardware import steady_heap

    if platform.libc_ver()[0] != "glibc":
        steady_heap.cache_clear()
        assert steady_heap() is False
        return

    def faults(n=20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            torch.ones(12 << 20)  # 48 MB of float32, written, then freed
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    steady_heap.cache_clear()
    assert steady_heap() is True
    faults(), faults()  # the heap grows to hold the block where it is freed (~100k faults)
    assert faults() < 1000  # 20 x 48 MB = 240k pages if each block were mapped afresh


def test_steady_heap_can_be_switched_off(monkeypatch):
    from minitron_deploy.hardware import STEADY_HEAP_ENV, steady_heap

    monkeypatch.setenv(STEADY_HEAP_ENV, "0")
    steady_heap.cache_clear()
    try:
        assert steady_heap() is False
    finally:
        steady_heap.cache_clear()
