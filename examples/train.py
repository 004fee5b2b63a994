"""Train an image classifier from scratch or fine-tune one, on any image-classification dataset, with the Trainer.

    accelerate launch examples/train.py                                   # simple-cnn on the shipped CIFAR-10 sample
    accelerate launch examples/train.py --model_name_or_path vit-cifar --dataset_name uoft-cs/cifar10
    accelerate launch examples/train.py --model_name_or_path google/vit-base-patch16-224 \
        --dataset_name zalando-datasets/fashion_mnist --ignore_mismatched_sizes --learning_rate 5e-5
    python examples/train.py my_run.yaml                                  # every argument from a YAML/JSON file

The model is a preset (`vit-cifar`, `vit-tiny`, `vit-small`, `vit-base`, `simple-cnn`, `compact-cnn`), a local
directory or Hub id, or a timm architecture name. The run keeps the best checkpoint by validation accuracy, writes
TensorBoard logs, `all_results.json`, the model and its image processor to `--output_dir`, resumes from the last
complete checkpoint there (unless `--overwrite_output_dir`), and pushes to the Hub with `--push_to_hub`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from hf_vision_distill.data import (
    ImageClassificationCollator,
    ImageClassificationData,
    build_transforms,
    drop_undecodable_images,
    load_image_classification_dataset,
    with_image_transform,
)
from hf_vision_distill.evaluation import build_compute_metrics
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.training import ImageClassificationTrainer, last_complete_checkpoint

logger = logging.getLogger(__name__)

SHIPPED_SAMPLE = str(Path(__file__).resolve().parents[1] / "data" / "cifar10-sample")

# The recipe's defaults for TrainingArguments; anything given on the command line or in the config file wins.
DEFAULT_TRAINING_ARGUMENTS = {
    "output_dir": "outputs/train",
    "num_train_epochs": 10,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy",
    "greater_is_better": True,
    "logging_steps": 10,
    "report_to": "tensorboard",
    "remove_unused_columns": False,
    "dataloader_num_workers": 2,
    "dataloader_pin_memory": torch.cuda.is_available(),
    # Every parameter of our models takes part in each step; DDP's search for unused ones costs a graph walk a step.
    "ddp_find_unused_parameters": False,
    "seed": 42,
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="simple-cnn",
        metadata={
            "help": "A preset built from scratch (vit-cifar, vit-tiny, vit-small, vit-base, simple-cnn, compact-cnn), "
            "a local directory or Hub id (ours, transformers', timm/... checkpoints), or a timm architecture name."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input size; defaults to the preset's or the checkpoint's."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields for presets/timm names as JSON, e.g. '{\"num_hidden_layers\": 4}'."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Allow a checkpoint whose head has another number of labels: a new head is trained."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code shipped with a checkpoint."})
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default=SHIPPED_SAMPLE,
        metadata={
            "help": "Hub dataset id (uoft-cs/cifar10, zalando-datasets/fashion_mnist, ...), a local dataset "
            "folder, or an imagefolder directory. Defaults to the CIFAR-10 sample shipped in data/."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir for load_dataset (e.g. imagefolder)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column; detected when not given."})
    label_column: str | None = field(default=None, metadata={"help": "Label column; detected when not given."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Validation split; carved from train (stratified, seeded) if absent."}
    )
    test_split: str | None = field(default=None, metadata={"help": "Test split; 'test' when the dataset has one."})
    validation_size: float = field(default=0.1, metadata={"help": "Share of train carved out for validation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation/test images."})
    on_bad_image: str = field(
        default="error",
        metadata={
            "help": "Undecodable images: 'error' stops at the first, naming its row; 'skip' drops them all up front "
            "and counts them."
        },
    )
    check_images: bool = field(
        default=False,
        metadata={"help": "Decode every image once before training, to list (error) or drop (skip) all bad rows."},
    )
    crop: str = field(default="auto", metadata={"help": "Train crop: auto, random_resized, pad or none."})
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips in training."})
    color_jitter: float = field(default=0.0, metadata={"help": "Colour jitter strength (0 disables)."})
    auto_augment: str | None = field(
        default=None, metadata={"help": "randaugment, trivialaugment or autoaugment (torchvision)."}
    )
    random_erasing: float = field(default=0.0, metadata={"help": "Probability of random erasing."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp alpha (0 disables)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (0 disables)."})


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh even if --output_dir holds checkpoints (by default the run resumes)."},
    )


def parse_arguments(
    argv: list[str] | None,
) -> tuple[ModelArguments, DataArguments, RunArguments, TrainingArguments]:
    """Command-line arguments, or a single YAML/JSON file, over the recipe's defaults."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        import yaml

        with open(argv[0]) as file:
            values = yaml.safe_load(file) or {}  # YAML is a superset of JSON
        if not isinstance(values, dict):
            raise ValueError(
                f"{argv[0]} must hold a mapping of argument names to values, got {type(values).__name__}."
            )
        return parser.parse_dict({**DEFAULT_TRAINING_ARGUMENTS, **values})
    defaults = []
    for name, value in DEFAULT_TRAINING_ARGUMENTS.items():
        defaults += [f"--{name}", str(value)]
    # argparse keeps the last occurrence, so anything the user passes overrides the defaults placed first.
    return parser.parse_args_into_dataclasses(args=defaults + argv)


def load_data(data_args: DataArguments, training_args: TrainingArguments) -> ImageClassificationData:
    data = load_image_classification_dataset(
        data_args.dataset_name,
        config_name=data_args.dataset_config_name,
        data_dir=data_args.data_dir,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        train_split=data_args.train_split,
        validation_split=data_args.validation_split,
        test_split=data_args.test_split,
        validation_size=data_args.validation_size,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        seed=training_args.seed,
        token=training_args.hub_token,
    )
    # Skipping scans once up front (cached by datasets), so no training batch can end up empty; with "error" the lazy
    # transform stops at the first bad image and names its row.
    if data_args.check_images or data_args.on_bad_image == "skip":
        data = drop_undecodable_images(data, on_bad_image=data_args.on_bad_image)
    return data


def setup_logging(training_args: TrainingArguments) -> None:
    # Info on the main process, warnings only on the others (TrainingArguments' log_level / log_level_replica).
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    for library_logger in ("hf_vision_distill", __name__):
        logging.getLogger(library_logger).setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, run_args, training_args = parse_arguments(argv)
    setup_logging(training_args)
    set_seed(training_args.seed)

    # The main process prepares (and caches) the data first; the other ranks then read the cache.
    with training_args.main_process_first(desc="dataset loading"):
        data = load_data(data_args, training_args)
    logger.info("Dataset %s: %s; %d classes", data_args.dataset_name, data.dataset, data.num_labels)
    if "validation" not in data.dataset and (
        training_args.eval_strategy != "no" or training_args.load_best_model_at_end
    ):
        logger.warning("No validation split (validation_size=0?): evaluating at the end only, keeping the last model.")
        training_args = dataclasses.replace(training_args, eval_strategy="no", load_best_model_at_end=False)

    loaded = load_image_classifier(
        model_args.model_name_or_path,
        id2label=data.id2label,
        image_size=model_args.image_size,
        config_overrides=json.loads(model_args.config_overrides) if model_args.config_overrides else None,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        token=training_args.hub_token,
    )
    model = loaded.model
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info("Model %s: %s, %.2fM parameters, input %s", model_args.model_name_or_path,
                type(model).__name__, num_parameters / 1e6, loaded.image_size)  # fmt: skip

    common = {"mean": loaded.image_mean, "std": loaded.image_std}
    train_transform = build_transforms(
        loaded.image_size,
        train=True,
        crop=data_args.crop,
        horizontal_flip=data_args.horizontal_flip,
        color_jitter=data_args.color_jitter,
        auto_augment=data_args.auto_augment,
        random_erasing=data_args.random_erasing,
        **common,
    )
    eval_transform = build_transforms(loaded.image_size, train=False, **common)

    # Decoding and augmentation run lazily, per batch, in the dataloader workers.
    def prepare(split: str, transform) -> datasets.Dataset:
        return with_image_transform(
            data.dataset[split], transform, on_bad_image=data_args.on_bad_image, source_split=data.source_splits[split]
        )

    train_dataset = prepare("train", train_transform)
    eval_splits = [split for split in ("validation", "test") if split in data.dataset]
    eval_datasets = {split: prepare(split, eval_transform) for split in eval_splits}

    # Mixed batches carry soft targets, which the Trainer's label smoother cannot take: smooth them in the collator.
    mixing = data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0
    label_smoothing = training_args.label_smoothing_factor if mixing else 0.0
    if mixing:
        training_args = dataclasses.replace(training_args, label_smoothing_factor=0.0)
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets.get("validation"),
        data_collator=ImageClassificationCollator(
            num_labels=data.num_labels,
            mixup_alpha=data_args.mixup_alpha,
            cutmix_alpha=data_args.cutmix_alpha,
            label_smoothing=label_smoothing,
        ),
        eval_data_collator=ImageClassificationCollator(),
        compute_metrics=build_compute_metrics(),
        processing_class=loaded.image_processor,
    )

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and not run_args.overwrite_output_dir:
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info("Resuming from %s; pass --overwrite_output_dir to start afresh.", checkpoint)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # the best checkpoint (load_best_model_at_end) and its image processor
    trainer.save_state()
    metrics = {**train_result.metrics, "num_parameters": num_parameters}
    for split, dataset in eval_datasets.items():
        prefix = "eval" if split == "validation" else split
        metrics.update(trainer.evaluate(dataset, metric_key_prefix=prefix))
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)

    if training_args.push_to_hub:
        trainer.push_to_hub(
            dataset=data_args.dataset_name,
            tags=["image-classification", "hf-vision-distill"],
            finetuned_from=None if loaded.from_scratch else model_args.model_name_or_path,
        )
    return metrics


if __name__ == "__main__":
    main()
