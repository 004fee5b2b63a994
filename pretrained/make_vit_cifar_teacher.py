# Copyright 2025 The hf_vision_distill Authors.
# SPDX-License-Identifier: Apache-2.0
"""Regenerate `pretrained/vit-cifar-teacher`: the ViT teacher the distillation recipe uses by default.

Step 1 trains our CIFAR ViT (ViT-Lite-7/4, 3.7M parameters) on the full CIFAR-10 training split with the training
recipe (45,000 images; 5,000 held out for validation), in bf16 autocast with eager attention, which is what a CPU
with AMX runs fastest (benchmarks/RESULTS.md):

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python examples/train.py \\
        --model_name_or_path vit-cifar --config_overrides '{"attn_implementation": "eager"}' \\
        --dataset_name ../shared/datasets/cifar10 --num_train_epochs 15 --bf16 --use_cpu \\
        --label_smoothing_factor 0.1 --output_dir outputs/teacher-vit-cifar --overwrite_output_dir

(`--attn_implementation eager` is the same as the config override; ../shared/datasets/cifar10 is a local copy of
the Hub's uoft-cs/cifar10.)

Step 2, this script, stores the run's best model in bfloat16 (half the bytes; the recipes load checkpoints in
float32), with its image processor and a model card rendered from the run's results:

    python pretrained/make_vit_cifar_teacher.py --run outputs/teacher-vit-cifar

The test images of the shipped sample (data/cifar10-sample) are the first 1,000 of CIFAR-10's test split, which the
teacher never saw; its training images are among the teacher's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_vision_distill.hub import build_model_card
from hf_vision_distill.models import load_image_classifier

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "pretrained" / "vit-cifar-teacher"
TRAINING_COMMAND = (
    "MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python examples/train.py "
    '--model_name_or_path vit-cifar --config_overrides \'{"attn_implementation": "eager"}\' '
    "--dataset_name ../shared/datasets/cifar10 --num_train_epochs 15 --bf16 --use_cpu --label_smoothing_factor 0.1 "
    "--output_dir outputs/teacher-vit-cifar --overwrite_output_dir"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO_ROOT / "outputs" / "teacher-vit-cifar")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    results = json.loads((args.run / "all_results.json").read_text())
    state = json.loads((args.run / "trainer_state.json").read_text())
    loaded = load_image_classifier(str(args.run), id2label=None)
    args.output.mkdir(parents=True, exist_ok=True)
    loaded.model.to(torch.bfloat16).save_pretrained(args.output)
    loaded.image_processor.save_pretrained(args.output)
    hyperparameters = {
        "epochs": state["num_train_epochs"],
        "batch size": state["train_batch_size"],
        "optimizer": "AdamW (weight decay 0.05)",
        "learning rate": "1e-3, cosine, 5% warm-up",
        "label smoothing": 0.1,
        "augmentations": "pad-and-crop (4 pixels), horizontal flip",
        "mixed precision": "bf16 autocast, eager attention, on CPU",
        "stored as": "bfloat16 (load it in float32: the recipes do)",
        "best validation accuracy": round(state["best_metric"], 4),
        "training time": f"{results['train_runtime'] / 60:.0f} minutes on 2 CPU cores",
    }
    card = build_model_card(
        loaded.model,
        repo_id="pretrained/vit-cifar-teacher",
        dataset_name="uoft-cs/cifar10",
        recipe="examples/train.py",
        results={
            "test": {"accuracy": results["test_accuracy"], "f1_macro": results["test_f1_macro"]},
            "eval": {"accuracy": results["eval_accuracy"], "f1_macro": results["eval_f1_macro"]},
        },
        hyperparameters=hyperparameters,
        input_size=loaded.image_size,
        image_mean=loaded.image_mean,
        image_std=loaded.image_std,
        command=TRAINING_COMMAND,
        description=(
            "Our CIFAR ViT (ViT-Lite-7/4: 7 pre-norm blocks, 256 wide, 4 heads, 4x4 patches, an 8x8 token grid) "
            "trained from scratch on CIFAR-10 on a CPU budget. It is the default teacher of hf_vision_distill's "
            "distillation recipe (`examples/distill.py`), whose attention maps the CNN student learns to follow. "
            "Results are on CIFAR-10's full test split (10,000 images)."
        ),
        limitations=(
            "A CPU-budget model: 15 epochs, where ViT-Lite-7/4 reaches about 91% after 300 epochs with heavy "
            "augmentation (Hassani et al., 2021). It classifies 32x32 images into the 10 CIFAR-10 classes only. It "
            "ships as a teacher for examples and tests, not as a general-purpose classifier."
        ),
        tags=["cifar10", "vit"],
    )
    card.save(args.output / "README.md")
    print(f"wrote {args.output}: test accuracy {results['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
