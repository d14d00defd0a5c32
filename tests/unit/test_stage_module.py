"""Adding a stage is one module (node config, run, estimate, one `STAGE` record) plus its node
in the graph: a toy stage written into a temporary module is registered from that module alone,
planned with its own estimate, run by the runner (which names no stage), cached on a rerun; the
launcher's choices and the profile's `defaults:` sections follow the records."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
from pydantic import ValidationError

from minitron_deploy.launch.config import launcher_config
from minitron_deploy.pipeline import runner
from minitron_deploy.pipeline.graph import Node
from minitron_deploy.pipeline.stages import (
    STAGE_MODULES,
    STAGES,
    default_sections,
    distributed_stages,
    table,
)
from minitron_deploy.profile import load_profile

TOY = '''
"""A toy stage: counts the source model's layers into a JSON file."""

import json
from typing import Any

from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage


class ToyNode(NodeConfig):
    scale: int


def run(ctx) -> dict[str, Any]:
    cfg = json.loads((ctx.model_dir("model") / "config.json").read_text())
    layers = cfg["num_hidden_layers"] * ctx.config.scale
    (ctx.out / "toy.json").write_text(json.dumps({"layers": layers}))
    return {"outputs": {"toy": "toy.json"}, "metrics": {"layers": layers}}


def estimate(node, gflops: float, dtype: str) -> E.Estimate:
    return E.Estimate(123.0, 456.0)


STAGE = Stage(
    "toy",
    ToyNode,
    run,
    "A toy stage from a temporary module.",
    compute=None,
    links=lambda node, out: {f"{node.variant}/toy.json": "toy"},
    estimate=estimate,
    distributed=True,
    defaults="merge",
)
'''

PROFILE = """\
name: toy
source: builtin:tiny-llama
variants:
  - name: base
"""


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    """The toy stage's module, imported from a temporary folder, and its record registered."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "toy_stage.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    module = importlib.import_module("toy_stage")
    yield module
    sys.modules.pop("toy_stage", None)


def test_a_stage_module_is_its_record(toy):
    stages = table([*STAGE_MODULES, toy])
    assert list(stages)[-1] == "toy" and stages["toy"] is toy.STAGE
    assert [n for n in stages if n != "toy"] == list(STAGES)  # the table as the package builds it
    # what the launcher and the profile read is derived from the records
    assert distributed_stages(stages) == (*distributed_stages(), "toy")
    assert "toy" in default_sections(stages) and "toy" not in default_sections(stages, ("fill",))
    launcher = launcher_config(distributed_stages(stages))
    assert launcher(kind="torchrun").runs("toy")
    with pytest.raises(ValidationError):
        launcher_config(distributed_stages())(stages=["toy"])
    with pytest.raises(ValueError, match="two stage modules"):
        table([toy, toy])


def test_the_runner_plans_and_runs_a_stage_it_has_never_heard_of(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "toy", table([toy])["toy"])
    real = runner.build_graph

    def with_toy(profile, base_dir=None, source_shape=None):  # its node in the graph
        nodes = real(profile, base_dir, source_shape)
        return [*nodes, Node("base/toy", "toy", "base", toy.ToyNode(scale=3), {"model": "source"})]

    monkeypatch.setattr(runner, "build_graph", with_toy)
    p = tmp_path / "toy.yaml"
    p.write_text(PROFILE)
    pipe = runner.Pipeline(load_profile(p), tmp_path / "wd", p)
    rows = {r["node"]: r for r in pipe.plan()}
    assert rows["base/toy"]["status"] == "to run"
    assert (rows["base/toy"]["est_seconds"], rows["base/toy"]["est_bytes"]) == (123.0, 456.0)

    rec = pipe.run(progress=False)
    assert rec["status"] == "ok", rec.get("error")
    entry = next(s for s in rec["stages"] if s["node"] == "base/toy")
    source = pipe.store.get("source", pipe.by_id["source"].key).content / "model"
    layers = 3 * json.loads((source / "config.json").read_text())["num_hidden_layers"]
    assert entry["metrics"] == {"layers": layers}
    (linked,) = (tmp_path / "wd" / "runs" / "toy").glob("*/outputs/base/toy.json")
    assert json.loads(linked.read_text()) == {"layers": layers}  # its own output link

    again = runner.Pipeline(load_profile(p), tmp_path / "wd", p).run(progress=False)
    assert [s["cached"] for s in again["stages"]] == [True, True]
