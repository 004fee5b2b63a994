"""benchmarks/distill_seeds.py's checks that a finished run, or another row's baselines, may be reused."""

import importlib.machinery
import importlib.util
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import load_example

from hf_vision_distill.recipes import RunArguments, parse_arguments
from hf_vision_distill.recipes.output_folder import RUN_ARGUMENTS_NAME, arguments_record

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def distill_seeds(monkeypatch):
    spec = importlib.util.spec_from_file_location("distill_seeds", BENCHMARKS / "distill_seeds.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def finished_row(tmp_path: Path, distill_seeds, distill_args: list[str], **recorded_otherwise) -> Path:
    """A row with seed 0 finished as distill.py leaves it: summary, baseline and its record of the resolved arguments
    (`recorded_otherwise`: values it records other than today's defaults give)."""
    run = tmp_path / "row" / "seed0"
    (run / "_baseline").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "distill_args.json").write_text(json.dumps(distill_args))
    recipe = load_example("distill")
    argv = [*distill_args, "--baseline", "--seed", "0", "--output_dir", str(run)]
    groups = parse_arguments(recipe.ARGUMENTS, recipe.recipe_defaults(argv)[0], argv)
    record = arguments_record(tuple(group for group in groups if not isinstance(group, RunArguments)))
    (run / RUN_ARGUMENTS_NAME).write_text(json.dumps({**record, **recorded_otherwise}))
    return run.parent


def test_baselines_shared_across_teacher_and_loss_flags_and_path_spellings(tmp_path, distill_seeds):
    sample = distill_seeds.REPO_ROOT / "data" / "cifar10-sample"
    row = finished_row(tmp_path, distill_seeds, ["--dataset_name", str(sample)])
    # the same dataset written relative to the repository, another teacher and temperature: allowed
    distill_seeds.check_shared_baselines(
        row, [0], ["--teacher_model_name_or_path", "t", "--temperature", "1", "--dataset_name", "data/cifar10-sample"]
    )


def test_baselines_not_shared_across_training_flags(tmp_path, distill_seeds):
    row = finished_row(tmp_path, distill_seeds, ["--dataset_name", "data/cifar10-sample"])
    with pytest.raises(SystemExit, match="other training arguments.*num_train_epochs"):
        distill_seeds.check_shared_baselines(row, [0], ["--dataset_name", "data/cifar10-sample",
                                                        "--num_train_epochs", "3"])  # fmt: skip
    with pytest.raises(SystemExit, match="no finished run"):
        distill_seeds.check_shared_baselines(row, [1], ["--dataset_name", "data/cifar10-sample"])


def test_baselines_made_under_other_defaults_are_not_shared(tmp_path, distill_seeds):
    """The same command line, but distill.py's default learning rate changed since the row ran."""
    row = finished_row(tmp_path, distill_seeds, ["--dataset_name", "data/cifar10-sample"], learning_rate=0.5)
    with pytest.raises(SystemExit, match="other training arguments.*learning_rate"):
        distill_seeds.check_shared_baselines(row, [0], ["--dataset_name", "data/cifar10-sample"])


def test_a_finished_run_is_reused_only_with_the_same_arguments(tmp_path, distill_seeds, monkeypatch):
    run = finished_row(tmp_path, distill_seeds, ["--dataset_name", "data/cifar10-sample"]) / "seed0"
    monkeypatch.setattr(distill_seeds.subprocess, "run", lambda *args, **kwargs: pytest.fail("ran distill.py"))
    assert distill_seeds.run_seed(0, run, ["--dataset_name", "data/cifar10-sample"]) == {}
    with pytest.raises(SystemExit, match="holds a finished run with other arguments"):
        distill_seeds.run_seed(0, run, ["--dataset_name", "data/cifar10-sample", "--num_train_epochs", "3"])
    with pytest.raises(SystemExit, match="holds a finished run with other arguments.*baseline"):
        distill_seeds.run_seed(0, run, ["--dataset_name", "data/cifar10-sample"], baseline=False)


def test_a_run_made_under_other_defaults_is_not_reused(tmp_path, distill_seeds, monkeypatch):
    """The row's command line is the same, but the recipe's default temperature was another when the run was made:
    its students are not this row's."""
    run = finished_row(tmp_path, distill_seeds, ["--dataset_name", "data/cifar10-sample"], temperature=7.0) / "seed0"
    monkeypatch.setattr(distill_seeds.subprocess, "run", lambda *args, **kwargs: pytest.fail("ran distill.py"))
    with pytest.raises(SystemExit, match="other arguments.*temperature.*7.0"):
        distill_seeds.run_seed(0, run, ["--dataset_name", "data/cifar10-sample"])


def test_a_run_with_another_validation_size_is_not_reused(tmp_path, distill_seeds, monkeypatch):
    """--max_eval_samples may change when a run resumes (recipes' FREE_TO_CHANGE), but it picks the best checkpoint:
    a seed made with another is not this row's."""
    sample = ["--dataset_name", "data/cifar10-sample"]
    run = finished_row(tmp_path, distill_seeds, [*sample, "--max_eval_samples", "100"]) / "seed0"
    monkeypatch.setattr(distill_seeds.subprocess, "run", lambda *args, **kwargs: pytest.fail("ran distill.py"))
    with pytest.raises(SystemExit, match="other arguments.*max_eval_samples"):
        distill_seeds.run_seed(0, run, sample)


def test_the_recipe_loads_once_for_threads_asking_together(distill_seeds, monkeypatch):
    """Seeds check their runs from several threads (--parallel): none may see distill.py half loaded."""
    monkeypatch.delitem(sys.modules, "distill_recipe", raising=False)
    run_module = importlib.machinery.SourceFileLoader.exec_module

    def slow_to_run(loader, module):  # as in a fresh process, where its imports take seconds
        time.sleep(0.5)
        run_module(loader, module)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "exec_module", slow_to_run)

    def load(order):  # each thread asks while the first is still running the module
        time.sleep(0.1 * order)
        module = distill_seeds.distill_recipe()
        return module, hasattr(module, "ARGUMENTS")  # complete when handed out

    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(load, range(4)))
    assert all(module is loaded[0][0] and complete for module, complete in loaded)
