"""What a recipe does with its output folder and its arguments: incomplete checkpoints, reruns of finished runs, reruns
with other arguments, longer budgets, --overwrite_output_dir, and arguments refused before any work (a config file's
values by type, prefixes of flags, runs that train nothing, single-class data)."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import load_example
from PIL import Image
from safetensors.torch import save_file

from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.recipes import RUN_ARGUMENTS_NAME, Recipe
from hf_vision_distill.training import checkpoint_problem, last_complete_checkpoint

TINY_CNN = json.dumps({"hidden_sizes": [4, 8, 8]})


def arguments(output_dir, *extra: str) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--model_name_or_path", "compact-cnn", "--config_overrides", TINY_CNN,
        "--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "16", "--report_to", "none", "--max_steps", "2", "--eval_strategy", "no",
        "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "false", "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def write_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint's files as the Trainer writes them, small."""
    folder.mkdir(parents=True)
    save_file({"weight": torch.zeros(64, 64)}, folder / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.zeros(64, 64)}}}, folder / "optimizer.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    return folder


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: (folder / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda folder: (folder / "trainer_state.json").write_text(""), "trainer_state.json is empty or cut off"),
        (lambda folder: cut(folder / "trainer_state.json"), "trainer_state.json is empty or cut off"),
        (lambda folder: cut(folder / "model.safetensors", 0.9), r"model.safetensors is cut off \(\d+ of \d+ bytes\)"),
        (lambda folder: cut(folder / "model.safetensors", 0.0), "model.safetensors is empty or cut off"),
        (lambda folder: cut(folder / "optimizer.pt", 0.8), "optimizer.pt is not a whole torch archive"),
        (lambda folder: cut(folder / "rng_state.pth", 0.5), "rng_state.pth is not a whole torch archive"),
    ],
)
def test_an_incomplete_checkpoint_is_passed_over_for_the_previous_one(tmp_path, caplog, damage, reason):
    write_checkpoint(tmp_path / "checkpoint-5", 5)
    newest = write_checkpoint(tmp_path / "checkpoint-40", 40)
    assert checkpoint_problem(newest) is None
    damage(newest)
    assert checkpoint_problem(newest) is not None
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-5")
    assert "Not resuming from" in caplog.text and "checkpoint-40" in caplog.text
    assert re.search(reason, caplog.text)


@pytest.mark.slow
def test_a_finished_run_is_not_trained_evaluated_or_carded_again(tmp_path, caplog):
    recipe = load_example("train")
    run = tmp_path / "run"
    metrics = recipe.main(arguments(run))
    results, card = (run / "all_results.json").read_text(), (run / "README.md").read_text()
    (run / "README.md").write_text(card + "\nmarker\n")
    caplog.set_level(logging.INFO)
    again = recipe.main(arguments(run, "--dataloader_num_workers", "0", "--per_device_eval_batch_size", "8"))  # free
    assert again == json.loads(results) and again["test_accuracy"] == metrics["test_accuracy"]
    assert "holds this run, finished (step 2 of 2); nothing to train" in caplog.text
    assert (run / "all_results.json").read_text() == results  # not rewritten with train_loss 0.0
    assert (run / "README.md").read_text().endswith("marker\n")  # no card for training that did not happen


@pytest.mark.slow
def test_a_rerun_with_other_arguments_is_refused_before_any_work(tmp_path, monkeypatch):
    recipe = load_example("train")
    run = tmp_path / "run"
    recipe.main(arguments(run))
    monkeypatch.setattr(Recipe, "load_data", lambda *args, **kwargs: pytest.fail("the data was loaded"))
    with pytest.raises(ValueError, match=r"--learning_rate 0.0003 \(the run there: 0.001\).*--overwrite_output_dir"):
        recipe.main(arguments(run, "--learning_rate", "3e-4"))
    with pytest.raises(ValueError, match=r"--dataset_name .*fashion.*--overwrite_output_dir"):
        recipe.main(arguments(run, "--dataset_name", "../shared/datasets/fashion_mnist"))
    with pytest.raises(ValueError, match=r"longer budget: --max_steps 1 \(the run there: 2\)"):
        recipe.main(arguments(run, "--max_steps", "1"))


@pytest.mark.slow
def test_a_longer_budget_continues_the_run(tmp_path, caplog):
    recipe = load_example("train")
    run = tmp_path / "run"
    recipe.main(arguments(run))
    caplog.set_level(logging.INFO)
    recipe.main(arguments(run, "--max_steps", "3"))
    assert "with a longer budget: --max_steps 2 -> 3" in caplog.text
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]  # resumed, not restarted
    assert json.loads((run / RUN_ARGUMENTS_NAME).read_text())["max_steps"] == 3


@pytest.mark.slow
def test_overwriting_starts_afresh_without_the_old_checkpoints(tmp_path):
    recipe = load_example("train")
    run = tmp_path / "run"
    recipe.main(arguments(run, "--max_steps", "3"))
    assert (run / "checkpoint-3").is_dir()
    recipe.main(arguments(run, "--learning_rate", "3e-4", "--overwrite_output_dir"))
    # checkpoint-3 of the other run is gone: a later rerun would have resumed from it.
    assert sorted(path.name for path in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((run / RUN_ARGUMENTS_NAME).read_text())["learning_rate"] == 3e-4


def test_an_incomplete_checkpoint_named_on_the_command_line_is_refused(tmp_path):
    broken = write_checkpoint(tmp_path / "checkpoint-7", 7)
    (broken / "trainer_state.json").write_text("{")
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint .*checkpoint-7: its trainer_state.json is empty"):
        load_example("train").main(arguments(tmp_path / "run", "--resume_from_checkpoint", str(broken)))


def test_config_file_values_are_converted_and_checked_by_type(tmp_path):
    recipe = load_example("train")
    config = tmp_path / "run.yaml"
    # YAML 1.1 reads 3e-4 (no dot) as a string, and "yes"/"no" stay booleans.
    config.write_text(f"output_dir: {tmp_path / 'run'}\nlearning_rate: 3e-4\nmax_train_samples: 64\n"
                      "horizontal_flip: false\nconfig_overrides: {hidden_sizes: [4, 8, 8]}\n")  # fmt: skip
    model_args, data_args, _, training_args = recipe.parse([str(config)])
    assert training_args.learning_rate == 3e-4 and data_args.max_train_samples == 64
    assert data_args.horizontal_flip is False and json.loads(model_args.config_overrides) == {
        "hidden_sizes": [4, 8, 8]
    }
    config.write_text("num_train_epochs: one\n")
    with pytest.raises(ValueError, match=r"run.yaml: argument --num_train_epochs.*: invalid float value: 'one'"):
        recipe.parse([str(config)])
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"run.yaml: .*learning_rat"):
        recipe.parse([str(config)])


def test_runs_that_train_nothing_and_prefixes_of_flags_are_refused():
    recipe = load_example("train")
    with pytest.raises(ValueError, match=r"--num_train_epochs 0.0 \(from the command line\) trains nothing"):
        recipe.parse(["--num_train_epochs", "0"])
    with pytest.raises(ValueError, match=r"--learning_rate 0.0 .*leaves the model as it starts"):
        recipe.parse(["--learning_rate", "0"])
    recipe.parse(["--num_train_epochs", "0", "--max_steps", "5"])  # steps are a budget too
    with pytest.raises(ValueError, match="num_train_epoch"):
        recipe.parse(["--num_train_epoch", "2"])


def test_a_single_class_dataset_is_refused(tmp_path):
    images = [Image.new("RGB", (8, 8), (index * 40, 0, 0)) for index in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    split = datasets.Dataset.from_dict({"image": images, "label": [0] * 6}, features=features)
    split.to_parquet(str(tmp_path / "data" / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(
        ValueError, match=r"label column 'label' of split 'train' has one class \('cat'\).*--label_column"
    ):
        load_image_classification_dataset(str(tmp_path / "data"), validation_size=0)


def test_a_teacher_of_another_label_space_is_refused_before_it_runs(tmp_path, monkeypatch):
    from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification

    teacher = VisionTransformerForImageClassification(VisionTransformerConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=5,
    ))  # fmt: skip
    teacher.save_pretrained(tmp_path / "teacher")
    recipe = load_example("distill")
    monkeypatch.setattr(Recipe, "prepare_inputs", lambda *args, **kwargs: pytest.fail("the images were prepared"))
    with pytest.raises(ValueError, match="the teacher predicts 5 classes but the student 10"):
        recipe.main(arguments(tmp_path / "run", "--teacher_model_name_or_path", str(tmp_path / "teacher")))


@pytest.mark.slow
def test_a_run_says_what_it_does_at_the_default_log_level(tmp_path):
    """Model, data, input pipeline and resumption, as the script prints them without --log_level."""
    script = Path(__file__).resolve().parents[1] / "examples" / "train.py"

    def run(*extra: str) -> str:
        result = subprocess.run([sys.executable, str(script), *arguments(tmp_path / "run", *extra)],
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    printed = run()
    for line in ("Dataset ", "images; 10 classes (airplane, automobile", "Model compact-cnn: CompactCNN",
                 "Input pipeline: tensors"):  # fmt: skip
        assert line in printed, line
    printed = run("--max_steps", "3")
    assert re.search(r"Continuing the run in .* from .*checkpoint-2 \(epoch 1.00, step 2\)", printed)


@pytest.mark.slow
def test_the_recipe_exports_to_onnx_beside_the_model(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    recipe = load_example("train")
    run = tmp_path / "run"
    recipe.main(arguments(run, "--export", "onnx"))
    assert (run / "onnx" / "model.onnx").is_file() and (run / "onnx" / "preprocessor_config.json").is_file()
    card = (run / "README.md").read_text()
    assert re.search(r"`onnx/model.onnx`: this model at 32x32 in ONNX .* match PyTorch's to \d", card)
    monkeypatch.setattr(Recipe, "load_data", lambda *args, **kwargs: pytest.fail("the data was loaded"))
    with pytest.raises(ValueError, match="--export 'tflite' is not supported; pass --export onnx"):
        recipe.main(arguments(tmp_path / "other", "--export", "tflite"))
