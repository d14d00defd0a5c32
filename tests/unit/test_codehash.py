"""Keys follow every line of code a stage runs: each stage's code is the import closure of its
run function (computed, not listed), editing a module in it changes that stage's key and those
downstream of it and nothing else, and the compute dtype in a key is the one of the device the
stage runs on."""

from __future__ import annotations

import shutil

import pytest

from minitron_deploy.pipeline import Pipeline
from minitron_deploy.pipeline import codehash as ch
from minitron_deploy.pipeline.stages import STAGES
from minitron_deploy.profile import load_profile

CONTEXT_MODULE = "minitron_deploy.pipeline.context"  # what every run function gets

PROFILE = """\
name: keys
source: builtin:tiny-llama
data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}
importance: {num_samples: 4, seq_len: 16, layer_loss_blocks: [1]}
search: {budget: {max_params: 1e9}, steps: 2}
variants:
  - name: width
    prune: {hidden_size: 48}
    distill: {steps: 2}
    export: {formats: [hf-fp8, onnx]}
    package: {}
  - name: found
    search: true
bench: {engine: torch, isl_osl: "8/4"}
"""


@pytest.fixture()
def pipe(tmp_path):
    p = tmp_path / "keys.yaml"
    p.write_text(PROFILE)
    return Pipeline(load_profile(p), tmp_path / "wd", p)


def _closure(stage: str) -> tuple[set[str], set[str]]:
    spec = STAGES[stage]
    mods, data = ch.code_closure([f for f in (spec.run, spec.keyed) if f is not None])
    ctx_mods, ctx_data = ch.module_closure([CONTEXT_MODULE])
    short = {m.removeprefix("minitron_deploy.") for m in [*mods, *ctx_mods]}
    return short, {p.relative_to(ch.ROOT).as_posix() for p in [*data, *ctx_data]}


def test_stage_code_is_the_import_closure_of_its_run_function():
    search, _ = _closure("search")
    # it ranks by evaluation.loss, prunes, distils, and measures on the bench engine
    assert {"evaluation.loss", "compress.slicing", "distill.trainer", "bench.matrix"} <= search
    bench, bench_data = _closure("bench")
    # the torch engine imports the FP8 modules; the registry names every engine by string
    assert {"quant.fp8", "export.hf_fp8", "engines.torch_engine", "engines.hf"} <= bench
    assert {"engines/profiles/bf16.yaml", "engines/profiles/fp8.yaml"} <= bench_data
    importance, _ = _closure("importance")
    assert {"model.io", "compress.importance", "distill.distributed"} <= importance
    export, _ = _closure("export")
    assert {"export.hf", "export.hf_fp8", "export.trtllm_ckpt", "export.onnx"} <= export
    _, package_data = _closure("package")
    assert "triton/model_py/torch_model.py" in package_data  # copied into the repository
    source, _ = _closure("source")
    assert "distill.trainer" not in source and "compress.slicing" not in source
    for stage in STAGES:  # the orchestrator is nobody's code
        mods, _ = _closure(stage)
        assert not {"pipeline.runner", "pipeline.stages", "pipeline.graph"} & mods, stage


def test_an_edit_reaches_every_stage_that_runs_the_module(pipe, monkeypatch):
    """Modules the hand-written lists missed: the search ranks by evaluation.loss, the bench's
    torch engine imports quant.fp8, importance loads with model.io."""
    real = ch._file_digest
    for module, stage in [
        ("evaluation/loss.py", "search"),
        ("quant/fp8.py", "bench"),
        ("model/io.py", "width/importance"),
    ]:
        before = {n.id: n.key for n in pipe.nodes}

        def edited(path: str, mtime_ns: int, size: int, module=module) -> str:
            return "edited" if path.endswith(module) else real(path, mtime_ns, size)

        monkeypatch.setattr(ch, "_file_digest", edited)
        pipe._compute_keys()
        assert pipe.by_id[stage].key != before[stage], module
        monkeypatch.setattr(ch, "_file_digest", real)
        pipe._compute_keys()


def _downstream(pipe: Pipeline, ids: set[str]) -> set[str]:
    out = set(ids)
    for node in pipe.nodes:  # topological order
        if set(node.inputs.values()) & out:
            out.add(node.id)
    return out


def test_editing_any_module_changes_exactly_its_stages_and_what_follows(pipe, monkeypatch):
    """Every module of the package, edited in turn (its digest): the nodes whose key changes
    are those whose stage's closure holds it, and everything downstream of them."""
    before = {n.id: n.key for n in pipe.nodes}
    closures = {}  # stage -> the files its key reads (modules and data)
    for s, (mods, data) in {s: _closure(s) for s in STAGES}.items():
        full = [m if m == "minitron_deploy" else "minitron_deploy." + m for m in mods]
        closures[s] = {str(ch.package_modules()[m]) for m in full}
        closures[s] |= {str(ch.ROOT / f) for f in data}
    real = ch._file_digest
    edited = {"path": ""}

    def digest(path: str, mtime_ns: int, size: int) -> str:
        return "edited" if path == edited["path"] else real(path, mtime_ns, size)

    monkeypatch.setattr(ch, "_file_digest", digest)
    checked = 0
    for name, path in sorted(ch.package_modules().items()):
        direct = {n.id for n in pipe.nodes if str(path) in closures[n.stage]}
        edited["path"] = str(path)
        pipe._compute_keys()
        changed = {n.id for n in pipe.nodes if n.key != before[n.id]}
        assert changed == _downstream(pipe, direct), name
        checked += bool(direct) and direct != {n.id for n in pipe.nodes}
    assert checked > 30  # most modules touch some stages and not others


def test_a_real_edit_in_a_copy_of_the_package(pipe, tmp_path, monkeypatch):
    """The same through the files themselves: a copy of the package, one file edited."""
    copy = tmp_path / "pkg" / "minitron_deploy"
    shutil.copytree(ch.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(ch, "ROOT", copy)
    ch.package_modules.cache_clear()
    try:
        pipe._compute_keys()
        before = {n.id: n.key for n in pipe.nodes}
        with open(copy / "evaluation" / "loss.py", "a") as f:
            f.write("\n# an edit\n")
        pipe._compute_keys()
        changed = {n.id for n in pipe.nodes if n.key != before[n.id]}
    finally:
        ch.package_modules.cache_clear()
    # the layer ranking (importance, prune) and the search read the loss
    assert {"width/importance", "width/prune", "search", "search/importance"} <= changed
    assert not {"source", "data:calibration"} & changed  # upstream of every reader
    # the search's model feeds the bench: it follows
    assert "bench" in changed


def test_compute_dtype_is_that_of_the_device_the_stage_runs_on(pipe, monkeypatch, tmp_path):
    from minitron_deploy.hardware import auto_dtype_name

    cpu = auto_dtype_name("cpu")
    env = pipe.env_of(pipe.by_id["width/prune"])
    assert env["compute_dtype"] == {"cpu": cpu}
    assert "compute_dtype" not in pipe.env_of(pipe.by_id["source"])  # no numbers computed
    # On a machine with a GPU, importance and distillation compute there (CUDA's auto);
    # pruning and FP8 calibration stay on the CPU.
    before = {n.id: n.key for n in pipe.nodes}
    monkeypatch.setattr(pipe, "_device", "cuda")
    monkeypatch.setattr("minitron_deploy.hardware.dtype_name", lambda req, dev: f"{req}/{dev}")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert pipe.env_of(pipe.by_id["width/importance"])["compute_dtype"] == {"cuda": "auto/cuda"}
    assert pipe.env_of(pipe.by_id["width/distill"])["compute_dtype"] == {"cuda": "auto/cuda"}
    assert pipe.env_of(pipe.by_id["width/prune"])["compute_dtype"] == {"cpu": "auto/cpu"}
    # the bench's own device and dtype
    assert pipe.env_of(pipe.by_id["bench"])["compute_dtype"] == {"cpu": "auto/cpu"}
    pipe._compute_keys()
    assert pipe.by_id["width/importance"].key != before["width/importance"]
    assert pipe.by_id["source"].key == before["source"]


def test_a_slurm_stage_is_keyed_by_the_gpu_node_not_the_login_node(tmp_path, monkeypatch):
    p = tmp_path / "keys.yaml"
    p.write_text(
        PROFILE.replace("distill: {steps: 2}", "distill: {steps: 2, dtype: float32}")
        + "launcher: {kind: slurm}\n"
    )
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a login node
    pipe = Pipeline(load_profile(p), tmp_path / "wd", p)
    assert pipe.env_of(pipe.by_id["width/importance"])["compute_dtype"] == {"cuda": "auto@cuda"}
    assert pipe.env_of(pipe.by_id["width/distill"])["compute_dtype"] == {"cuda": "float32"}
    assert set(pipe.env_of(pipe.by_id["width/prune"])["compute_dtype"]) == {"cpu"}


def test_digest_is_cached_per_process():
    import time

    run = STAGES["search"].run
    ch.code_digest([run])
    t0 = time.perf_counter()
    for _ in range(20):
        ch.code_digest([run])
    assert (time.perf_counter() - t0) / 20 < 0.05  # seconds per digest, warm
