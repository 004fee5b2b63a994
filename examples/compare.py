"""Train and evaluate several image classifiers on the same data and budget, and compare them side by side.

    # CNN vs ViT from scratch on the shipped CIFAR-10 sample
    python examples/compare.py --models simple-cnn compact-cnn vit-cifar --num_train_epochs 3
    # a SimpleCNN from scratch against a ViT-Tiny linear probe (pretrained on ImageNet, upsampled to 224)
    accelerate launch examples/compare.py --models simple-cnn facebook/deit-tiny-patch16-224 \
        --strategies full linear_probe --dataset_name uoft-cs/cifar10 --num_train_epochs 5

Each model trains with the fine-tuning trainer (`--strategies`, one per model, default `full`; models built from
scratch always train fully) on the same training images, epochs and batch size, then is evaluated on the test split
(the validation split when there is none). Per model, under `--output_dir/<model>/`: `classification_report.md`,
`confusion_matrix.png`, `training_curves.png` (loss, gradient norm, learning rate), TensorBoard logs,
`profile_trace.json` (Chrome trace of inference; open in chrome://tracing or ui.perfetto.dev) and
`profile_operators.txt`. Side by side: `metrics.csv` and `model_comparison.md` (accuracy, macro-F1, parameters total
and trainable, GFLOPs per image, latency at batch 1, throughput at `--speed_batch_size`, training time).
"""

from __future__ import annotations

import csv
import dataclasses
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
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.profiling import flops_per_image, profile_inference, speed
from hf_vision_distill.recipes import (
    SHIPPED_SAMPLE,
    TRAINING_DEFAULTS,
    DataArguments,
    build_inputs,
    evaluation_settings_for,
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


REPORT_COLUMNS = [("class", "class"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
                  ("support", "support")]  # fmt: skip


@dataclass
class ComparisonArguments:
    models: list[str] = field(
        default_factory=lambda: ["simple-cnn", "compact-cnn"],
        metadata={"help": "Models to compare: presets, Hub ids, local folders or timm names."},
    )
    strategies: list[str] | None = field(
        default=None,
        metadata={"help": "One fine-tuning strategy per model (full, linear_probe, last_n, gradual); default full."},
    )
    speed_batch_size: int = field(default=64, metadata={"help": "Batch size of the throughput measurement."})
    profile_batch_size: int = field(default=16, metadata={"help": "Batch size of the profiled inference steps."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code shipped with a checkpoint."})


def folder_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("_")


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
    data = load_data(data_args, training_args)
    training_args = evaluation_settings_for(data, training_args)
    output_dir = Path(training_args.output_dir)
    rows = []
    for model_name, strategy in zip(comparison_args.models, strategies):
        rows.append(compare_one(model_name, strategy, data, data_args, finetuning_args, training_args,
                                comparison_args, output_dir / folder_name(model_name)))  # fmt: skip
    if training_args.should_save:
        write_comparison(rows, data, training_args, output_dir)
    return rows


def compare_one(model_name, strategy, data, data_args, finetuning_args, training_args, comparison_args, model_dir):
    set_seed(training_args.seed)  # every model sees the same data order and augmentation draws
    loaded = load_image_classifier(model_name, id2label=data.id2label, ignore_mismatched_sizes=True,
                                   trust_remote_code=comparison_args.trust_remote_code)  # fmt: skip
    strategy = "full" if loaded.from_scratch else strategy
    model_finetuning = dataclasses.replace(finetuning_args, strategy=strategy)
    apply_strategy(loaded.model, model_finetuning)
    trainable = describe_trainable(loaded.model)
    logger.info("%s (%s): %d of %d parameters train.", model_name, strategy, trainable["trainable_parameters"],
                trainable["total_parameters"])  # fmt: skip

    inputs = build_inputs(data, data_args, training_args, loaded.image_size, loaded.image_mean, loaded.image_std,
                          interpolation=loaded.interpolation)  # fmt: skip
    train_dataset, eval_datasets, args = inputs.train_dataset, inputs.eval_datasets, inputs.training_args
    # TensorBoard logs go to <model folder>/runs.
    args = dataclasses.replace(args, output_dir=str(model_dir), push_to_hub=False)
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
        "accuracy": prediction.metrics["test_accuracy"],
        "f1_macro": prediction.metrics["test_f1_macro"],
        "parameters": trainable["total_parameters"],
        "trainable_parameters": trainable["trainable_parameters"],
        "gflops_per_image": flops_per_image(model, loaded.image_size) / 1e9,
        **speed(model, loaded.image_size, batch_size=comparison_args.speed_batch_size),
        "training_time_s": train_result.metrics["train_runtime"],
        "input_size": f"{loaded.image_size[0]}x{loaded.image_size[1]}",
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
    plot_training_curves(trainer.state.log_history, str(model_dir / "training_curves.png"), model_name)
    operators = profile_inference(model, loaded.image_size, model_dir / "profile_trace.json",
                                  batch_size=comparison_args.profile_batch_size)  # fmt: skip
    (model_dir / "profile_operators.txt").write_text(operators)
    row["report"] = report
    return row


def write_comparison(rows: list[dict], data, training_args: TrainingArguments, output_dir: Path) -> None:
    columns = [("model", "model"), ("strategy", "strategy"), ("accuracy", "accuracy"), ("f1_macro", "macro-F1"),
               ("parameters", "parameters"), ("trainable_parameters", "trainable"),
               ("gflops_per_image", "GFLOPs / image"), ("latency_ms", "latency, batch 1 (ms)"),
               ("throughput_images_per_s", "throughput (images/s)"), ("training_time_s", "training time (s)"),
               ("input_size", "input")]  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[key for key, _ in columns] + ["evaluated_on"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in writer.fieldnames})
    budget = (f"{training_args.num_train_epochs:g} epochs, batch {training_args.per_device_train_batch_size} per "
              f"device, learning rate {training_args.learning_rate:g}, seed {training_args.seed}")  # fmt: skip
    lines = [
        "# Model comparison\n",
        f"Same training images ({data.dataset['train'].num_rows}), same budget ({budget}); evaluated on "
        f"{rows[0]['evaluated_on']}. Speed: eval mode, float32, on the training device.\n",
        markdown_table(rows, columns),
    ]
    for row in rows:
        folder = folder_name(row["model"])
        lines += [
            f"\n## {row['model']} ({row['strategy']})\n",
            f"![confusion matrix]({folder}/confusion_matrix.png)\n",
            f"![training curves]({folder}/training_curves.png)\n",
            f"Profile: [{folder}/profile_trace.json]({folder}/profile_trace.json) (Chrome trace), "
            f"[operator table]({folder}/profile_operators.txt).\n",
        ]
        if "report" in row:
            lines.append(markdown_table(row["report"], REPORT_COLUMNS))
    (output_dir / "model_comparison.md").write_text("\n".join(lines))
    logger.info("Comparison:\n%s", markdown_table(rows, columns))


if __name__ == "__main__":
    run_recipe(main)
