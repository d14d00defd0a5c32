"""The depth-metric table is the one declaration: settings, CLI, docs and checks follow it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.layers import DEPTH_METRICS, DepthChoice, depth_score_key, loss_key
from minitron_deploy.compress.plan import plan_prune
from minitron_deploy.errors import InputError
from minitron_deploy.testing import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_setting_literal_and_schema_text_come_from_the_table():
    field = PruneConfig.model_fields["layer_metric"]
    assert typing.get_args(field.annotation) == tuple(DEPTH_METRICS)
    for m in DEPTH_METRICS.values():
        assert m.name in field.description and m.help in field.description
    with pytest.raises(ValueError):
        PruneConfig(num_layers=3, layer_metric="no_such_metric")


def test_cli_choices_come_from_the_table(capsys):
    from minitron_deploy.cli import build_parser

    for cmd, flag, names in (
        ("prune", "--layer-metric", list(DEPTH_METRICS)),
        ("importance", "--sensitivity-layer-metric",
         [n for n, m in DEPTH_METRICS.items() if m.reads != "task"]),
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert f"{flag} {{{','.join(names)}}}" in out


def test_readme_lists_every_metric():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Depth metrics**") : text.index("**Adding a depth metric**")]
    for m in DEPTH_METRICS.values():
        assert f"| `{m.name}`" in section


@pytest.mark.parametrize("name", list(DEPTH_METRICS))
def test_checks_read_the_table(name):
    """Which score key pruning reads, and whether it ranks by loss, follow the declaration."""
    m = DEPTH_METRICS[name]
    cfg = PruneConfig(num_layers=3, layer_metric=name)
    key = depth_score_key(cfg, 5)
    assert key == m.key(2)
    assert cfg.ranks_layers_by_loss is (m.reads == "validation")
    need = plan_prune(tiny_config(), cfg).required_scores(with_depth=False)  # the one PrunePlan
    assert (key in need) is (m.reads == "scores")


def test_loss_metrics_select_from_stored_rankings_and_refuse_without_data():
    n, k = 5, 2
    losses = {loss_key(2): torch.tensor([3.0, 1.0, 2.0, 4.0]), loss_key(1): torch.tensor(
        [5.0, 1.0, 4.0, 0.5, 3.0])}  # fmt: skip

    def choice(name, scores):
        cfg = PruneConfig(num_layers=n - k, layer_metric=name)
        return DepthChoice(None, scores, k, cfg, None, 8, False, None)

    assert DEPTH_METRICS["block_loss"].select(choice("block_loss", losses)) == [1, 2]
    assert DEPTH_METRICS["single_loss"].select(choice("single_loss", losses)) == [1, 3]
    bi = {"block_importance": torch.tensor([0.5, 0.1, 0.9, 0.2, 0.3])}
    assert DEPTH_METRICS["block_importance"].select(choice("block_importance", bi)) == [1, 3]
    for name in ("block_loss", "single_loss", "block_importance"):
        with pytest.raises(InputError):
            DEPTH_METRICS[name].select(choice(name, {}))
    with pytest.raises(InputError, match="tokenizer"):
        DEPTH_METRICS["task_accuracy"].select(choice("task_accuracy", {}))
