"""examples/compare.py on tiny CIFAR-10 subsets (input size, training curves, model checks, reruns), and what it
measures: FLOPs for inference and training, and latency with its spread (hf_vision_distill.profiling)."""

import json
import logging
import re
import time

import pytest
import torch
from conftest import load_example
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from hf_vision_distill.evaluation import logging_steps_for_curves
from hf_vision_distill.finetuning import FineTuningArguments, apply_strategy
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.profiling import flops_per_image, speed, time_forward, training_flops_per_image

LABELS = {index: str(index) for index in range(10)}


def tiny_run(dataset, output_dir, *models, extra=()):
    """Arguments for a compare run of a few seconds per model: 64 training images in batches of 16 (4 steps)."""
    return ["--models", *models, "--dataset_name", str(dataset), "--max_train_samples", "64",
            "--max_eval_samples", "32", "--per_device_train_batch_size", "16", "--num_train_epochs", "1",
            "--dataloader_num_workers", "0", "--report_to", "none", "--output_dir", str(output_dir),
            "--speed_batch_size", "4", "--speed_seconds", "0.05", "--profile_batch_size", "2", *extra]  # fmt: skip


@pytest.mark.slow
def test_compare_trains_every_model_at_the_image_size(tmp_path, cifar10_path):
    """--image_size 48: the ViT preset is built for 48 px (its FLOPs are those of a 48 px ViT), our CNN preset and a
    timm CNN from scratch (which takes no img_size) train and are measured on the 32 px images resized to 48."""
    models = ["compact-cnn", "vit-cifar", "resnet18"]
    arguments = tiny_run(cifar10_path, tmp_path / "compare", *models, extra=["--image_size", "48"])
    rows = load_example("compare").main(arguments)
    assert [row["input_size"] for row in rows] == ["48x48"] * 3
    for row in rows:
        # timm's resnet18 is built at its own size (it takes no img_size) and measured at 48.
        size = None if row["model"] == "resnet18" else 48
        loaded = load_image_classifier(row["model"], id2label=LABELS, image_size=size)
        assert row["gflops_per_image"] == pytest.approx(flops_per_image(loaded.model, (48, 48)) / 1e9)
    vit_at_32 = load_image_classifier("vit-cifar", id2label=LABELS).model
    assert rows[1]["gflops_per_image"] > 1.5 * flops_per_image(vit_at_32, (32, 32)) / 1e9  # 144 patches, not 64


def test_compare_checks_every_model_before_training(tmp_path, cifar10_path):
    output_dir = tmp_path / "compare"
    with pytest.raises(ValueError) as error:
        load_example("compare").main(tiny_run(cifar10_path, output_dir, "compact-cnn", "vit-cifr"))
    assert not (output_dir / "compact-cnn").exists()  # nothing trained before the typo was found
    assert str(error.value).startswith("--models: 1 of 2 cannot be used")  # only the bad name is reported
    assert re.search(r"(?s)'vit-cifr' \(did you mean 'vit-cifar'\?\).*a preset \(.*vit-cifar", str(error.value))
    with pytest.raises(ValueError, match="strategy='linear-probe' is not one of"):
        load_example("compare").main(
            tiny_run(cifar10_path, output_dir, "compact-cnn", extra=["--strategies", "linear-probe"])
        )
    assert not output_dir.exists()


@pytest.mark.slow
def test_compare_rerun_skips_finished_models(tmp_path, cifar10_path, caplog):
    """A comparison interrupted after its first model continues: the rerun reuses that model's row (the same
    measurements, its files untouched) and trains the rest; other settings train it again."""
    compare, output_dir = load_example("compare"), tmp_path / "compare"
    first = compare.main(tiny_run(cifar10_path, output_dir, "compact-cnn"))[0]
    marker = output_dir / "compact-cnn" / "comparison_row.json"
    written = marker.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        rows = compare.main(tiny_run(cifar10_path, output_dir, "compact-cnn", "simple-cnn"))
    assert "compact-cnn: finished in" in caplog.text and "skipping it" in caplog.text
    assert rows[0] == json.loads(json.dumps(first)) and marker.stat().st_mtime_ns == written
    assert rows[1]["model"] == "simple-cnn" and (output_dir / "simple-cnn" / "comparison_row.json").is_file()
    assert "| compact-cnn | full |" in (output_dir / "model_comparison.md").read_text()

    caplog.clear()
    with caplog.at_level(logging.INFO):
        rows = compare.main(tiny_run(cifar10_path, output_dir, "compact-cnn", extra=["--learning_rate", "0.01"]))
    assert "training.learning_rate: 0.001 -> 0.01" in caplog.text and "skipping" not in caplog.text
    assert marker.stat().st_mtime_ns != written


@pytest.mark.slow
def test_compare_short_run_draws_training_curves(tmp_path, cifar10_path):
    """4 steps and the default logging interval of 10: the run logs every step so the curves have points. A user's
    interval longer than the run gives no plot, and the report says so instead of linking a missing image."""
    compare, output_dir = load_example("compare"), tmp_path / "compare"
    row = compare.main(tiny_run(cifar10_path, output_dir, "compact-cnn"))[0]
    assert (output_dir / "compact-cnn" / "training_curves.png").is_file()
    assert row["training_steps"] == 4 and row["logging_steps"] == 1
    assert "![training curves](compact-cnn/training_curves.png)" in (output_dir / "model_comparison.md").read_text()

    output_dir = tmp_path / "compare-logging-50"
    row = compare.main(tiny_run(cifar10_path, output_dir, "compact-cnn", extra=["--logging_steps", "50"]))[0]
    assert row["logging_steps"] == 50
    assert not (output_dir / "compact-cnn" / "training_curves.png").exists()
    report = (output_dir / "model_comparison.md").read_text()
    assert "training_curves.png" not in report and "No training curves: the run took 4 optimizer steps" in report
    for link in ("confusion_matrix.png", "profile_trace.json"):  # every linked file exists
        assert f"compact-cnn/{link}" in report and (output_dir / "compact-cnn" / link).is_file()


def test_logging_steps_for_curves():
    assert [logging_steps_for_curves(steps) for steps in (0, 4, 39, 40, 100, 199, 200, 10_000)] == [1, 1, 1, 2, 5, 9,
                                                                                                   10, 10]  # fmt: skip
    assert logging_steps_for_curves(10_000, points=50, at_most=500) == 200


class Sleeper(nn.Module):
    """A "model" whose forward passes sleep the given seconds, one entry per call, then the last entry forever (or
    the entries over again, with `cycle`)."""

    def __init__(self, seconds: list[float], cycle: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seconds, self.cycle, self.calls = seconds, cycle, 0

    def forward(self, pixel_values):
        index = self.calls % len(self.seconds) if self.cycle else min(self.calls, len(self.seconds) - 1)
        time.sleep(self.seconds[index])
        self.calls += 1
        return ImageClassifierOutput(logits=pixel_values.mean((1, 2, 3))[:, None] + self.weight)


@pytest.mark.slow
def test_latency_is_timed_after_a_warm_up_for_a_time_budget():
    # Eight slow first calls (kernel selection, cold caches): the 0.25 s warm-up absorbs all of them, where a fixed
    # three-call warm-up would time five.
    model = Sleeper([0.03] * 8 + [0.001])
    timing = time_forward(model, (8, 8), batch_size=1, seconds=0.3, min_calls=10)
    assert timing.warmup_calls >= 8 and timing.p90_s < 0.01
    # A fast model gets as many calls as the budget allows, not ten.
    assert 50 < timing.calls == model.calls - timing.warmup_calls
    # A slow one gets at least min_calls, past the budget.
    assert time_forward(Sleeper([0.02]), (8, 8), 1, seconds=0.01, min_calls=5, warmup_seconds=0).calls == 5


@pytest.mark.slow
def test_latency_reports_its_spread():
    timing = time_forward(Sleeper([0.001, 0.012], cycle=True), (8, 8), 1, seconds=0.4, min_calls=10, warmup_seconds=0)
    assert timing.p10_s < 0.005 < 0.011 < timing.p90_s and timing.p10_s <= timing.median_s <= timing.p90_s
    measured = speed(load_image_classifier("simple-cnn", id2label=LABELS).model, (32, 32), batch_size=4, seconds=0.1)
    assert measured["latency_p10_ms"] <= measured["latency_ms"] <= measured["latency_p90_ms"]
    assert measured["throughput_p10_images_per_s"] <= measured["throughput_images_per_s"]
    assert measured["throughput_images_per_s"] <= measured["throughput_p90_images_per_s"]
    assert measured["latency_calls"] >= 10 and measured["throughput_calls"] >= 5


@pytest.mark.parametrize("name", ["compact-cnn", "vit-cifar"])
def test_training_flops_follow_what_trains(name):
    """A full step costs about three forwards (the backward computes activation and weight gradients; the stem's
    input needs none); a linear probe about one (the backward reaches only the head)."""
    model = load_image_classifier(name, id2label=LABELS).model
    forward = flops_per_image(model, (32, 32))
    full = training_flops_per_image(model, (32, 32))
    assert 2.9 * forward < full <= 3 * forward
    apply_strategy(model, FineTuningArguments(strategy="linear_probe"))
    probe = training_flops_per_image(model, (32, 32))
    assert forward < probe < 1.01 * forward
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.slow
def test_compare_reports_training_flops(tmp_path, cifar10_path):
    """The table's training GFLOPs per image, from the same counter as the inference column: ~3x for a CNN trained
    fully. (A run's `total_flos` reading 9.9e15 for a small run was transformers' default estimate, 6 x parameters x
    pixel values, which counts every pixel as a token; ImageClassificationTrainer.floating_point_ops counts the
    forward pass instead.)"""
    row = load_example("compare").main(tiny_run(cifar10_path, tmp_path / "compare", "compact-cnn"))[0]
    assert 2.9 < row["training_gflops_per_image"] / row["gflops_per_image"] <= 3
    header = (tmp_path / "compare" / "metrics.csv").read_text().splitlines()[0]
    assert "training_gflops_per_image" in header and "latency_p90_ms" in header


@pytest.mark.slow
def test_total_flos_of_a_linear_probe(tmp_path, cifar10_path):
    from transformers import TrainingArguments

    from hf_vision_distill.finetuning import FineTuningTrainer
    from hf_vision_distill.recipes import DataArguments, build_inputs, final_training_arguments, load_data

    data_args = DataArguments(dataset_name=str(cifar10_path), max_train_samples=32, max_eval_samples=16)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=1,
                             report_to="none", dataloader_num_workers=0, remove_unused_columns=False,
                             save_strategy="no")  # fmt: skip
    data = load_data(data_args, args)
    loaded = load_image_classifier("vit-cifar", id2label=data.id2label)
    probe = FineTuningArguments(strategy="linear_probe")
    apply_strategy(loaded.model, probe)
    expected = 32 * training_flops_per_image(loaded.model, loaded.input_specification.image_size)
    inputs = build_inputs(data, data_args, args, loaded.input_specification)
    final_args = final_training_arguments(args, data=data, inputs=inputs, argv=[])
    trainer = FineTuningTrainer(model=loaded.model, args=final_args, finetuning_args=probe,
                                train_dataset=inputs.train_dataset, data_collator=inputs.train_collator)  # fmt: skip
    assert trainer.train().metrics["total_flos"] == pytest.approx(expected, rel=0.05)


def test_a_model_compared_under_two_strategies_gets_two_folders():
    model_folders = load_example("compare").model_folders
    assert model_folders(["org/vit", "simple-cnn"], ["full", "full"]) == ["org_vit", "simple-cnn"]
    assert model_folders(["org/vit", "org/vit"], ["full", "linear_probe"]) == ["org_vit-full", "org_vit-linear_probe"]
    with pytest.raises(ValueError, match="the same model and strategy twice"):
        model_folders(["simple-cnn", "simple-cnn"], ["full", "full"])
