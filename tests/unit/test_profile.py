"""Profiles: every shipped profile validates, mistakes are all reported with YAML paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minitron_deploy.profile import ProfileErrors, apply_overrides, load_profile

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profiles_validate(path):
    # The GPU recipe points at a cluster path that does not exist here.
    profile = load_profile(path, check_source="8b" not in path.stem)
    assert profile.variants and profile.name == path.stem


def test_schema_is_current(tmp_path):
    from minitron_deploy.profile.schema import write_schema

    write_schema(tmp_path / "schema.json")
    committed = Path(__file__).resolve().parents[2] / "profiles" / "schema.json"
    assert json.loads(committed.read_text()) == json.loads(
        (tmp_path / "schema.json").read_text()
    ), "run: minitron-deploy validate profiles/ci-tiny.yaml --schema profiles/schema.json"


def test_config_import_is_torch_free():
    code = (
        "import sys; import minitron_deploy.profile, minitron_deploy.cliopts\n"
        "assert 'torch' not in sys.modules, 'torch imported by the profile schema'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


TEN_MISTAKES = """\
name: broken
source: builtin:tiny-llama
sed: 3                              # 1 unknown key
data:
  val_fraction: 2                   # 2 out of range
importance:
  batch_agg: median                 # 3 not an option
variants:
  - name: Base                      # 4 bad name
  - name: width
    prune:
      hidden_size: 512              # 5 larger than the source (96)
      num_attention_heads: 5        # 6 not divisible by the 2 KV heads
  - name: depth
    prune: {num_layers: 9}          # 7 more layers than the source (5)
    distill: {steps: 0}             # 8 steps must be >= 1
  - name: chain
    from: nowhere                   # 9 unknown parent... reported after field errors
bench:
  engine: torch
  isl_osl: "1000/100"                # 10 ISL+OSL beyond max_position_embeddings (1024)
"""


def test_ten_mistakes_reported_together(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text(TEN_MISTAKES)
    with pytest.raises(ProfileErrors) as e:
        load_profile(p)
    problems = e.value.problems
    expected = [
        "sed (line 3)",
        "data.val_fraction (line 5)",
        "importance.batch_agg (line 7)",
        "variants[0].name (line 9)",
        "variants[1].prune.hidden_size (line 12)",
        "variants[1].prune.num_attention_heads (line 13)",
        "variants[2].prune.num_layers (line 15)",
        "variants[2].distill.steps (line 16)",
        "variants[3].from (line 18)",
        "bench.isl_osl (line 21)",
    ]
    assert len(problems) == 10, problems
    for where in expected:
        assert any(p.startswith(where) for p in problems), (where, problems)


def test_overrides_by_variant_name():
    data = {"variants": [{"name": "base"}, {"name": "width", "distill": {"steps": 5}}]}
    out = apply_overrides(data, ["variants.width.distill.steps=7", "seed=3"])
    assert out["variants"][1]["distill"]["steps"] == 7 and out["seed"] == 3
    assert data["variants"][1]["distill"]["steps"] == 5  # input untouched
