"""Engine options on a command line, generated from each engine's options model (its
`EngineSpec.options`): `bench` and `generate` call `add_engine_options` and `engine_options`,
so a new engine's flags need no command code. Torch-free."""

from __future__ import annotations

import argparse
from typing import Any

from minitron_deploy.cliopts import add_options, build, flag, given
from minitron_deploy.engines.registry import ENGINES, EngineSpec
from minitron_deploy.errors import InputError


def _dest(spec: EngineSpec) -> str:
    """Namespace prefix of an engine's options (distinct per engine, whatever the flags)."""
    return f"engine_opt:{spec.name}:"


def _rename(spec: EngineSpec) -> dict[str, str]:
    model = spec.options_model()
    return {f: spec.cli_prefix + f for f in model.model_fields} if model else {}


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """One argument group per engine that takes options, its flags generated from the model."""
    for spec in ENGINES.values():
        model = spec.options_model()
        if model is None:
            continue
        add_options(
            p.add_argument_group(f"{spec.name} engine ({model.__name__})"),
            model,
            rename=_rename(spec),
            dest_prefix=_dest(spec),
        )


def engine_options(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """The options of `engine` given on the command line, validated by its model (only the
    fields given, so the engine's own defaults stay in force).

    Raises:
        InputError: options of another engine were given.
        ConfigError: an invalid option value.
    """
    for spec in ENGINES.values():
        model = spec.options_model()
        if model is None or spec.name == engine:
            continue
        other = given(args, model, _dest(spec))
        if other:
            names = ", ".join(flag(k, _rename(spec)) for k in other)
            raise InputError(f"{names} apply to --engine {spec.name} only", where=names)
    spec = ENGINES[engine]
    model = spec.options_model()
    if model is None:
        return {}
    opts = build(
        model,
        args,
        what=f"invalid {engine} engine options",
        rename=_rename(spec),
        dest_prefix=_dest(spec),
    )
    return opts.model_dump(exclude_unset=True)
