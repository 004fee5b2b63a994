"""benchmarks/results_table.py: every row is a valid distill.py run, and the table runs, resumes and scores end to
end on tiny sizes (the GPU call's dry run)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import load_example

from hf_vision_distill.recipes.command_line import parse_arguments

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def results_table(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports distill_seeds from beside it
    modules = {}
    for name in ("distill_seeds", "results_table"):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, modules[name])
        spec.loader.exec_module(modules[name])
    return modules["results_table"]


OTHER_LOSS_DEFAULTS = {"label_loss_weight": 0.9, "soft_loss_weight": 0.3, "temperature": 7.0,
                       "feature_loss_weight": 0.2, "attention_loss_weight": 0.4}  # fmt: skip


def test_every_row_is_a_valid_distillation_that_may_share_the_baselines(results_table, tmp_path):
    recipe = load_example("distill")
    distill_seeds = results_table.distill_seeds
    only_distillation = distill_seeds.distillation_only_flags()
    for name, (_, flags) in results_table.ROWS.items():
        baseline_flags = results_table.ROWS[results_table.baselines_of(name)][1]
        argv = [*flags, "--dataset_name", "data/cifar10-sample", "--output_dir", str(tmp_path / name)]
        config = parse_arguments(recipe.ARGUMENTS, recipe.DEFAULTS, argv)[-1]  # DistillationConfig checks itself
        assert config.teacher_model_name_or_path.startswith("pretrained/"), name
        # every loss weight and the temperature are the row's own: the main job's defaults may change
        other = parse_arguments(recipe.ARGUMENTS, {**recipe.DEFAULTS, **OTHER_LOSS_DEFAULTS}, argv)[-1]
        assert [getattr(other, key) for key in OTHER_LOSS_DEFAULTS] == [getattr(config, key) for key in
                                                                        OTHER_LOSS_DEFAULTS], name  # fmt: skip
        # what the row changes is the distillation alone, so the baseline row's students are its baselines too
        shared = ["--dataset_name", "data/cifar10-sample"]
        ours, theirs = (distill_seeds.resolved_arguments([*each, *shared], 0) for each in (flags, baseline_flags))
        assert {key: value for key, value in ours.items() if key not in only_distillation} == {
            key: value for key, value in theirs.items() if key not in only_distillation
        }, name


@pytest.mark.slow
def test_the_table_runs_scores_and_resumes(results_table, tmp_path, capsys):
    tiny = ["--max_train_samples", "48", "--max_eval_samples", "16", "--per_device_train_batch_size", "16",
            "--config_overrides", json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]})]  # fmt: skip
    argv = ["--dataset_name", "data/cifar10-sample", "--rows", "dkd", "--seeds", "0", "1", "--num_train_epochs", "1",
            "--parallel", "2", "--runs_dir", str(tmp_path / "runs"), "--output_dir", str(tmp_path / "out"),
            "--", *tiny]  # fmt: skip
    scored = results_table.main(argv)
    assert list(scored) == ["kd", "dkd"]  # the baselines' row comes with any row
    for result in scored.values():
        assert [row["seed"] for row in result["seeds"]] == [0, 1]
        assert all(0 <= row["distilled_best"] <= 1 and 0 <= row["baseline_last"] <= 1 for row in result["seeds"])
    # dkd reused kd's baselines: the same baseline figures, and no baseline of its own
    assert [row["baseline_best"] for row in scored["dkd"]["seeds"]] == [row["baseline_best"] for row in
                                                                         scored["kd"]["seeds"]]  # fmt: skip
    assert not (tmp_path / "runs" / "dkd" / "seed0" / "_baseline").exists()
    ended = [json.loads(line) for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert sorted((each["row"], each["seed"], each["outcome"]) for each in ended) == [
        ("dkd", 0, "finished"),
        ("dkd", 1, "finished"),
        ("kd", 0, "finished"),
        ("kd", 1, "finished"),
    ]
    table = (tmp_path / "out" / "results_table.md").read_text()
    assert "| CNN teacher -> compact-cnn, DKD |" in table and "| CNN teacher -> compact-cnn, KD (T = 4) |" in table
    # a second call trains nothing (every run finished) and scores the same
    capsys.readouterr()
    assert results_table.main(argv) == scored
    assert "distill.py" not in capsys.readouterr().out
