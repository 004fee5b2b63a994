"""Image transforms (crops, flips, augmentation, normalisation) and the lazy per-batch transform that applies them
to a split, carrying per-row arrays with the images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import datasets
import numpy as np
import PIL.Image
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from .images import _check_on_bad_image, _decode_image, _describe_image, convert_image_to_rgb
from .loading import ROW_INDEX_COLUMN

logger = logging.getLogger(__name__)


CROP_CHOICES = ("auto", "random_resized", "pad", "none")
AUTO_AUGMENT_CHOICES = ("randaugment", "trivialaugment", "autoaugment")
INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
# Below this size (CIFAR, MNIST) a RandomResizedCrop keeps too few pixels; pad-and-crop is the standard recipe there.
PAD_CROP_MAX_IMAGE_SIZE = 64


def _image_size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ValueError(f"image_size={image_size!r} must be a positive int or a (height, width) pair of them.")
    return size


def pad_crop_padding(image_size: tuple[int, int], crop_padding: int | None = None) -> int:
    """The reflect padding of the pad-and-crop augmentation: `crop_padding` pixels when given, else an eighth of the
    shorter side (4 pixels at 32, the CIFAR convention)."""
    if crop_padding is not None:
        if crop_padding < 0 or crop_padding >= min(image_size):
            raise ValueError(
                f"crop_padding={crop_padding} for {image_size[0]}x{image_size[1]} images: pass 0 (no shift) up to "
                f"{min(image_size) - 1}, or leave it out for an eighth of the shorter side."
            )
        return crop_padding
    return max(min(image_size) // 8, 1)


def build_transforms(
    image_size: int | tuple[int, int],
    *,
    train: bool,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bilinear",
    crop: str = "auto",
    horizontal_flip: bool = True,
    color_jitter: float = 0.0,
    auto_augment: str | None = None,
    random_erasing: float = 0.0,
    normalize: bool = True,
    crop_padding: int | None = None,
) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """Build the image transform of a split: PIL image in, normalised `(3, height, width)` float tensor out.

    Every image is converted to RGB first ([`convert_image_to_rgb`]), so grayscale, palette, RGBA, 16-bit and CMYK
    inputs all work. Evaluation resizes to exactly `image_size` (no crop), so the model always sees its input size.
    Training applies, in this order: the crop, horizontal flip, colour jitter, auto-augment (all on the PIL image),
    then `ToImage`, `ToDtype(float32, scale=True)`, `Normalize`, and random erasing (on the normalised tensor).

    Args:
        image_size (`int` or `tuple[int, int]`):
            Output size; an int means a square `(image_size, image_size)`, a tuple is `(height, width)`.
        train (`bool`):
            Whether to build the augmenting training transform or the deterministic evaluation one.
        mean (`Sequence[float]`, *optional*, defaults to timm's `IMAGENET_DEFAULT_MEAN`):
            Per-channel RGB mean for `Normalize`; use the model's image processor values for pretrained models.
        std (`Sequence[float]`, *optional*, defaults to timm's `IMAGENET_DEFAULT_STD`):
            Per-channel RGB standard deviation for `Normalize`.
        interpolation (`str`, *optional*, defaults to `"bilinear"`):
            `"bilinear"`, `"bicubic"` or `"nearest"`; used by resizing, cropping and auto-augment.
        crop (`str`, *optional*, defaults to `"auto"`):
            Training crop. `"random_resized"`: `RandomResizedCrop` with scale (0.08, 1) and ratio (3/4, 4/3), the
            ImageNet recipe. `"pad"`: resize, then `RandomCrop` with reflect padding of 1/8 of the shorter side, the
            CIFAR recipe. `"none"`: resize only. `"auto"`: `"pad"` when both sides are at most 64 pixels, else
            `"random_resized"`.
        horizontal_flip (`bool`, *optional*, defaults to `True`):
            Whether training flips images left-right with probability 0.5.
        color_jitter (`float`, *optional*, defaults to 0.0):
            When positive, `ColorJitter(brightness=c, contrast=c, saturation=c)`.
        auto_augment (`str`, *optional*):
            `"randaugment"`, `"trivialaugment"` (`TrivialAugmentWide`) or `"autoaugment"` (ImageNet policy).
        random_erasing (`float`, *optional*, defaults to 0.0):
            Probability of `RandomErasing`, applied after `Normalize` (erased pixels become 0, the mean colour).
        normalize (`bool`, *optional*, defaults to `True`):
            End with the normalised float tensor. `False` ends at the uint8 tensor (a quarter of the bytes to send
            from the dataloader workers), for `ImageClassificationCollator(mean=..., std=...)` to normalise on the
            training device; random erasing needs `True`.

    Returns:
        `Callable[[PIL.Image.Image], torch.Tensor]`: a picklable `torchvision.transforms.v2.Compose`.
        crop_padding (`int`, *optional*):
            Reflect padding of `crop="pad"` in pixels (the largest shift); defaults to an eighth of the shorter side.
    """
    height, width = _image_size_pair(image_size)
    if interpolation not in INTERPOLATION_MODES:
        raise ValueError(f"interpolation='{interpolation}' is not supported; pass one of {list(INTERPOLATION_MODES)}.")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(
            f"mean={tuple(mean)} and std={tuple(std)} must have 3 values each, one per RGB channel (images are "
            "converted to RGB); for grayscale statistics repeat the value three times."
        )
    if crop not in CROP_CHOICES:
        raise ValueError(f"crop='{crop}' is not supported; pass one of {list(CROP_CHOICES)}.")
    if auto_augment is not None and auto_augment not in AUTO_AUGMENT_CHOICES:
        raise ValueError(
            f"auto_augment='{auto_augment}' is not supported; pass one of {list(AUTO_AUGMENT_CHOICES)} or None."
        )
    if color_jitter < 0:
        raise ValueError(f"color_jitter={color_jitter} must be >= 0 (0 disables it).")
    if not 0 <= random_erasing <= 1:
        raise ValueError(f"random_erasing={random_erasing} is a probability; pass a value in [0, 1] (0 disables it).")

    mode = INTERPOLATION_MODES[interpolation]
    size = [height, width]
    transforms: list[Callable] = [v2.Lambda(convert_image_to_rgb, PIL.Image.Image)]
    if not train:
        transforms.append(v2.Resize(size, interpolation=mode, antialias=True))
    else:
        if crop == "auto":
            crop = "pad" if max(height, width) <= PAD_CROP_MAX_IMAGE_SIZE else "random_resized"
        if crop == "random_resized":
            transforms.append(
                v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=mode, antialias=True)
            )
        else:
            transforms.append(v2.Resize(size, interpolation=mode, antialias=True))
            if crop == "pad":
                # Reflect padding rather than zeros: black borders are not part of natural images.
                padding = pad_crop_padding((height, width), crop_padding)
                if padding:
                    transforms.append(v2.RandomCrop(size, padding=padding, padding_mode="reflect"))
        if horizontal_flip:
            transforms.append(v2.RandomHorizontalFlip())
        if color_jitter > 0:
            transforms.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        if auto_augment == "randaugment":
            transforms.append(v2.RandAugment(interpolation=mode))
        elif auto_augment == "trivialaugment":
            transforms.append(v2.TrivialAugmentWide(interpolation=mode))
        elif auto_augment == "autoaugment":
            transforms.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode))
    if train and random_erasing > 0 and not normalize:
        raise ValueError(
            "random_erasing erases to the mean colour of normalised images; pass normalize=True with it (images "
            "then leave the workers normalised)."
        )
    transforms.append(v2.ToImage())
    if normalize:
        transforms += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if train and random_erasing > 0:
        transforms.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(transforms)


class _ImageBatchTransform:
    """The callable returned by [`make_batch_transform`]; a module-level class so that it pickles."""

    def __init__(
        self,
        image_transform: Callable[[PIL.Image.Image], torch.Tensor],
        on_bad_image: str,
        source_split: str | None,
        extra_columns: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.image_transform = image_transform
        self.on_bad_image = on_bad_image
        self.source_split = source_split
        # Per-row arrays indexed by row_index (e.g. a distillation's cached teacher logits), looked up for each
        # batch and carried with the images under their names.
        self.extra_columns = extra_columns or {}
        # Rows dropped so far in this process (each dataloader worker counts its own).
        self.num_skipped = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "image" not in batch:
            raise ValueError(
                f"batch has no 'image' column; columns are {list(batch)}. Load the data with "
                "load_image_classification_dataset, which renames the image column to 'image'."
            )
        images = batch["image"]
        labels = batch.get("label")
        row_indices = batch.get(ROW_INDEX_COLUMN)
        passthrough = {}
        if self.extra_columns:
            if row_indices is None:
                raise ValueError("per-row outputs need the loader's 'row_index' column in the dataset.")
            for name, table in self.extra_columns.items():
                rows = np.asarray(row_indices)
                if rows.max() >= len(table) or np.isnan(table[rows]).any():
                    missing = [int(row) for row in rows if row >= len(table) or np.isnan(table[row]).any()]
                    raise ValueError(
                        f"no precomputed '{name}' for rows {missing[:10]}; compute it for every row of this split "
                        "before training from it (a teacher cache: cache_teacher_logits)."
                    )
                passthrough[name] = list(table[rows])
        pixel_values, kept_labels, kept_rows = [], [], []
        kept_passthrough = {name: [] for name in passthrough}
        skipped = []
        for position, value in enumerate(images):
            try:
                image = _decode_image(value)
            except Exception as err:  # PIL raises a zoo of exception types for malformed files
                if row_indices is None:
                    where = f"position {position} of this batch"
                elif self.source_split is not None:
                    where = f"row {row_indices[position]} of source split '{self.source_split}'"
                else:
                    where = f"row {row_indices[position]}"
                if self.on_bad_image == "error":
                    raise ValueError(
                        f"cannot decode the image at {where}, file {_describe_image(value)}: {err!r}. Pass "
                        "on_bad_image='skip' (--on_bad_image skip in the recipes) to drop undecodable rows, or "
                        "--check_images (drop_undecodable_images(data)) to list them all before training."
                    ) from err
                skipped.append(f"{where} {_describe_image(value)}")
                continue
            pixel_values.append(self.image_transform(image))
            if row_indices is not None:
                kept_rows.append(int(row_indices[position]))
            if labels is not None:
                kept_labels.append(int(labels[position]))
            for name, values in passthrough.items():
                kept_passthrough[name].append(values[position])
        if skipped:
            self.num_skipped += len(skipped)
            logger.warning(
                "Skipped %d undecodable image(s) (%s); %d skipped so far in this process.",
                len(skipped),
                ", ".join(skipped),
                self.num_skipped,
            )
        output = {"pixel_values": pixel_values, **kept_passthrough}
        if labels is not None:
            output["labels"] = kept_labels
        if row_indices is not None:
            output[ROW_INDEX_COLUMN] = kept_rows
        return output


def make_batch_transform(
    image_transform: Callable[[PIL.Image.Image], torch.Tensor],
    *,
    on_bad_image: str = "error",
    source_split: str | None = None,
    extra_columns: dict[str, np.ndarray] | None = None,
) -> Callable[[dict], dict]:
    """Wrap an image transform into a batch function for `Dataset.with_transform`.

    Applied lazily per batch, so images are decoded and augmented in the dataloader workers. The batch's `"image"`
    values may be PIL images or, when the column was cast to `datasets.Image(decode=False)`, `{"bytes", "path"}` dicts
    decoded here. Only undecoded values let this function catch decoding errors itself: with `decode=True` datasets
    decodes (and fails) before this function runs. The returned callable is picklable. With `transformers.Trainer`,
    set `remove_unused_columns=False`: the transform needs the `"image"` column, which is not a model argument.

    Args:
        image_transform (`Callable[[PIL.Image.Image], torch.Tensor]`):
            Usually from [`build_transforms`].
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            `"error"` raises a `ValueError` naming the row (from the batch's `"row_index"`, which the loader adds) and
            the file. `"skip"` drops the example from the batch, logs it and counts it in the callable's
            `num_skipped` (per process); a batch of bad images only would end up empty, so prefer removing bad rows
            once with [`drop_undecodable_images`].
        source_split (`str`, *optional*):
            The source split the rows come from, named in messages (see `ImageClassificationData.source_splits`).
        extra_columns (`dict[str, np.ndarray]`, *optional*):
            Arrays indexed by `row_index` whose rows are added to each example under their name (e.g. a
            distillation's cached teacher logits); a row that is NaN or out of range is an error.

    Returns:
        `Callable[[dict], dict]`: maps `{"image": [...], "label": [...]}` to `{"pixel_values": [CHW float tensors],
        "labels": [ints]}` (`"labels"` only when the batch has `"label"`).

    Example:

    ```python
    >>> train_dataset = data.dataset["train"].with_transform(make_batch_transform(build_transforms(32, train=True)))
    >>> train_dataset[0]["pixel_values"].shape
    torch.Size([3, 32, 32])
    ```
    """
    _check_on_bad_image(on_bad_image)
    return _ImageBatchTransform(image_transform, on_bad_image, source_split, extra_columns)


def with_image_transform(
    dataset: datasets.Dataset,
    image_transform: Callable[[PIL.Image.Image], torch.Tensor],
    *,
    on_bad_image: str = "error",
    source_split: str | None = None,
    extra_columns: dict[str, np.ndarray] | None = None,
) -> datasets.Dataset:
    """The dataset with `image_transform` applied lazily, ready for a `DataLoader` or the `Trainer`.

    Images stay undecoded (`datasets.Image(decode=False)`, a change of feature only, no copy) until the transform
    decodes them, so an undecodable image is reported with its source row (`on_bad_image="error"`) or dropped from its
    batch and counted (`"skip"`) while training, with no scan beforehand.

    Args:
        dataset (`datasets.Dataset`):
            A split of [`ImageClassificationData.dataset`] (columns `"image"`, `"label"`, `"row_index"`).
        image_transform (`Callable[[PIL.Image.Image], torch.Tensor]`):
            Usually from [`build_transforms`].
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            `"error"` or `"skip"`.
        source_split (`str`, *optional*):
            The split the rows come from, for messages (`data.source_splits[split]`).
        extra_columns (`dict[str, np.ndarray]`, *optional*):
            Per-row arrays indexed by `row_index` to add to each example (see [`make_batch_transform`]).

    Returns:
        `datasets.Dataset` whose rows come out as `{"pixel_values": tensor, "labels": int}`.
    """
    _check_on_bad_image(on_bad_image)
    if "image" not in dataset.column_names:
        raise ValueError(
            f"dataset has no 'image' column; columns are {dataset.column_names}. Load it with "
            "load_image_classification_dataset, which renames the image column to 'image'."
        )
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset.with_transform(
        make_batch_transform(
            image_transform, on_bad_image=on_bad_image, source_split=source_split, extra_columns=extra_columns
        )
    )


# Collator
