"""Downstream tasks through lm-evaluation-harness (the real `lm-eval` package, offline): scores
equal a hand computation, the FP8 reader path, the offline task generator, task-accuracy depth
selection, the pipeline stage's cache, and bad input (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is installed by `make test` (.[eval])")

from minitron_deploy.cli import main  # noqa: E402

ITEMS = [
    {"context": "the cat sat on the", "choices": ["mat", "dog", "tree"], "label": 0},
    {"context": "def add(a, b): return a", "choices": ["+ b", "- b", "* b"], "label": 0},
    {"context": "one two three", "choices": ["four", "five", "six"], "label": 2},
    {"context": "import", "choices": ["os", "sys", "json"], "label": 1},
    {"context": "hello", "choices": ["world", "there"], "label": 1},
    {"context": "a b c d", "choices": ["e", "f g", "hij"], "label": 0},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A local lm-eval task: YAML + JSONL, multiple choice with a space delimiter."""
    d = tmp_path_factory.mktemp("tasks")
    data = d / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    (d / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    return d


def _hand_scores(model, tok) -> tuple[float, float]:
    """acc and acc_norm computed here: sum of log-probs of each choice's tokens after the
    context (context + ' ' + choice encoded whole, the context's tokens cut off), argmax; for
    acc_norm divided by the choice's length in bytes (with its delimiter)."""
    acc = norm = 0
    for it in ITEMS:
        ctx = tok(it["context"], add_special_tokens=False)["input_ids"]
        lls = []
        for ch in it["choices"]:
            whole = tok(it["context"] + " " + ch, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = model(ids, use_cache=False).logits.float().log_softmax(-1)[0]
            cont = whole[len(ctx) :]
            lls.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        lens = [len((" " + c).encode()) for c in it["choices"]]
        acc += int(max(range(len(lls)), key=lambda i: lls[i]) == it["label"])
        norm += int(max(range(len(lls)), key=lambda i: lls[i] / lens[i]) == it["label"])
    return acc / len(ITEMS), norm / len(ITEMS)


def test_local_task_scores_equal_a_hand_computation(tiny_ckpt, task_dir):
    from minitron_deploy.evaluation.harness import evaluate_tasks, load_for_eval

    model, tok = load_for_eval(tiny_ckpt, "float32")
    res = evaluate_tasks(model, tok, [str(task_dir / "tiny_mc.yaml")], batch_size=4)
    m = res["tasks"]["tiny_mc"]["metrics"]
    acc, norm = _hand_scores(model, tok)
    assert m["acc"] == pytest.approx(acc) and m["acc_norm"] == pytest.approx(norm)
    assert res["tasks"]["tiny_mc"]["samples"] == len(ITEMS)
    # items right and the chance level (mean of 1/choices: five items of 3, one of 2)
    t = res["tasks"]["tiny_mc"]
    assert t["correct"] == {"acc": round(acc * len(ITEMS)), "acc_norm": round(norm * len(ITEMS))}
    assert t["chance"] == pytest.approx((5 / 3 + 1 / 2) / 6)
    assert t["output_type"] == "multiple_choice"


def test_eval_command_on_fp8_export_writes_json_and_markdown(
    tiny_ckpt, task_dir, text_dir, tmp_path, capsys
):
    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.evaluation.harness import evaluate_tasks
    from minitron_deploy.export import export_model
    from minitron_deploy.export.format import ExportSettings
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint
    from minitron_deploy.model.io import load_tokenizer

    fp8 = tmp_path / "fp8"
    export_model(
        tiny_ckpt, fp8, "hf-fp8", ExportSettings(dtype="fp8", calib_samples=4, calib_seq_len=32,
                                                  verify=False),
        DataRef(source=str(text_dir)),
    )  # fmt: skip
    out = tmp_path / "res"
    argv = ["eval", "--model", str(fp8), "--tasks", str(task_dir), "--out", str(out), "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    got = res["downstream"]["tasks"]["tiny_mc"]["metrics"]
    # the command read the export with the project's FP8 reader (W8A8 as served)
    served = load_fp8_checkpoint(fp8, dequantize=False)
    want = evaluate_tasks(served, load_tokenizer(fp8), [str(task_dir / "tiny_mc.yaml")])
    assert got == want["tasks"]["tiny_mc"]["metrics"]
    assert json.loads((out / "results.json").read_text())["downstream"]["tasks"]["tiny_mc"]
    assert "| tiny_mc | acc |" in (out / "results.md").read_text()


def test_offline_tasks_are_generated_once_and_deterministic(tmp_path):
    from minitron_deploy.evaluation.offline_tasks import TASKS, generate_items, offline_tasks_dir

    a = offline_tasks_dir(tmp_path, n_items=20)
    assert offline_tasks_dir(tmp_path, n_items=20) == a
    for name in TASKS:
        rows = [json.loads(x) for x in (a / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 20 and rows == generate_items(name, 20)
        if "choices" in rows[0]:
            for r in rows:  # the answer is among 4 distinct choices, and follows the context
                assert len(set(r["choices"])) == 4 and 0 <= r["label"] < 4
        else:
            assert all(r["target"].startswith(" ") and r["target"][1:].isalpha() for r in rows)


def test_bad_task_names_exit_2_with_close_names(tiny_ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    argv = ["eval", "--model", str(tiny_ckpt), "--tasks", "minitron_cloze_prse", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown task 'minitron_cloze_prse'" in err and "minitron_cloze_prose" in err
    assert not out.exists()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["eval", "--model", str(tiny_ckpt), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err
    assert "needs the data set" in err and "hub" in err and "minitron_cloze_code" in err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "minitron_last_word"]) == 2


def test_task_accuracy_drops_the_block_whose_removal_keeps_accuracy(tiny_ckpt, task_dir):
    from minitron_deploy.compress.config import PruneConfig
    from minitron_deploy.compress.layers import choose_drop_layers, layer_task_ranking
    from minitron_deploy.evaluation.harness import evaluate_tasks, load_for_eval

    model, tok = load_for_eval(tiny_ckpt, "float32")
    task = str(task_dir / "tiny_mc.yaml")
    accs = layer_task_ranking(model, tok, task, 6, 2)
    assert len(accs) == model.config.num_hidden_layers - 1
    # each entry is the task's accuracy with that block removed (checked for one block)
    from minitron_deploy.compress.layers import without_layers

    model.config.use_cache = False
    with without_layers(model, {2, 3}):
        direct = evaluate_tasks(model, tok, [task])["tasks"]["tiny_mc"]["metrics"]["acc"]
    assert accs[2] == pytest.approx(direct)
    cfg = PruneConfig(num_layers=3, layer_metric="task_accuracy", layer_task=task)
    drop = choose_drop_layers(model, None, cfg, tokenizer=tok)
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    assert drop == [best, best + 1]


def test_pipeline_eval_stage_is_cached_and_keyed_by_task_content(task_dir, tmp_path):
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.pipeline.summary import eval_rows, eval_table, summary_markdown
    from minitron_deploy.profile import load_profile

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for f in task_dir.iterdir():
        (tasks / f.name).write_text(f.read_text().replace(str(task_dir), str(tasks)))
    p = tmp_path / "p.yaml"
    p.write_text(
        "name: evalcache\nsource: builtin:tiny-llama\n"
        "data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}\n"
        "importance: {num_samples: 4, seq_len: 32}\n"
        "variants:\n  - name: short\n    prune: {drop_layers: [3]}\n"
        f"eval: {{tasks: ['{tasks / 'tiny_mc.yaml'}'], limit: 4, batch_size: 2}}\n"
    )

    def run():
        rec = Pipeline(load_profile(p), tmp_path / "wd", p).run(progress=False)
        assert rec["status"] == "ok", rec.get("error")
        return {s["node"]: s.get("cached") for s in rec["stages"]}, rec

    first, rec = run()
    assert {"teacher/eval", "short/eval"} <= set(first) and not first["short/eval"]
    table = eval_table(rec)
    assert table[0] == ["task", "metric", "teacher", "short", "note"]
    assert table[1][:2] == ["tiny_mc", "acc"] and "/4)" in table[1][2] and "/4)" in table[1][3]
    # a share only where the (random, tiny) teacher is clearly above chance, else a note
    clear = eval_rows(rec)[0]["clear"]
    assert ("% of teacher" in table[1][3]) == clear
    assert ("not clearly above chance" in table[1][4]) == (not clear)
    assert "## Downstream tasks" in summary_markdown(rec)
    again, _ = run()
    assert all(again.values())  # nothing ran twice
    data = tasks / "tiny_mc.jsonl"
    data.write_text("".join(reversed(data.read_text().splitlines(keepends=True))))
    third, _ = run()
    assert not third["short/eval"] and not third["teacher/eval"] and third["short/prune"]


@pytest.mark.parametrize("module", ["requests.exceptions", "datasets.exceptions"])
def test_a_failing_download_after_the_model_loaded_exits_1(
    tiny_ckpt, task_dir, tmp_path, capsys, monkeypatch, module
):
    """The task was resolved (it exists); the network or a library failing while lm-eval loads
    its data set is not the input's fault: exit 1 with the library's error, nothing written."""
    import lm_eval.evaluator

    failure = type("ConnectionError", (Exception,), {"__module__": module})

    def unreachable(**kwargs):
        raise failure("Max retries exceeded with url: /datasets/x (stand-in network failure)")

    monkeypatch.setattr(lm_eval.evaluator, "simple_evaluate", unreachable)
    out = tmp_path / "res"
    argv = ["eval", "--model", str(tiny_ckpt), "--tasks", str(task_dir / "tiny_mc.yaml")]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "failed: a task's data set could not be loaded" in err
    assert f"{module}.ConnectionError: Max retries exceeded" in err
    assert not out.exists()
