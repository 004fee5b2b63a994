"""benchmarks/distill_seeds.py's check that a row may reuse another row's baselines."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def distill_seeds(monkeypatch):
    spec = importlib.util.spec_from_file_location("distill_seeds", BENCHMARKS / "distill_seeds.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def finished_row(tmp_path: Path, distill_args: list[str]) -> Path:
    run = tmp_path / "row" / "seed0"
    (run / "_baseline").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "distill_args.json").write_text(json.dumps(distill_args))
    return run.parent


def test_baselines_shared_across_teacher_and_loss_flags_and_path_spellings(tmp_path, distill_seeds):
    sample = distill_seeds.REPO_ROOT / "data" / "cifar10-sample"
    row = finished_row(tmp_path, ["--dataset_name", str(sample)])
    # the same dataset written relative to the repository, another teacher and temperature: allowed
    distill_seeds.check_shared_baselines(
        row, [0], ["--teacher_model_name_or_path", "t", "--temperature", "1", "--dataset_name", "data/cifar10-sample"]
    )


def test_baselines_not_shared_across_training_flags(tmp_path, distill_seeds):
    row = finished_row(tmp_path, ["--dataset_name", "data/cifar10-sample"])
    with pytest.raises(SystemExit, match="other training arguments"):
        distill_seeds.check_shared_baselines(row, [0], ["--dataset_name", "data/cifar10-sample",
                                                        "--num_train_epochs", "3"])  # fmt: skip
    with pytest.raises(SystemExit, match="no finished run"):
        distill_seeds.check_shared_baselines(row, [1], ["--dataset_name", "data/cifar10-sample"])


def test_a_finished_run_is_reused_only_with_the_same_arguments(tmp_path, distill_seeds, monkeypatch):
    run = finished_row(tmp_path, ["--dataset_name", "data/cifar10-sample"]) / "seed0"
    monkeypatch.setattr(distill_seeds.subprocess, "run", lambda *args, **kwargs: pytest.fail("ran distill.py"))
    assert distill_seeds.run_seed(0, run, ["--dataset_name", "data/cifar10-sample"]) == {}
    with pytest.raises(SystemExit, match="holds a finished run with other arguments"):
        distill_seeds.run_seed(0, run, ["--dataset_name", "data/cifar10-sample", "--num_train_epochs", "3"])
