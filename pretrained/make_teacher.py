# Copyright 2025 The hf_vision_distill Authors.
# SPDX-License-Identifier: Apache-2.0
"""Regenerate a shipped teacher (`pretrained/<name>`) from the training run that made it.

Step 1 trains the teacher with the training recipe on the full CIFAR-10 training split; each teacher's command is in
`TEACHERS` below and in benchmarks/RESULTS.md with its figures (../shared/datasets/cifar10 is a JPEG-compressed copy
of CIFAR-10 laid out like the Hub's uoft-cs/cifar10). Step 2, this script, stores the run's best model in bfloat16
(half the bytes; the recipes load checkpoints in float32), with its image processor and a model card rendered from
the run's results:

    python pretrained/make_teacher.py cnn-cifar10-teacher     # reads outputs/cnn-cifar10-teacher
    python pretrained/make_teacher.py vit-cifar-teacher       # reads outputs/teacher-vit-cifar

The test images of the shipped sample (data/cifar10-sample) are the first 1,000 of CIFAR-10's test split, which the
teachers never saw; its training images are among the teachers'.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.evaluation import ClassificationMetrics
from hf_vision_distill.hub import build_model_card
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.tensor_data import DeviceImageTransform, decode_images, predict_decoded

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Teacher:
    run: str  # the training run's output folder, relative to the repository
    command: str  # the command that trained it
    hyperparameters: dict[str, str]  # what the command sets, in words, for the card
    description: str
    limitations: str
    tags: list[str]
    # Stored in the shipped config when the run trained with another; the card's test figures are then measured with
    # it (on --dataset_name's test split), not copied from the run.
    test_time_augmentation: str | None = None


# The CNN teacher's recipe: examples/train.py's arguments besides the data, output folder, budget and device
# (benchmarks/gpu_check.py runs the same on a GPU).
CNN_TEACHER_RECIPE = [
    "--model_name_or_path", "airbench-cnn", "--config_overrides", '{"test_time_augmentation": "flip_translate"}',
    "--validation_size", "0.04", "--crop_padding", "2", "--per_device_train_batch_size", "1024", "--optim", "sgd",
    "--optim_args", "momentum=0.85,nesterov=True", "--learning_rate", "1.5", "--weight_decay", "0.00133",
    "--lr_scheduler_type", "linear", "--warmup_steps", "0.23", "--label_smoothing_factor", "0.2",
]  # fmt: skip

TEACHERS = {
    "cnn-cifar10-teacher": Teacher(
        run="outputs/cnn-cifar10-teacher",
        command="python examples/train.py "
        + shlex.join(
            [
                *CNN_TEACHER_RECIPE,
                "--dataset_name",
                "../shared/datasets/cifar10",
                "--output_dir",
                "outputs/cnn-cifar10-teacher",
                "--overwrite_output_dir",
                "--num_train_epochs",
                "20",
                "--bf16",
                "--use_cpu",
            ]
        ),  # fmt: skip
        test_time_augmentation="flip",
        hyperparameters={
            "optimizer": "SGD, Nesterov momentum 0.85, weight decay 0.00133 (not on biases and norm shifts)",
            "learning rate": "1.5, linear warm-up over 23% of the steps, then linear decay; norm shifts at 64x",
            "label smoothing": "0.2",
            "augmentations": "pad-and-crop (2 pixels, reflect), horizontal flip",
            "test-time augmentation": "flip (the image and its mirror) in the stored config",
            "mixed precision": "bf16 autocast, on CPU",
        },
        description=(
            "airbench94's network (Keller Jordan, 2024: a fixed 2x2 patch-whitening layer computed from the "
            "training images, three stages of two 3x3 convolutions, 64/256/256 wide, BatchNorm shifts only, GELU) "
            "trained from scratch on CIFAR-10 with hf_vision_distill's training recipe on a 2-core CPU. It is the "
            "library's CNN teacher. Results are on CIFAR-10's full test split (10,000 images), with the test-time "
            "augmentation stored in its config: the mean of the logits of the image and its mirror (two forward "
            "passes, so that a live teacher costs about what the 0.5-GFLOP ViT teacher does). Set "
            '`test_time_augmentation` to `"none"` for one pass (89.8%) or `"flip_translate"` for six (90.8%).'
        ),
        limitations=(
            "airbench94 reaches 94% with this network in 10 epochs on the lossless CIFAR-10 release; it was trained "
            "and tested here on a JPEG-compressed copy (quality 75, 4:2:0 chroma), where airbench94's own training "
            "loop also stops at 90.9% (with flip_translate), in bf16 as in float32 (benchmarks/RESULTS.md). It "
            "classifies 32x32 images into the 10 CIFAR-10 classes only, and ships as a teacher for distillation, "
            "examples and tests, not as a general-purpose classifier."
        ),
        tags=["cifar10", "cnn", "airbench"],
    ),
    "vit-cifar-teacher": Teacher(
        run="outputs/teacher-vit-cifar",
        command=(
            "MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python examples/train.py "
            '--model_name_or_path vit-cifar --config_overrides \'{"attn_implementation": "eager"}\' '
            "--dataset_name ../shared/datasets/cifar10 --num_train_epochs 15 --bf16 --use_cpu "
            "--label_smoothing_factor 0.1 --output_dir outputs/teacher-vit-cifar --overwrite_output_dir"
        ),
        hyperparameters={
            "optimizer": "AdamW (weight decay 0.05)",
            "learning rate": "1e-3, cosine, 5% warm-up",
            "label smoothing": "0.1",
            "augmentations": "pad-and-crop (4 pixels), horizontal flip",
            "mixed precision": "bf16 autocast, eager attention, on CPU",
        },
        description=(
            "Our CIFAR ViT (ViT-Lite-7/4: 7 pre-norm blocks, 256 wide, 4 heads, 4x4 patches, an 8x8 token grid) "
            "trained from scratch on CIFAR-10 on a CPU budget. It is the teacher of hf_vision_distill's ViT -> CNN "
            "distillation recipe (`examples/distill.py --teacher_model_name_or_path pretrained/vit-cifar-teacher`), "
            "whose attention maps the CNN student learns to follow. "
            "Results are on CIFAR-10's full test split (10,000 images)."
        ),
        limitations=(
            "A CPU-budget model: 15 epochs, where ViT-Lite-7/4 reaches about 91% after 300 epochs with heavy "
            "augmentation (Hassani et al., 2021). It classifies 32x32 images into the 10 CIFAR-10 classes only. It "
            "ships as a teacher for examples and tests, not as a general-purpose classifier."
        ),
        tags=["cifar10", "vit"],
    ),
}


def test_metrics(loaded, dataset_name: str) -> dict[str, float]:
    """Accuracy and macro-F1 of the model as it will be stored, on the dataset's test split, in float32."""
    data = load_image_classification_dataset(dataset_name)
    test = decode_images(data.dataset["test"], source_split="test")
    transform = DeviceImageTransform(
        loaded.input_specification.image_size, train=False, **loaded.input_specification.normalization()
    )
    metric = ClassificationMetrics()
    metric.add_batch(predictions=predict_decoded(loaded.model, test, transform), references=test.labels)
    return metric.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(TEACHERS))
    parser.add_argument("--run", type=Path, help="The training run's folder (default: the teacher's own).")
    parser.add_argument("--output", type=Path, help="Where to write it (default: pretrained/<name>).")
    parser.add_argument("--dataset_name", default=str(REPO_ROOT.parent / "shared" / "datasets" / "cifar10"),
                        help="CIFAR-10, for test figures measured here (a Hub id or a local copy).")  # fmt: skip
    args = parser.parse_args()
    teacher = TEACHERS[args.name]
    run = args.run or REPO_ROOT / teacher.run
    output = args.output or REPO_ROOT / "pretrained" / args.name

    results = json.loads((run / "all_results.json").read_text())
    state = json.loads((run / "trainer_state.json").read_text())
    loaded = load_image_classifier(str(run), id2label=None)
    test = {"accuracy": results["test_accuracy"], "f1_macro": results["test_f1_macro"]}
    if teacher.test_time_augmentation is not None:
        loaded.model.config.test_time_augmentation = teacher.test_time_augmentation
        test = test_metrics(loaded, args.dataset_name)
        print(f"test split with test_time_augmentation={teacher.test_time_augmentation!r}: {test}")
    output.mkdir(parents=True, exist_ok=True)
    loaded.model.to(torch.bfloat16).save_pretrained(output)
    loaded.image_processor.save_pretrained(output)
    hyperparameters = {
        "epochs": state["num_train_epochs"],
        "batch size": state["train_batch_size"],
        **teacher.hyperparameters,
        "stored as": "bfloat16 (load it in float32: the recipes do)",
        "best validation accuracy": round(state["best_metric"], 4),
        "training time": f"{results['train_runtime'] / 60:.0f} minutes on 2 CPU cores",
    }
    card = build_model_card(
        loaded.model,
        repo_id=f"pretrained/{args.name}",
        dataset_name="uoft-cs/cifar10",
        recipe="examples/train.py",
        results={
            "test": test,
            # The run's validation figures, unless they were measured with another test-time augmentation.
            **(
                {}
                if teacher.test_time_augmentation
                else {"eval": {"accuracy": results["eval_accuracy"], "f1_macro": results["eval_f1_macro"]}}
            ),
        },
        hyperparameters=hyperparameters,
        input_specification=loaded.input_specification,
        command=teacher.command,
        description=teacher.description,
        limitations=teacher.limitations,
        tags=teacher.tags,
    )
    card.save(output / "README.md")
    print(f"wrote {output}: test accuracy {test['accuracy']:.4f}")


if __name__ == "__main__":
    main()
