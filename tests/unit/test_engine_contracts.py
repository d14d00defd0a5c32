"""Engine contracts are declared by the records, and every record tells the truth.

`EngineSpec.measures_itself` / `streams` / `options` are what `bench`, `generate` and the
Triton model read instead of asking engine objects; these tests hold each record to its class.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest

from minitron_deploy.engines import ENGINES, MeasuresItself, Streams, spec_of
from minitron_deploy.engines.cli import add_engine_options, engine_options
from minitron_deploy.errors import ConfigError, InputError

# keyword arguments that carry in-process objects, not settings (no option can give them)
IN_PROCESS = {"config", "state_dict", "worker"}
PROTOCOL_METHODS = {
    "measures_itself": ("prepare", "throughput"),
    "streams": ("sample", "stream"),
}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_record_declares_exactly_what_the_class_implements(name):
    spec = ENGINES[name]
    cls = spec.load()
    for method in ("generate", "describe", "close"):
        assert callable(getattr(cls, method, None)), (name, method)
    for flag, methods in PROTOCOL_METHODS.items():
        has = [callable(getattr(cls, m, None)) for m in methods]
        assert all(has) == getattr(spec, flag), (name, flag, dict(zip(methods, has, strict=True)))
        assert all(has) or not any(has), (name, "implements half of", methods)
    assert cls.name == name  # spec_of finds a built engine's record by its name


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_options_model_is_the_engine_keyword_arguments(name):
    spec = ENGINES[name]
    params = inspect.signature(spec.load().__init__).parameters
    model = spec.options_model()
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        assert model is not None, name  # **opts: the engine parses them with its model
        return
    kwargs = {
        k
        for k, p in params.items()
        if p.kind is p.KEYWORD_ONLY and k not in {"dtype", "device"} | IN_PROCESS
    }
    fields = set(model.model_fields) if model else set()
    assert fields == kwargs, name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--engine")
    add_engine_options(p)  # raises on two engines' flags clashing
    return p


def test_engine_flags_are_generated_and_checked_per_engine():
    p = _parser()
    args = p.parse_args(["--compile", "--no-prepack", "--kv-cache-dtype", "compute"])
    assert engine_options(args, "torch") == {
        "compile": True,
        "prepack": False,
        "kv_cache_dtype": "compute",
    }
    assert engine_options(p.parse_args([]), "torch") == {}  # the engine's defaults stay
    assert engine_options(p.parse_args(["--vllm-threads", "2"]), "vllm") == {"threads": 2}
    with pytest.raises(InputError, match="--vllm-threads apply to --engine vllm only"):
        engine_options(p.parse_args(["--vllm-threads", "2"]), "torch")
    with pytest.raises(InputError, match="--hf-dir apply to --engine trtllm only"):
        engine_options(p.parse_args(["--hf-dir", "x"]), "hf")
    with pytest.raises(ConfigError, match="--vllm-kv-cache-gb"):
        engine_options(p.parse_args(["--vllm-kv-cache-gb", "0"]), "vllm")


def test_options_are_validated_by_the_record():
    assert ENGINES["torch"].option_problems({"compile": True}) == []
    (problem,) = ENGINES["torch"].option_problems({"compiled": True})
    assert problem.startswith("compiled")
    assert ENGINES["hf"].option_problems({"x": 1}) == ["x: engine 'hf' takes no options"]


class StandInTool:
    """Stand-in for an external benchmark tool built outside the table."""

    name = "stand-in-tool"

    def generate(self, ids, max_new_tokens, ignore_eos=False):
        raise AssertionError

    def describe(self):
        return {}

    def close(self):
        pass

    def throughput(self, isl, osl, batch, num_requests=None):
        return {"req_s": 1.0, "output_tok_s": float(osl)}


def test_engines_outside_the_table_get_an_ad_hoc_record():
    spec = spec_of(StandInTool())
    assert spec.measures_itself and not spec.streams and spec.name not in ENGINES
    assert not isinstance(StandInTool(), MeasuresItself)  # no prepare: not the full protocol
    assert not isinstance(StandInTool(), Streams)


def test_triton_refuses_an_engine_that_does_not_stream(tmp_path):
    from minitron_deploy.triton.runtime import load_engine

    for name, spec in ENGINES.items():
        if not spec.streams:
            with pytest.raises(InputError, match="does not stream"):
                load_engine(tmp_path, engine=name)  # refused before anything loads


def test_profile_checks_import_nothing_above_them():
    """The engine check lives in the engine registry: profile/ imports no search runtime."""
    src = Path(__file__).resolve().parents[2] / "minitron_deploy" / "profile" / "checks.py"
    mods = {
        n.module
        for n in ast.walk(ast.parse(src.read_text()))
        if isinstance(n, ast.ImportFrom) and n.module
    }
    assert "minitron_deploy.engines.registry" in mods
    assert not any(
        m.startswith(("minitron_deploy.search.run", "minitron_deploy.pipeline")) for m in mods
    )
