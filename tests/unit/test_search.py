"""Architecture search on tiny odd-shaped models (head_dim != hidden/heads, GQA). Speed comes
from `testing.FlopsStandInEngine`, a STAND-IN for an engine (sleeps in proportion to FLOPs),
where timing is not the point; the real torch engine is measured in the last test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minitron_deploy.cli import main
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.search.candidates import enumerate_candidates
from minitron_deploy.search.config import SearchConfig

ODD = dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@pytest.fixture
def standin_engine(monkeypatch):
    from minitron_deploy.engines.registry import ENGINES, EngineSpec

    spec = EngineSpec(
        "flops-stand-in",
        "minitron_deploy.testing:FlopsStandInEngine",
        "STAND-IN engine for tests: sleeps in proportion to FLOPs",
        modules=(),
    )
    monkeypatch.setitem(ENGINES, "flops-stand-in", spec)
    return "flops-stand-in"


@pytest.fixture(scope="module")
def odd_ckpt(tmp_path_factory):
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("odd") / "m", seed=1, **ODD)


def test_candidates_cover_the_grid_and_count_parameters_exactly(odd_ckpt, tiny_ckpt):
    from minitron_deploy.compress.config import PruneConfig
    from minitron_deploy.compress.slicing import prune_model
    from minitron_deploy.model.io import load_llama, read_config

    src = LlamaShape.from_config(read_config(odd_ckpt))
    assert src.head_dim * src.num_attention_heads != src.hidden_size  # odd shape
    cfg = SearchConfig(
        budget={"max_params": 1e9},
        grid={"hidden_size": [96, 64, 36], "intermediate_size": [200, 128],
              "heads_per_group": [2, 1], "num_layers": [5, 3], "multiple": 4},
    )  # fmt: skip
    cands = enumerate_candidates(src, cfg)
    # every grid point but the source itself, and but hidden 36 with 4 heads (36 % 4 == 0 is
    # fine; 36 % 2 too) - all divide here, so 3 x 2 x 2 x 2 - 1
    assert len(cands) == 3 * 2 * 2 * 2 - 1
    assert all(c.hidden_size % c.num_attention_heads == 0 for c in cands)
    assert all(c.num_attention_heads % c.num_key_value_heads == 0 for c in cands)
    model = load_llama(odd_ckpt)
    for c in (cands[0], cands[-1]):
        pruned, _ = prune_model(model, None, PruneConfig(**c.targets(), selection="random"))
        assert pruned.num_parameters() == c.shape(src).num_parameters
        assert pruned.config.head_dim == 16
    width = enumerate_candidates(src, cfg.model_copy(update={"mode": "width"}))
    assert {c.num_layers for c in width} == {5}
    depth = enumerate_candidates(src, cfg.model_copy(update={"mode": "depth"}))
    assert {(c.hidden_size, c.num_layers) for c in depth} == {(96, 3)}
    odd = enumerate_candidates(
        src, cfg.model_copy(update={"grid": cfg.grid.model_copy(update={"hidden_size": [90]})})
    )
    assert {c.num_attention_heads for c in odd} == {2}  # 90 heads 4: not loadable, left out


def _profile(tmp_path, ckpt, search: str, engine: str = "flops-stand-in", variant=True) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(
        f"name: s\nsource: {ckpt}\n"
        "data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}\n"
        "importance: {num_samples: 8, seq_len: 32}\n"
        f"search: {search}\n"
        + (
            "variants:\n  - name: found\n    search: true\n"
            "    distill: {steps: 2, global_batch: 2, micro_batch: 2, seq_len: 32, "
            "warmup_steps: 0, eval_samples: 2, teacher_check: false}\n"
            if variant
            else "variants:\n  - name: base\n"
        )
        + f"bench: {{engine: {engine}, isl_osl: '16/8', warmup: 0, repeats: 3}}\n"
    )
    return str(p)


GRID = (
    "{hidden_size: [96, 64, 48], intermediate_size: [200, 96], heads_per_group: [2, 1], "
    "num_layers: [5, 3], multiple: 16}"
)


def test_search_meets_a_measured_budget_and_reuses_finished_candidates(
    odd_ckpt, standin_engine, tmp_path, capsys, monkeypatch
):
    # 1.9 lies in a 12% gap of this grid's compute ratios (1.79 / 2.00); the stand-in sleeps
    # ~40 ms a call here so that a loaded host's scheduling noise stays small against it
    from minitron_deploy.testing import FlopsStandInEngine

    monkeypatch.setattr(FlopsStandInEngine, "SECONDS_PER_FLOP", 1e-9)
    search = (
        f"{{budget: {{min_speedup: 1.9}}, grid: {GRID}, top_k: 1, steps: 2, "
        "val_samples: 2, val_seq_len: 32, calibration_shapes: 6, batch: [2, 2]}"
    )
    prof = _profile(tmp_path, odd_ckpt, search)
    wd = tmp_path / "wd"
    assert main(["search", prof, "--workdir", str(wd), "--quiet", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    rep = next((wd / "store").rglob("candidates.json"), None) or next(wd.rglob("candidates.json"))
    rows = json.loads(rep.read_text())["rows"]
    win = summary["winner"]
    assert win["measured"] and win["speedup_lo"] >= 1.9 and win["chosen"]
    reranked = [r for r in rows if r["reranked_loss"] is not None]
    # at most top_k (1) of each family, plus the seed shapes; each measured to meet the budget
    # by its interval's lower bound
    grid_picks = [r for r in reranked if not r["seed"]]
    assert len({r["family"] for r in grid_picks}) == len(grid_picks) >= 2
    assert all(r["measured"] and r["speedup_lo"] >= 1.9 for r in reranked)
    assert {r["id"] for r in reranked} == set(summary["reranked"])
    assert win["reranked_score"] == min(r["reranked_score"] for r in reranked)
    # the cost model predicted the unmeasured ones and was validated on shapes it never saw
    cm = summary["cost_model"]
    # (fitted on the 6 calibration shapes, refitted on every shape measured in the band: how
    # many depends on the host's noise)
    assert len(cm["calibration"]) == 6 and cm["leave_one_out"]["n"] == cm["shapes"] >= 6
    assert cm["shapes"] <= sum(r["measured"] for r in rows)
    # shapes predicted within the model's leave-one-out error beyond the measured intervals
    # (the band) of the budget and never measured are counted
    band = cm["band"]
    assert band == max(0.03, cm["leave_one_out_beyond_interval"]["max"])
    assert cm["leave_one_out_beyond_interval"]["max"] <= cm["leave_one_out"]["max"]
    near = [
        r
        for r in rows
        if r["rejected"] is None
        and not r["measured"]
        and r["speedup"] * (1 - band) < 1.9 <= r["speedup"] * (1 + band)
    ]
    assert summary["unmeasured_near_budget"] == len(near)
    # each family's ranked shapes were walked in zero-shot order and measured when reached:
    # every one ahead of the family's finalist was measured, none below it for the walk
    ranked = [r for r in rows if r["zero_shot_loss"] is not None]
    for fam in {r["family"] for r in grid_picks}:
        walk = sorted((r for r in ranked if r["family"] == fam), key=lambda r: r["zero_shot_loss"])
        k = next(j for j, r in enumerate(walk) if r["id"] in summary["reranked"])
        assert all(r["measured"] for r in walk[:k])
        assert all(r["measured"] or r["zero_shot_loss"] >= walk[k]["zero_shot_loss"] for r in walk)
    assert len(ranked) == summary["zero_shot_evaluated"] <= 40
    assert "| candidate |" in out and win["id"] in out and "leave-one-out" in out
    # where the time went: every phase that ran, its items, within the search's own wall time
    ph = summary["phases"]
    assert set(ph) == {"measure", "zero_shot", "short"}
    assert ph["zero_shot"]["n"] == summary["zero_shot_evaluated"]
    assert ph["short"]["n"] == len(summary["reranked"])
    assert ph["measure"]["n"] >= sum(r["measured"] for r in rows)  # re-measured finalists too
    # each phase and the total are rounded to 0.1 s: up to 0.05 s of rounding per number
    assert 0 < sum(v["seconds"] for v in ph.values()) <= summary["seconds"] + 0.05 * (len(ph) + 1)
    assert (
        f"Time: {summary['seconds'] / 60:.1f} min in all" in rep.with_name("report.md").read_text()
    )
    assert (rep.parent / "pareto.png").stat().st_size > 1000
    # a larger top_k reuses the finished candidates and distils the next of each family
    prof = _profile(tmp_path, odd_ckpt, search.replace("top_k: 1", "top_k: 2"))
    capsys.readouterr()
    assert main(["search", prof, "--workdir", str(wd), "--json"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    err = captured.err
    kept = set(summary["reranked"]) & set(again["reranked"])
    assert len(again["reranked"]) > len(summary["reranked"])
    assert err.count("reused from") == len(kept)
    assert err.count("short distillation of") == len(again["reranked"]) - len(kept)
    # the pipeline carries the winner on as a variant (distilled, benchmarked)
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    rec = Pipeline(load_profile(prof), wd, prof).run(progress=False)
    assert rec["status"] == "ok", rec.get("error")
    stages = {s["node"]: s for s in rec["stages"]}
    assert stages["search"]["cached"] and not stages["found/distill"]["cached"]


def test_finished_candidates_are_keyed_like_the_store(
    odd_ckpt, standin_engine, tmp_path, capsys, monkeypatch
):
    """The search cache holds short distillations keyed by the code digest, library versions
    and compute dtypes too: after an edit in the distillation's code none is reused."""
    import minitron_deploy.pipeline.codehash as ch

    search = (
        f"{{budget: {{max_params: 1e9}}, grid: {GRID}, top_k: 1, steps: 2, max_candidates: 3, "
        "val_samples: 2, val_seq_len: 32, seed_shapes: false}"
    )
    prof = _profile(tmp_path, odd_ckpt, search)  # the variant's distill settings
    wd = str(tmp_path / "wd")
    assert main(["search", prof, "--workdir", wd]) == 0
    # the 3 largest, one of each family in turn, and the best of each family re-ranked
    assert capsys.readouterr().err.count("short distillation of") == 3
    real = ch._file_digest

    def edited(path: str, mtime_ns: int, size: int) -> str:
        return "edited" if path.endswith("distill/losses.py") else real(path, mtime_ns, size)

    monkeypatch.setattr(ch, "_file_digest", edited)
    assert main(["search", prof, "--workdir", wd]) == 0
    err = capsys.readouterr().err
    assert "reused from" not in err and err.count("short distillation of") == 3


def test_budget_nobody_meets_names_the_binding_constraint(
    odd_ckpt, standin_engine, tmp_path, capsys
):
    prof = _profile(
        tmp_path, odd_ckpt, f"{{budget: {{max_params: 1000}}, grid: {GRID}}}", variant=False
    )
    assert main(["search", prof, "--workdir", str(tmp_path / "wd"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no candidate of 25 meets the budget" in err  # the grid's 23 and 2 seed shapes
    assert "binding constraint is max_params" in err and "h48-f96-a2x2-l3" in err


def test_bad_grids_and_engines_exit_2(odd_ckpt, standin_engine, tmp_path, capsys):
    wd = str(tmp_path / "wd")
    bad = "{budget: {max_params: 1e9}, grid: {num_attention_heads: [4, 3]}}"
    assert main(["search", _profile(tmp_path, odd_ckpt, bad, variant=False), "--workdir", wd]) == 2
    assert "3 attention heads do not divide into 2 KV groups" in capsys.readouterr().err
    big = "{budget: {max_params: 1e9}, grid: {hidden_size: [128]}}"
    assert main(["search", _profile(tmp_path, odd_ckpt, big, variant=False), "--workdir", wd]) == 2
    assert "outside 1..96" in capsys.readouterr().err
    gpu = "{budget: {min_speedup: 1.5}}"
    prof = _profile(tmp_path, odd_ckpt, gpu, engine="trtllm", variant=False)
    assert main(["search", prof, "--workdir", wd]) == 2
    err = capsys.readouterr().err
    assert "min_speedup is measured on the bench engine 'trtllm'" in err
    prof = Path(_profile(tmp_path, odd_ckpt, gpu, variant=False))
    prof.write_text("".join(x for x in prof.read_text().splitlines(True) if "bench:" not in x))
    assert main(["search", str(prof), "--workdir", wd]) == 2
    assert "no bench section" in capsys.readouterr().err


def test_real_engine_speedup_of_a_smaller_shape(odd_ckpt, tmp_path):
    """The torch engine itself (no stand-in): a candidate with 3 of 5 layers and a narrower
    FFN is measured faster than the source at the same batch."""
    from minitron_deploy.bench.config import BenchConfig
    from minitron_deploy.model.io import read_config
    from minitron_deploy.search.run import Search

    grid = {
        "num_layers": [3],
        "hidden_size": [96],
        "intermediate_size": [96],
        "heads_per_group": [2],
    }
    cfg = SearchConfig(budget={"min_speedup": 1.0}, grid=grid, batch=(4, 4), seed_shapes=False)
    bench = BenchConfig(engine="torch", isl_osl=((32, 16),), warmup=1, repeats=3)
    s = Search(odd_ckpt, {}, cfg, bench, tmp_path / "cache", progress=False, log=lambda m: None)
    s.enumerate()
    [cid] = list(s.rows)
    s.measure([cid])
    assert s.rows[cid]["measured"] and s.rows[cid]["speedup"] > 1.0
    shape = read_config(s._random_model(s.cands[cid]))
    assert (shape["num_hidden_layers"], shape["intermediate_size"], shape["head_dim"]) == (
        3,
        96,
        16,
    )


def test_a_depth_candidate_drops_the_layers_a_hand_picked_prune_would(odd_ckpt, tmp_path):
    """A searched depth-only shape is pruned as the prune stage prunes that shape by default
    (block_loss on the same ranking text): the same tensors, so a search can never lose to a
    hand-picked student of its own shape by its choice of layers."""
    from safetensors.torch import load_file

    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    p = tmp_path / "s.yaml"
    p.write_text(
        f"name: s\nsource: {odd_ckpt}\n"
        "data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}\n"
        "importance: {num_samples: 8, seq_len: 32}\n"
        "search: {budget: {max_params: 1e9}, grid: {hidden_size: [96], intermediate_size: "
        "[200], heads_per_group: [2], num_layers: [3]}, seed_shapes: false, top_k: 1, "
        "steps: 1, val_samples: 2, val_seq_len: 32, layer_val_samples: 4, "
        "layer_val_seq_len: 32}\n"
        "variants:\n  - name: found\n    search: true\n"
        "    distill: {steps: 1, global_batch: 2, micro_batch: 2, seq_len: 32, "
        "warmup_steps: 0, eval_samples: 2, teacher_check: false}\n"
        "  - name: depth\n    prune: {num_layers: 3, val_samples: 4, val_seq_len: 32}\n"
    )
    rec = Pipeline(load_profile(str(p)), tmp_path / "wd", str(p)).run(progress=False)
    assert rec["status"] == "ok", rec.get("error")
    stages = {s["node"]: s for s in rec["stages"]}
    dropped = stages["depth/prune"]["metrics"]["dropped_layers"]
    assert len(dropped) == 2
    found = next((tmp_path / "wd").rglob("search/*/content/model/model.safetensors"))
    hand = next((tmp_path / "wd").rglob("prune/*/content/model/model.safetensors"))
    a, b = load_file(found), load_file(hand)
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)


def test_agreement_distils_longer_only_candidates_within_the_margin(odd_ckpt, tmp_path, capsys):
    # max_params only: nothing is measured (the bench section is not read)
    """The longer (agreement) distillation skips re-ranked candidates more than
    `agreement_margin` nats behind the best short score; tau is over those distilled longer,
    the skipped ones are named with their gaps, and the winner comes from the longer runs."""

    def run(margin: str) -> tuple[dict, str]:
        search = (
            f"{{budget: {{max_params: 1.0e9}}, grid: {GRID}, top_k: 1, steps: 2, "
            f"agreement_steps: 4, agreement_margin: {margin}, val_samples: 2, val_seq_len: 32}}"
        )
        wd = tmp_path / f"wd-{margin}"
        prof = _profile(tmp_path, odd_ckpt, search, engine="torch")
        assert main(["search", prof, "--workdir", str(wd), "--quiet", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        report = next(wd.rglob("report.md")).read_text()
        return summary, report

    every, _ = run("null")
    ag = every["agreement"]
    assert ag["n"] == len(every["reranked"]) >= 3 and ag["behind"] == {}
    some, report = run("1.0e-6")  # only the best short score (ties aside) is distilled longer
    ag = some["agreement"]
    assert ag["n"] == 1 and ag["kendall_tau"] is None
    assert set(ag["behind"]) == set(some["reranked"]) - {some["winner"]["id"]}
    assert all(d > 1.0e-6 for d in ag["behind"].values())
    assert some["winner"]["long_score"] is not None and ag["same_winner"]
    assert "Not distilled longer" in report and "cannot win" in report
