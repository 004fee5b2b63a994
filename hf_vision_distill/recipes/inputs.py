"""What a recipe trains on: its model, data, datasets, collators and input pipeline (tensors, workers or decoding
on the device), and the training arguments that follow from them."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from accelerate.utils import send_to_device
from transformers import TrainingArguments

from ..data import (
    ImageClassificationCollator,
    ImageClassificationData,
    drop_undecodable_images,
    load_image_classification_dataset,
    with_image_transform,
)
from ..device_decode import DeviceJpegTransform, EncodedImageDataset, describe_first_image, split_is_jpeg
from ..models.input_specification import InputSpecification
from ..models.loading import LoadedClassifier, is_convolutional, load_image_classifier
from ..tensor_data import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    DecodedImages,
    DeviceImageTransform,
    MixedImageSizesError,
    TensorImageDataset,
    decode_images,
    estimated_bytes,
)
from ..training import on_device
from .command_line import DATALOADER_WORKERS, DataArguments, ModelArguments

logger = logging.getLogger(__name__)


def load_model(model_args: ModelArguments, id2label: dict[int, str], token: str | None = None) -> LoadedClassifier:
    """The recipe's model (`--model_name_or_path` and the other model arguments) for the dataset's labels.

    A convolutional model is put in channels-last memory format: oneDNN (CPU) and cuDNN (GPU) run their fastest
    convolutions on it, and the tensor pipeline's crops come out in that layout.
    """
    loaded = load_image_classifier(
        model_args.model_name_or_path,
        id2label=id2label,
        image_size=model_args.image_size,
        config_overrides=json.loads(model_args.config_overrides) if model_args.config_overrides else None,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        token=token,
    )
    if is_convolutional(loaded.model):
        loaded.model.to(memory_format=torch.channels_last)
    return loaded


def load_data(data_args: DataArguments, training_args: TrainingArguments) -> ImageClassificationData:
    """The dataset, loaded and checked by the main process first (the other ranks then read its cache)."""
    if not data_args.dataset_name:
        raise ValueError("no dataset: pass --dataset_name (a Hub dataset id or a local folder).")
    with training_args.main_process_first(desc="dataset loading"):
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
        # Skipping scans once up front (cached by datasets), so no training batch can end up empty. Otherwise the
        # evaluation splits are scanned (they are small, and a bad image there would stop the run after a whole
        # epoch of training); the training split's first bad image stops the lazy transform, naming its row.
        if data_args.check_images or data_args.on_bad_image == "skip":
            data = drop_undecodable_images(data, on_bad_image=data_args.on_bad_image,
                                           num_proc=_scan_processes(data, list(data.dataset)))  # fmt: skip
        else:
            evaluation_splits = [split for split in data.dataset if split != "train"]
            data = drop_undecodable_images(data, num_proc=_scan_processes(data, evaluation_splits),
                                           splits=evaluation_splits)  # fmt: skip
    names = [data.id2label[index] for index in sorted(data.id2label)]
    logger.info("Dataset %s: %s images; %d classes (%s%s)", data_args.dataset_name,
                ", ".join(f"{split} {len(rows)}" for split, rows in data.dataset.items()), data.num_labels,
                ", ".join(names[:8]), ", ..." if len(names) > 8 else "")  # fmt: skip
    return data


def optimizer_steps(train_images: int, training_args: TrainingArguments) -> int:
    """A run's optimizer steps as the Trainer counts them: batches per process per epoch, accumulated, times epochs
    (or `--max_steps`)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(train_images / (training_args.per_device_train_batch_size * training_args.world_size))
    per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
    return math.ceil(per_epoch * training_args.num_train_epochs)


def reported_split(eval_splits: Iterable[str]) -> tuple[str, str] | None:
    """The split a run's results are reported on, and its metric prefix: the test split, else the validation split
    (a dataset without a test split), else `None`."""
    splits = set(eval_splits)
    if "test" in splits:
        return "test", "test"
    if "validation" in splits:
        return "validation", "eval"
    return None


def _scan_processes(data: ImageClassificationData, splits: list[str]) -> int | None:
    # Worker processes pay for their start-up only on large splits.
    rows = sum(len(data.dataset[split]) for split in splits)
    return DATALOADER_WORKERS if DATALOADER_WORKERS > 1 and rows > 20_000 else None


def build_datasets(
    data: ImageClassificationData,
    data_args: DataArguments,
    specification: InputSpecification,
    extra_columns: dict[str, dict] | None = None,
    normalize: bool = True,
) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
    """The training split with augmentation and the validation/test splits with the eval transform, all lazy, for
    the model's input (`specification`).

    `extra_columns` maps a split name to per-row arrays (e.g. cached teacher logits) its batches carry;
    `normalize=False` leaves images uint8 for collators that normalise on the device (`build_collators(...,
    specification)`).
    """
    train_transform = specification.train_transform(
        crop=data_args.crop,
        crop_padding=data_args.crop_padding,
        horizontal_flip=data_args.horizontal_flip,
        color_jitter=data_args.color_jitter,
        auto_augment=data_args.auto_augment,
        random_erasing=data_args.random_erasing,
        normalize=normalize,
    )
    eval_transform = specification.eval_transform(normalize=normalize)

    def prepare(split: str, transform) -> datasets.Dataset:
        return with_image_transform(
            data.dataset[split],
            transform,
            on_bad_image=data_args.on_bad_image,
            source_split=data.source_splits[split],
            extra_columns=(extra_columns or {}).get(split),
        )

    eval_splits = [split for split in ("validation", "test") if split in data.dataset]
    return prepare("train", train_transform), {split: prepare(split, eval_transform) for split in eval_splits}


def build_collators(
    data: ImageClassificationData,
    data_args: DataArguments,
    label_smoothing: float = 0.0,
    specification: InputSpecification | None = None,
) -> tuple[ImageClassificationCollator, ImageClassificationCollator]:
    """Training and evaluation collators of the worker pipeline. `label_smoothing`: the collator's share of it
    (`collator_label_smoothing`). With `specification`, the collators take uint8 images and normalise (and mix) them
    on the training device."""
    statistics = {}
    if specification is not None:
        statistics = {"mean": list(specification.image_mean), "std": list(specification.image_std)}
    train_collator = ImageClassificationCollator(
        num_labels=data.num_labels,
        mixup_alpha=data_args.mixup_alpha,
        cutmix_alpha=data_args.cutmix_alpha,
        label_smoothing=label_smoothing,
        **statistics,
    )
    return train_collator, ImageClassificationCollator(**statistics)


def collator_label_smoothing(data_args: DataArguments, training_args: TrainingArguments) -> float:
    """Where label smoothing happens, decided once for a run: mixed batches (mixup/cutmix) carry soft targets, which
    the Trainer's label smoother cannot take, so with mixing the training collator smooths (this value) and the
    Trainer's `label_smoothing_factor` becomes 0 (`pipeline.final_training_arguments`); without, the Trainer smooths
    and this is 0."""
    if data_args.mixup_alpha == 0 and data_args.cutmix_alpha == 0:
        return 0.0
    return training_args.label_smoothing_factor


INPUT_PIPELINE_CHOICES = ("auto", "tensors", "workers", "decode_on_device")


@dataclass
class RecipeInputs:
    """What a recipe trains and evaluates on: the datasets, their collators, which input pipeline was chosen, what it
    needs of the Trainer's dataloaders (`dataloader_settings`: the tensor pipeline wants no workers, ...), and the
    training collator's label smoothing (`collator_label_smoothing`). `pipeline.final_training_arguments` applies
    the last two to the run's training arguments."""

    train_dataset: torch.utils.data.Dataset
    eval_datasets: dict[str, torch.utils.data.Dataset]
    train_collator: Callable
    eval_collator: Callable
    pipeline: str
    dataloader_settings: dict[str, Any]
    label_smoothing: float = 0.0


def choose_input_pipeline(
    data: ImageClassificationData, data_args: DataArguments, memory_budget: int = DEFAULT_MEMORY_BUDGET_BYTES
) -> str:
    """`"tensors"`, `"workers"` or `"decode_on_device"` for `--input_pipeline` (see `DataArguments.input_pipeline`),
    decided before any image is decoded but the first of each split; a forced choice that cannot work fails here,
    naming the fix."""
    requested = data_args.input_pipeline
    if requested not in INPUT_PIPELINE_CHOICES:
        raise ValueError(
            f"--input_pipeline {requested!r} is not supported; pass one of {list(INPUT_PIPELINE_CHOICES)}."
        )
    if requested == "workers":
        return "workers"
    per_image = {"--auto_augment": data_args.auto_augment is not None, "--color_jitter": data_args.color_jitter > 0,
                 "--random_erasing": data_args.random_erasing > 0}  # fmt: skip
    per_image = [flag for flag, on in per_image.items() if on]
    if per_image:
        if requested in ("tensors", "decode_on_device"):
            raise ValueError(
                f"--input_pipeline {requested} cannot apply {per_image}: they transform one PIL image at a time in "
                "the dataloader workers. Pass --input_pipeline workers (or auto), or leave them out."
            )
        logger.info("Input pipeline: workers (%s run per image in dataloader workers).", ", ".join(per_image))
        return "workers"
    if requested == "decode_on_device":
        for split, images in data.dataset.items():
            if not split_is_jpeg(images):
                raise ValueError(
                    f"--input_pipeline decode_on_device decodes JPEG images, and split '{split}' stores others (its "
                    f"first image: {describe_first_image(images)}). Pass --input_pipeline workers (or auto)."
                )
        return "decode_on_device"
    try:
        size = sum(estimated_bytes(split) for split in data.dataset.values())
    except Exception as err:  # an undecodable first image: the worker pipeline reports it with its row
        if requested == "tensors":
            raise
        logger.info("Input pipeline: workers (the first image of a split did not decode: %r).", err)
        return "workers"
    if size > memory_budget:
        message = (f"the decoded splits would take {size / 2**30:.1f} GiB, over the tensor pipeline's budget of "
                   f"{memory_budget / 2**30:.1f} GiB")  # fmt: skip
        if requested == "tensors":
            raise ValueError(f"--input_pipeline tensors: {message}. Pass --input_pipeline workers (or auto).")
        logger.info("Input pipeline: workers (%s).", message)
        return "workers"
    return "tensors"


def build_inputs(
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    specification: InputSpecification,
    extra_columns: dict[str, dict] | None = None,
) -> RecipeInputs:
    """The datasets and collators for a model's input (`specification`, from `LoadedClassifier`), on the input
    pipeline `choose_input_pipeline` picks. `training_args` are read (device, seed, workers, label smoothing), not
    changed: what the pipeline needs of them comes back in `RecipeInputs`.

    Tensor pipeline: every split decoded once (by the main process first; the others read its cache file), batches
    augmented on `training_args.device`, no dataloader workers. Worker pipeline: `build_datasets` and
    `build_collators`. `extra_columns` maps a split to per-row arrays (cached teacher logits) its batches carry.
    """
    label_smoothing = collator_label_smoothing(data_args, training_args)
    pipeline = choose_input_pipeline(data, data_args)
    if pipeline == "tensors":
        decoded, error = {}, None
        with training_args.main_process_first(desc="decoding images"):
            try:
                decoded = {split: decode_images(data.dataset[split], on_bad_image=data_args.on_bad_image,
                                                source_split=data.source_splits[split])
                           for split in data.dataset}  # fmt: skip
            except MixedImageSizesError as err:  # raised on every process alike, after the barrier
                error = err
        if error is not None:
            if data_args.input_pipeline == "tensors":
                raise error
            logger.info("Input pipeline: workers (%s)", str(error).split(", so ")[0])
            pipeline = "workers"
    if pipeline == "decode_on_device":
        return _decode_on_device_inputs(data, data_args, training_args, specification, extra_columns, label_smoothing)
    if pipeline == "workers":
        # uint8 images leave the workers (a quarter of float32's bytes) and are normalised on the device, unless
        # random erasing, which erases normalised images to the mean colour, must run in the workers.
        normalize_on_device = data_args.random_erasing == 0
        train_dataset, eval_datasets = build_datasets(
            data, data_args, specification, extra_columns=extra_columns, normalize=not normalize_on_device
        )
        train_collator, eval_collator = build_collators(
            data, data_args, label_smoothing, specification if normalize_on_device else None
        )
        # Workers kept from epoch to epoch (and from one evaluation to the next) instead of started afresh each time;
        # batches in pinned memory copied to the device without waiting for the copy.
        persistent = training_args.dataloader_num_workers > 0
        settings = {"dataloader_persistent_workers": persistent}
        if training_args.dataloader_pin_memory:
            settings["accelerator_config"] = dataclasses.replace(training_args.accelerator_config, non_blocking=True)
        logger.info("Input pipeline: workers (%d per process, persistent: %s).",
                    training_args.dataloader_num_workers, persistent)  # fmt: skip
        return RecipeInputs(train_dataset, eval_datasets, train_collator, eval_collator, "workers", settings,
                            label_smoothing)  # fmt: skip
    return _tensor_inputs(decoded, data, data_args, training_args, specification, extra_columns, label_smoothing)


def initialize_from_data(loaded: LoadedClassifier, inputs: RecipeInputs, device: torch.device,
                         num_images: int = 5000) -> None:  # fmt: skip
    """Data-dependent initialisation of a model built from scratch that asks for it (`init_from_data(pixel_values)`,
    e.g. AirbenchCNN's whitening filters): the first `num_images` training images through the evaluation transform.
    Every process reads the same images, so every replica starts alike; a resumed run then loads its checkpoint."""
    model = loaded.model
    if not loaded.from_scratch or not callable(getattr(model, "init_from_data", None)):
        return
    dataset = inputs.train_dataset
    subset = torch.utils.data.Subset(dataset, range(min(num_images, len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=500, collate_fn=inputs.eval_collator)
    pixel_values = torch.cat(
        [on_device(inputs.eval_collator, send_to_device(batch, device))["pixel_values"].float() for batch in loader]
    )
    model.init_from_data(pixel_values.to(model.device))
    logger.info("Initialised %s from %d training images.", type(model).__name__, len(pixel_values))


def _device_collators(
    collator_class: type[DeviceImageTransform],
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    specification: InputSpecification,
    label_smoothing: float,
    train_only: dict[str, Any] | None = None,
    **extra: Any,
) -> tuple[DeviceImageTransform, DeviceImageTransform]:
    """The training and evaluation collators of a pipeline that augments on the device (`extra` arguments for both,
    `train_only` for the training one)."""
    common = {**specification.normalization(), "device": training_args.device,
              "seed": training_args.data_seed if training_args.data_seed is not None else training_args.seed,
              **extra}  # fmt: skip
    size = specification.image_size
    train_collator = collator_class(
        size, train=True, crop=data_args.crop, crop_padding=data_args.crop_padding,
        horizontal_flip=data_args.horizontal_flip,
        num_labels=data.num_labels, mixup_alpha=data_args.mixup_alpha, cutmix_alpha=data_args.cutmix_alpha,
        label_smoothing=label_smoothing, **common, **(train_only or {}),
    )  # fmt: skip
    return train_collator, collator_class(size, train=False, **common)


def _tensor_inputs(
    decoded: dict[str, DecodedImages],
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    specification: InputSpecification,
    extra_columns: dict[str, dict] | None,
    label_smoothing: float,
) -> RecipeInputs:
    device = training_args.device
    train_collator, eval_collator = _device_collators(
        DeviceImageTransform, data, data_args, training_args, specification, label_smoothing
    )
    # Batches are one indexing operation in the main process and come out on the device: workers would only add
    # processes, and pinning applies to host memory. The collator takes whole batches, which the Trainer's column
    # remover (for datasets that are not a datasets.Dataset) would take for lists of examples.
    settings = {"remove_unused_columns": False, "dataloader_num_workers": 0, "dataloader_pin_memory": False,
                "dataloader_persistent_workers": False, "dataloader_prefetch_factor": None}  # fmt: skip
    datasets_by_split = {split: TensorImageDataset(images, (extra_columns or {}).get(split))
                         for split, images in decoded.items()}  # fmt: skip
    first = next(iter(decoded.values()))
    logger.info(
        "Input pipeline: tensors (%s images of %dx%d decoded once, %.2f GiB; batches augmented on %s).",
        " + ".join(f"{split} {len(images)}" for split, images in decoded.items()), *first.image_size,
        sum(images.images.numel() for images in decoded.values()) / 2**30, device,
    )  # fmt: skip
    eval_datasets = {split: dataset for split, dataset in datasets_by_split.items() if split != "train"}
    return RecipeInputs(datasets_by_split["train"], eval_datasets, train_collator, eval_collator, "tensors", settings,
                        label_smoothing)  # fmt: skip


def _decode_on_device_inputs(
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    specification: InputSpecification,
    extra_columns: dict[str, dict] | None,
    label_smoothing: float,
) -> RecipeInputs:
    train_collator, eval_collator = _device_collators(
        DeviceJpegTransform, data, data_args, training_args, specification, label_smoothing,
        train_only={"source_split": data.source_splits.get("train")}, on_bad_image=data_args.on_bad_image,
    )  # fmt: skip
    datasets_by_split = {split: EncodedImageDataset(images, (extra_columns or {}).get(split))
                         for split, images in data.dataset.items()}  # fmt: skip
    # Workers read files and EXIF headers only; the batch holds encoded bytes, which the Trainer's column remover
    # (for datasets that are not a datasets.Dataset) would take for examples, and pinning does not apply to.
    settings = {
        "remove_unused_columns": False, "dataloader_pin_memory": False,
        "accelerator_config": dataclasses.replace(training_args.accelerator_config, non_blocking=True),
        "dataloader_persistent_workers": training_args.dataloader_num_workers > 0,
    }  # fmt: skip
    logger.info("Input pipeline: decode_on_device (%d workers per process read encoded images; %s decodes them).",
                training_args.dataloader_num_workers, training_args.device)  # fmt: skip
    eval_datasets = {split: dataset for split, dataset in datasets_by_split.items() if split != "train"}
    return RecipeInputs(datasets_by_split["train"], eval_datasets, train_collator, eval_collator, "decode_on_device",
                        settings, label_smoothing)  # fmt: skip
