"""Train and evaluate several image classifiers on the same data and budget, and compare them side by side.

    # CNN vs ViT from scratch on the shipped CIFAR-10 sample
    python examples/compare.py --models simple-cnn compact-cnn vit-cifar --num_train_epochs 3
    # the same at 64x64: the ViT is built for 64 px, the CNNs take the resized images
    python examples/compare.py --models simple-cnn compact-cnn vit-cifar --image_size 64
    # a SimpleCNN from scratch against a ViT-Tiny linear probe (pretrained on ImageNet, upsampled to 224)
    accelerate launch examples/compare.py --models simple-cnn facebook/deit-tiny-patch16-224 \
        --strategies full linear_probe --dataset_name uoft-cs/cifar10 --num_train_epochs 5

Each model trains with the fine-tuning trainer (`--strategies`, one per model, default `full`; models built from
scratch always train fully) on the same training images, epochs and batch size, at the same input size when
`--image_size` is given (each model's own otherwise), then is evaluated on the test split (the validation split when
there is none). Every model is built once before anything trains, so a bad name fails at once. Per model, under
`--output_dir/<model>/`: `classification_report.md`, `confusion_matrix.png`, `training_curves.png` (loss, gradient
norm, learning rate), TensorBoard logs, `profile_trace.json` (Chrome trace of inference; open in chrome://tracing or
ui.perfetto.dev), `profile_operators.txt`, and `comparison_row.json`, which marks the model finished: a rerun with the
same settings skips it, so an interrupted comparison continues with the next model. Side by side: `metrics.csv` and
`model_comparison.md` (accuracy, macro-F1, parameters total and trainable, GFLOPs per image for inference and per
training image, latency at batch 1 as a median with its 10th-90th percentile range, throughput at
`--speed_batch_size`, training time).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import TrainingArguments, set_seed

from hf_vision_distill.evaluation import (
    build_compute_metrics,
    classification_report_rows,
    markdown_table,
    plot_confusion_matrix,
    plot_training_curves,
)
from hf_vision_distill.finetuning import (
    FineTuningArguments,
    FineTuningTrainer,
    GradualUnfreezing,
    apply_strategy,
    describe_trainable,
)
from hf_vision_distill.models import MODEL_PRESETS, LoadedClassifier, load_image_classifier
from hf_vision_distill.profiling import flops_per_image, profile_inference, speed, training_flops_per_image
from hf_vision_distill.recipes import (
    SHIPPED_SAMPLE,
    TRAINING_DEFAULTS,
    DataArguments,
    build_inputs,
    final_training_arguments,
    initialize_from_data,
    is_convolutional,
    load_data,
    parse_arguments,
    run_recipe,
    setup_run,
)

logger = logging.getLogger(__name__)


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "dataset_name": SHIPPED_SAMPLE,
    "output_dir": "outputs/compare",
    "num_train_epochs": 3,
    # One model's checkpoints are not needed once it is evaluated; the best-by-validation model is kept in memory.
    "save_total_limit": 1,
}

# A model's folder holds this once the model is trained, evaluated and reported: its row of the comparison and the
# settings it was made with.
FINISHED_MARKER = "comparison_row.json"

# The training arguments a model's result depends on; the other settings of a rerun (logging, output) do not matter.
BUDGET_ARGUMENTS = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "max_grad_norm", "optim",
                    "label_smoothing_factor", "seed", "data_seed", "bf16", "fp16", "full_determinism")  # fmt: skip

# Training curves need this many logged points to show a trend.
CURVE_POINTS = 20

REPORT_COLUMNS = [("class", "class"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
                  ("support", "support")]  # fmt: skip


@dataclass
class ComparisonArguments:
    models: list[str] = field(
        default_factory=lambda: ["simple-cnn", "compact-cnn"],
        metadata={
            "help": f"Models to compare: presets ({', '.join(MODEL_PRESETS)}), Hub ids, local folders or timm names."
        },  # fmt: skip
    )
    strategies: list[str] | None = field(
        default=None,
        metadata={"help": "One fine-tuning strategy per model (full, linear_probe, last_n, gradual); default full."},
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Train and evaluate every model at this input size: presets and timm ViTs are built for it, our "
            "saved ViTs resample their position embeddings, CNNs take the resized images. Default: each model's own."
        },
    )
    speed_batch_size: int = field(default=64, metadata={"help": "Batch size of the throughput measurement."})
    speed_seconds: float = field(
        default=1.0,
        metadata={"help": "Seconds of timed calls for latency and for throughput, each, after a warm-up."},
    )
    profile_batch_size: int = field(default=16, metadata={"help": "Batch size of the profiled inference steps."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code shipped with a checkpoint."})


def folder_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("_")


def model_folders(models: list[str], strategies: list[str]) -> list[str]:
    """Each model's folder under --output_dir: its name made safe, and its strategy after it for a model compared
    under several strategies."""
    names = [folder_name(model) for model in models]
    folders = [f"{name}-{strategy}" if names.count(name) > 1 else name for name, strategy in zip(names, strategies)]
    if len(set(folders)) != len(folders):
        raise ValueError(
            f"--models {models} with --strategies {strategies} name the same model and strategy twice (or models "
            "that share a folder name); compare each once."
        )
    return folders


def main(argv: list[str] | None = None) -> list[dict]:
    comparison_args, data_args, finetuning_args, training_args = parse_arguments(
        (ComparisonArguments, DataArguments, FineTuningArguments, TrainingArguments), DEFAULTS, argv
    )
    setup_run(training_args)
    strategies = comparison_args.strategies or ["full"] * len(comparison_args.models)
    if len(strategies) != len(comparison_args.models):
        raise ValueError(
            f"--strategies has {len(strategies)} entries for {len(comparison_args.models)} --models; give one per "
            "model (or none: full for all)."
        )
    for strategy in strategies:  # FineTuningArguments names the bad strategy and the choices
        dataclasses.replace(finetuning_args, strategy=strategy)
    folders = model_folders(comparison_args.models, strategies)
    data = load_data(data_args, training_args)
    output_dir = Path(training_args.output_dir)

    # Each model: its settings, and its row when its folder holds a finished run with the same settings.
    plan = []
    for model_name, strategy, folder in zip(comparison_args.models, strategies, folders):
        settings = run_settings(model_name, strategy, comparison_args, data_args, finetuning_args, training_args)
        plan.append((model_name, strategy, folder, settings, finished_row(output_dir / folder, settings)))
    check_models([(name, strategy) for name, strategy, _, _, row in plan if row is None], data.id2label,
                 comparison_args, finetuning_args)  # fmt: skip

    rows = []
    for model_name, strategy, folder, settings, row in plan:
        if row is None:
            row = compare_one(model_name, strategy, settings, data, data_args, finetuning_args, training_args,
                              comparison_args, output_dir / folder, argv)  # fmt: skip
        rows.append(row)
    if training_args.should_save:
        write_comparison(rows, data, training_args, output_dir)
    return rows


def run_settings(
    model_name: str,
    strategy: str,
    comparison_args: ComparisonArguments,
    data_args: DataArguments,
    finetuning_args: FineTuningArguments,
    training_args: TrainingArguments,
) -> dict:
    """What a model's row depends on, as JSON values: a finished folder is reused only for the same settings."""
    training = training_args.to_dict()
    settings = {
        "model": model_name,
        "strategy": strategy,
        "image_size": comparison_args.image_size,
        "data": dataclasses.asdict(data_args),
        "finetuning": dataclasses.asdict(dataclasses.replace(finetuning_args, strategy=strategy)),
        "training": {name: training[name] for name in BUDGET_ARGUMENTS},
        "world_size": training_args.world_size,
    }
    return json.loads(json.dumps(settings))


def finished_row(model_dir: Path, settings: dict) -> dict | None:
    """The row of a model finished in `model_dir` with the same `settings`, or None when it must train."""
    marker = model_dir / FINISHED_MARKER
    if not marker.is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
        saved_settings, row = saved["settings"], saved["row"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        logger.warning("%s: %s is unreadable (%r); training %s again.", settings["model"], marker, err,
                       settings["model"])  # fmt: skip
        return None
    if saved_settings != settings:
        changed = sorted(_differences(saved_settings, settings))
        logger.warning("%s: %s was made with other settings (%s differ); training it again, replacing that folder.",
                       settings["model"], model_dir, ", ".join(changed))  # fmt: skip
        return None
    logger.info("%s: finished in %s (%s); skipping it. Delete that file to train it again.", settings["model"],
                model_dir, FINISHED_MARKER)  # fmt: skip
    return row


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    names = []
    for key in sorted(set(saved) | set(current)):
        before, after = saved.get(key), current.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            names += _differences(before, after, f"{prefix}{key}.")
        elif before != after:
            names.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return names


def check_models(
    models: list[tuple[str, str]],
    id2label: dict[int, str],
    comparison_args: ComparisonArguments,
    finetuning_args: FineTuningArguments,
) -> None:
    """Builds every model to train once, with its strategy, before any of them trains: a typo in the last name fails
    now, not after the first models have trained. Raises one error naming every model that fails."""
    failures = []
    for model_name, strategy in models:
        try:
            loaded = load_model_at_size(model_name, id2label, comparison_args)
            strategy = "full" if loaded.from_scratch else strategy
            apply_strategy(loaded.model, dataclasses.replace(finetuning_args, strategy=strategy))
        except (ValueError, OSError) as err:
            close = difflib.get_close_matches(model_name, MODEL_PRESETS, n=1)
            failures.append(f"{model_name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f": {err}")
        loaded = None  # one model in memory at a time
    if failures:
        raise ValueError(
            f"--models: {len(failures)} of {len(models)} cannot be used; nothing was trained.\n  "
            + "\n  ".join(failures)
            + f"\nA model is a preset ({', '.join(MODEL_PRESETS)}), a local folder with a config.json, a Hub model id "
            "or a timm architecture name."
        )


def load_model_at_size(model_name: str, id2label: dict[int, str], comparison_args: ComparisonArguments):
    """The model for `id2label`, at `--image_size` when given. A CNN whose loader refuses another size (a timm CNN
    takes no `img_size`, a transformers ResNet checkpoint keeps its processor's size) is built at its own and given
    the resized images: convolutions and global pooling take any size."""
    image_size = comparison_args.image_size
    load = dict(id2label=id2label, ignore_mismatched_sizes=True, trust_remote_code=comparison_args.trust_remote_code)
    try:
        loaded = load_image_classifier(model_name, image_size=image_size, **load)
    except ValueError:
        if image_size is None:
            raise
        loaded = load_image_classifier(model_name, **load)
        if not is_convolutional(loaded.model):
            raise
    specification = loaded.input_specification
    if image_size is not None and specification.image_size != (image_size, image_size):
        if not is_convolutional(loaded.model):
            height, width = specification.image_size
            raise ValueError(
                f"{model_name!r} takes {height}x{width} images and cannot be built for --image_size {image_size}; "
                "leave it out of the comparison or drop --image_size."
            )
        loaded = dataclasses.replace(loaded, input_specification=specification.with_size(image_size))
    return loaded


def compare_one(
    model_name: str,
    strategy: str,
    settings: dict,
    data,
    data_args: DataArguments,
    finetuning_args: FineTuningArguments,
    training_args: TrainingArguments,
    comparison_args: ComparisonArguments,
    model_dir: Path,
    argv: list[str] | None,
) -> dict:
    set_seed(training_args.seed)  # every model sees the same data order and augmentation draws
    loaded: LoadedClassifier = load_model_at_size(model_name, data.id2label, comparison_args)
    strategy = "full" if loaded.from_scratch else strategy
    model_finetuning = dataclasses.replace(finetuning_args, strategy=strategy)
    apply_strategy(loaded.model, model_finetuning)
    trainable = describe_trainable(loaded.model)
    image_size = loaded.input_specification.image_size
    logger.info("%s (%s): %d of %d parameters train, input %s.", model_name, strategy,
                trainable["trainable_parameters"], trainable["total_parameters"],
                loaded.input_specification)  # fmt: skip

    inputs = build_inputs(data, data_args, training_args, loaded.input_specification)
    train_dataset, eval_datasets = inputs.train_dataset, inputs.eval_datasets
    # TensorBoard logs go to <model folder>/runs.
    changes = {"output_dir": (str(model_dir), "the model's folder"),
               "push_to_hub": (False, "a comparison uploads nothing")}  # fmt: skip
    args = final_training_arguments(training_args, data=data, inputs=inputs, argv=argv, changes=changes,
                                    curve_points=CURVE_POINTS)  # fmt: skip
    initialize_from_data(loaded, inputs, args.device)
    trainer = FineTuningTrainer(
        model=loaded.model,
        args=args,
        finetuning_args=model_finetuning,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets.get("validation"),
        data_collator=inputs.train_collator,
        eval_data_collator=inputs.eval_collator,
        compute_metrics=build_compute_metrics(),
        processing_class=loaded.image_processor,
        callbacks=[GradualUnfreezing(loaded.model, model_finetuning.unfreeze_every_epochs)]
        if strategy == "gradual"
        else None,
    )
    train_result = trainer.train()
    evaluation_split = "test" if "test" in eval_datasets else "validation"
    prediction = trainer.predict(eval_datasets[evaluation_split], metric_key_prefix="test")
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted, labels = np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids)

    model = trainer.accelerator.unwrap_model(trainer.model)
    row = {
        "model": model_name,
        "strategy": strategy,
        "folder": model_dir.name,
        "accuracy": prediction.metrics["test_accuracy"],
        "f1_macro": prediction.metrics["test_f1_macro"],
        "parameters": trainable["total_parameters"],
        "trainable_parameters": trainable["trainable_parameters"],
        "gflops_per_image": flops_per_image(model, image_size) / 1e9,
        # As the model stands after training (a gradual run ends with everything unfrozen).
        "training_gflops_per_image": training_flops_per_image(model, image_size) / 1e9,
        **speed(
            model,
            image_size,
            batch_size=comparison_args.speed_batch_size,
            seconds=comparison_args.speed_seconds,
        ),  # fmt: skip
        "training_time_s": train_result.metrics["train_runtime"],
        "training_steps": trainer.state.global_step,
        "logging_steps": args.logging_steps,
        "input_size": "{}x{}".format(*image_size),
        "evaluated_on": f"{evaluation_split} ({len(labels)} images)",
    }
    if not args.should_save:
        return row
    model_dir.mkdir(parents=True, exist_ok=True)
    report = classification_report_rows(labels, predicted, data.id2label)
    (model_dir / "classification_report.md").write_text(
        f"# {model_name}: per-class report on {row['evaluated_on']}\n\n" + markdown_table(report, REPORT_COLUMNS)
    )
    plot_confusion_matrix(labels, predicted, data.id2label, str(model_dir / "confusion_matrix.png"),
                          f"{model_name} ({strategy})")  # fmt: skip
    curves = model_dir / "training_curves.png"
    curves.unlink(missing_ok=True)  # a plot from an earlier run is not this run's
    if not plot_training_curves(trainer.state.log_history, str(curves), model_name):
        logger.warning("%s: no training curves: %d steps, none logged (--logging_steps %s).", model_name,
                       row["training_steps"], args.logging_steps)  # fmt: skip
    operators = profile_inference(model, image_size, model_dir / "profile_trace.json",
                                  batch_size=comparison_args.profile_batch_size)  # fmt: skip
    (model_dir / "profile_operators.txt").write_text(operators)
    row["report"] = report
    (model_dir / FINISHED_MARKER).write_text(json.dumps({"settings": settings, "row": row}, indent=2))
    return row


COLUMNS = [("model", "model"), ("strategy", "strategy"), ("accuracy", "accuracy"), ("f1_macro", "macro-F1"),
           ("parameters", "parameters"), ("trainable_parameters", "trainable"),
           ("gflops_per_image", "GFLOPs / image"), ("training_gflops_per_image", "training GFLOPs / image"),
           ("latency_ms", "latency, batch 1 (ms)"), ("latency_range", "latency p10-p90 (ms)"),
           ("throughput_images_per_s", "throughput (images/s)"), ("training_time_s", "training time (s)"),
           ("input_size", "input")]  # fmt: skip
CSV_FIELDS = ["model", "strategy", "accuracy", "f1_macro", "parameters", "trainable_parameters", "gflops_per_image",
              "training_gflops_per_image", "latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_calls",
              "throughput_images_per_s", "throughput_p10_images_per_s", "throughput_p90_images_per_s",
              "training_time_s", "training_steps", "input_size", "evaluated_on"]  # fmt: skip


def write_comparison(rows: list[dict], data, training_args: TrainingArguments, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key) for key in CSV_FIELDS})
    table_rows = [{**row, "latency_range": f"{row['latency_p10_ms']:.2f}-{row['latency_p90_ms']:.2f}"}
                  for row in rows]  # fmt: skip
    budget = (f"{training_args.num_train_epochs:g} epochs, batch {training_args.per_device_train_batch_size} per "
              f"device, learning rate {training_args.learning_rate:g}, seed {training_args.seed}")  # fmt: skip
    lines = [
        "# Model comparison\n",
        f"Same training images ({data.dataset['train'].num_rows}), same budget ({budget}); evaluated on "
        f"{rows[0]['evaluated_on']}. Speed: eval mode, float32, on the training device; latency is the median of "
        "the timed calls after a warm-up, with the 10th and 90th percentiles.\n",
        markdown_table(table_rows, COLUMNS),
    ]
    for row in rows:
        folder = row["folder"]
        lines += [f"\n## {row['model']} ({row['strategy']})\n"]
        if (output_dir / folder / "confusion_matrix.png").is_file():
            lines.append(f"![confusion matrix]({folder}/confusion_matrix.png)\n")
        if (output_dir / folder / "training_curves.png").is_file():
            lines.append(f"![training curves]({folder}/training_curves.png)\n")
        else:
            lines.append(f"No training curves: the run took {row['training_steps']} optimizer steps and logged "
                         f"none (every {row['logging_steps']} steps); pass a smaller --logging_steps.\n")  # fmt: skip
        if (output_dir / folder / "profile_trace.json").is_file():
            lines.append(f"Profile: [{folder}/profile_trace.json]({folder}/profile_trace.json) (Chrome trace), "
                         f"[operator table]({folder}/profile_operators.txt).\n")  # fmt: skip
        if "report" in row:
            lines.append(markdown_table(row["report"], REPORT_COLUMNS))
    (output_dir / "model_comparison.md").write_text("\n".join(lines))
    logger.info("Comparison:\n%s", markdown_table(table_rows, COLUMNS))


if __name__ == "__main__":
    run_recipe(main)
