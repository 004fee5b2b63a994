# Copyright 2025 The hf_vision_distill Authors.
# SPDX-License-Identifier: Apache-2.0
"""Dataset loading, column detection, image transforms and collators for image classification.

The pieces fit together like this:

```python
>>> from hf_vision_distill.data import (
...     ImageClassificationCollator,
...     build_transforms,
...     drop_undecodable_images,
...     load_image_classification_dataset,
...     with_image_transform,
... )
>>> data = load_image_classification_dataset("data/cifar10-sample")  # train, validation, test: image, label, row_index
>>> data = drop_undecodable_images(data, on_bad_image="skip")  # optional: one scan of every image, cached by datasets
>>> train_dataset = with_image_transform(data.dataset["train"], build_transforms(32, train=True))
>>> collator = ImageClassificationCollator(num_labels=data.num_labels, mixup_alpha=0.8, cutmix_alpha=1.0)
```

Undecodable images are handled in two places. [`with_image_transform`] keeps images as undecoded bytes until the lazy
transform decodes them in the dataloader workers, so a broken file stops training with its source row (the loader's
`row_index` column; `on_bad_image="error"`) or is dropped and counted (`"skip"`) without any scan up front.
[`drop_undecodable_images`] scans every split once (a `Dataset.map`, cached by datasets) to list or remove all bad
rows before training. The loader itself never decodes images, so loading stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "ROW_INDEX_COLUMN",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "build_transforms",
    "convert_image_to_rgb",
    "drop_undecodable_images",
    "find_undecodable_images",
    "load_image_classification_dataset",
    "make_batch_transform",
    "uint8_normalisation",
    "with_image_transform",
]

IMAGE_COLUMN_CANDIDATES = ("image", "img")
# Added by the loader: each row's position in its source split, so errors about a batch can name the rows.
ROW_INDEX_COLUMN = "row_index"
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")

VALIDATION_SPLIT_CANDIDATES = ("validation", "valid", "val")
ON_BAD_IMAGE_CHOICES = ("error", "skip")
CROP_CHOICES = ("auto", "random_resized", "pad", "none")
AUTO_AUGMENT_CHOICES = ("randaugment", "trivialaugment", "autoaugment")
INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
# Below this size (CIFAR, MNIST) a RandomResizedCrop keeps too few pixels; pad-and-crop is the standard recipe there.
PAD_CROP_MAX_IMAGE_SIZE = 64
# How many bad rows an error message lists before it says "and N more".
MAX_REPORTED_ROWS = 10

_INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_STRING_DTYPES = ("string", "large_string", "string_view")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class ImageClassificationData:
    """An image classification dataset with normalised columns and its label mapping.

    Args:
        dataset (`datasets.DatasetDict`):
            Splits `"train"`, `"validation"` (unless disabled) and `"test"` (when the source has one). Every split has
            the columns `"image"` (a `datasets.Image` feature), `"label"` (a `datasets.ClassLabel`) and `"row_index"`
            (the row's position in its source split, for error messages that point back to the source).
        id2label (`dict[int, str]`):
            Class index to class name, from the `ClassLabel` names.
        label2id (`dict[str, int]`):
            Class name to class index.
        source_splits (`dict[str, str]`):
            Each split's source split (a carved validation split's source is the train split).
    """

    dataset: datasets.DatasetDict
    id2label: dict[int, str]
    label2id: dict[str, int]
    source_splits: dict[str, str] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        """The number of classes."""
        return len(self.id2label)


# Loading


def load_image_classification_dataset(
    name_or_path: str,
    *,
    config_name: str | None = None,
    data_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    test_split: str | None = None,
    validation_size: float = 0.1,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> ImageClassificationData:
    """Load an image classification dataset from the Hub or a local folder and normalise it.

    The result always has the columns `"image"`, `"label"` (a `ClassLabel`) and `"row_index"`, and the splits
    `"train"`, `"validation"` (found or carved from train) and `"test"` (when the source has one). No image is decoded
    here; see [`drop_undecodable_images`] to check them.

    Args:
        name_or_path (`str`):
            A Hub dataset id (`"uoft-cs/cifar10"`), a local folder laid out as a Hub dataset repository
            (`"../shared/datasets/cifar10"`), `"imagefolder"` together with `data_dir`, or a local folder of class
            sub-folders (loaded by datasets' imagefolder builder, class names from the folder names).
        config_name (`str`, *optional*):
            The dataset configuration (`name` in `datasets.load_dataset`).
        data_dir (`str`, *optional*):
            The data folder; required with `"imagefolder"`, a sub-folder of the repository otherwise.
        image_column (`str`, *optional*):
            The image column. Detected when `None`: the first of `IMAGE_COLUMN_CANDIDATES` present, else the first
            column whose feature is `datasets.Image`. A string (path) or binary column is cast to `datasets.Image`.
        label_column (`str`, *optional*):
            The label column. Detected when `None`: among `LABEL_COLUMN_CANDIDATES` present a `ClassLabel` column is
            preferred; with none of them present, the only `ClassLabel` column (if exactly one). Integer labels become
            a `ClassLabel` named `"0"`..`"max"` (numeric order); string labels a `ClassLabel` of the sorted strings.
        train_split (`str`, *optional*, defaults to `"train"`):
            The source split used for training.
        validation_split (`str`, *optional*):
            The source split used for validation. When `None`, a split named `"validation"`, `"valid"` or `"val"` is
            used if present, else `validation_size` of train is carved out.
        test_split (`str`, *optional*):
            The source split used for testing. When `None`, `"test"` if present.
        validation_size (`float`, *optional*, defaults to 0.1):
            Fraction of train carved out as validation when there is no validation split, stratified by label and
            seeded (a seeded random split, with a warning, when a class has fewer than 2 rows or a side would get
            fewer rows than there are classes). `0` means no validation split. Ignored when the source has a
            validation split.
        max_train_samples (`int`, *optional*):
            Keep only the first N train rows, after the validation split was carved (for quick runs).
        max_eval_samples (`int`, *optional*):
            Keep only the first N rows of validation and of test.
        seed (`int`, *optional*, defaults to 42):
            Seed of the carved validation split; the same seed gives the same split.
        cache_dir (`str`, *optional*):
            The datasets cache folder.
        revision (`str`, *optional*):
            The Hub revision (branch, tag or commit).
        token (`str` or `bool`, *optional*):
            The Hub token, for private or gated datasets.

    Returns:
        [`ImageClassificationData`]: the splits, `id2label` and `label2id`.

    Raises:
        `ValueError`: the dataset is not found, a split or column is missing, the label column is not a
        classification label, or an argument is out of range. Every message names the bad value and the fix.

    Example:

    ```python
    >>> data = load_image_classification_dataset("data/cifar10-sample", max_train_samples=256)
    >>> data.dataset["train"].column_names, data.num_labels
    (['image', 'label', 'row_index'], 10)
    ```
    """
    _check_loader_arguments(validation_size, max_train_samples, max_eval_samples)
    raw_splits = _load_dataset_dict(
        name_or_path, config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, revision=revision, token=token
    )

    # Pick the source splits; keys are our split names, values the source split names.
    available = list(raw_splits.keys())
    source_splits = {"train": _require_split(train_split, available, "train_split")}
    if validation_split is not None:
        source_splits["validation"] = _require_split(validation_split, available, "validation_split")
    else:
        found = next((name for name in VALIDATION_SPLIT_CANDIDATES if name in raw_splits), None)
        if found is not None and found != train_split:
            source_splits["validation"] = found
    if test_split is not None:
        source_splits["test"] = _require_split(test_split, available, "test_split")
    elif "test" in raw_splits and train_split != "test":
        source_splits["test"] = "test"

    train_features = raw_splits[train_split].features
    image_column = _resolve_image_column(image_column, train_features, train_split)
    label_column = _resolve_label_column(label_column, train_features, train_split)
    if image_column == label_column:
        raise ValueError(
            f"image_column and label_column are both '{image_column}'; pass two different columns "
            f"(columns are {list(train_features)})."
        )

    splits = {}
    for split_name, source_name in source_splits.items():
        splits[split_name] = _select_columns(raw_splits[source_name], source_name, image_column, label_column)
    splits = _encode_labels(splits, source_splits, label_column)
    class_names = list(splits["train"].features["label"].names)

    if "validation" not in splits and validation_size > 0:
        splits["train"], splits["validation"] = _carve_validation_split(splits["train"], validation_size, seed)
        source_splits["validation"] = source_splits["train"]
    if max_train_samples is not None:
        splits["train"] = _take_first(splits["train"], max_train_samples)
    if max_eval_samples is not None:
        for split_name in ("validation", "test"):
            if split_name in splits:
                splits[split_name] = _take_first(splits[split_name], max_eval_samples)

    present = splits["train"].unique("label")
    if len(present) < 2:
        found = f"one class ('{class_names[present[0]]}')" if present else "no rows"
        raise ValueError(
            f"label column '{label_column}' of split '{train_split}' has {found} in the {len(splits['train'])} "
            f"training rows: a classifier needs at least two classes. Check --label_column (columns are "
            f"{list(train_features)}), --train_split, and --max_train_samples (the first rows of a dataset sorted by "
            "label are all one class)."
        )
    ordered = {name: splits[name] for name in ("train", "validation", "test") if name in splits}
    logger.info(
        "Loaded %s: %s, %d classes",
        name_or_path,
        ", ".join(f"{name}={len(split)}" for name, split in ordered.items()),
        len(class_names),
    )
    id2label = dict(enumerate(class_names))
    label2id = {name: index for index, name in id2label.items()}
    return ImageClassificationData(
        dataset=datasets.DatasetDict(ordered),
        id2label=id2label,
        label2id=label2id,
        source_splits={name: source_splits[name] for name in ordered},
    )


def _check_loader_arguments(
    validation_size: float, max_train_samples: int | None, max_eval_samples: int | None
) -> None:
    if not 0 <= validation_size < 1:
        raise ValueError(
            f"validation_size={validation_size} is out of range; pass a fraction in [0, 1), e.g. 0.1, "
            "or 0 for no validation split."
        )
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be a positive number of rows, or None to keep every row.")


def _load_dataset_dict(
    name_or_path: str,
    *,
    config_name: str | None,
    data_dir: str | None,
    cache_dir: str | None,
    revision: str | None,
    token: str | bool | None,
) -> datasets.DatasetDict:
    if name_or_path == "imagefolder" and data_dir is None:
        raise ValueError(
            "name_or_path='imagefolder' needs data_dir=<folder of class sub-folders>; "
            "or pass that folder as name_or_path directly."
        )
    try:
        loaded = datasets.load_dataset(
            name_or_path, name=config_name, data_dir=data_dir, cache_dir=cache_dir, revision=revision, token=token
        )
    except ConnectionError as err:
        # datasets raises ConnectionError, not "not found", when a name is not a local path and the Hub is unreachable.
        raise ValueError(
            f"dataset '{name_or_path}' was not found as a local path, and the Hugging Face Hub could not be "
            f"reached to look it up as a Hub id ({err}). Check the spelling, pass a local folder (a Hub-layout "
            "dataset repository or a folder of class sub-folders), or run with network access (and without "
            "HF_HUB_OFFLINE=1) for Hub ids."
        ) from err
    except FileNotFoundError as err:
        # Also covers datasets' DatasetNotFoundError and DataFilesNotFoundError, both FileNotFoundError subclasses.
        location = f"'{name_or_path}'" + (f" with data_dir='{data_dir}'" if data_dir is not None else "")
        raise ValueError(
            f"dataset {location} was not found as a local path or a Hub dataset id ({err}). Check the spelling, pass "
            "a local folder (a Hub-layout dataset repository or a folder of class sub-folders with images), and note "
            "that Hub ids need network access (private or gated ones also need token=...)."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(
            f"dataset '{name_or_path}' loaded as {type(loaded).__name__}, expected a DatasetDict of splits; "
            "streaming datasets are not supported here."
        )
    return loaded


def _require_split(split: str, available: list[str], argument: str) -> str:
    if split not in available:
        raise ValueError(
            f"split '{split}' not found; available splits are {available}. Pass {argument}=<one of them>."
        )
    return split


def _resolve_image_column(image_column: str | None, features: datasets.Features, split: str) -> str:
    columns = list(features)
    if image_column is not None:
        if image_column not in features:
            raise ValueError(
                f"image column '{image_column}' not found in split '{split}'; columns are {columns}. "
                "Pass image_column=<one of them>."
            )
        return image_column
    for candidate in IMAGE_COLUMN_CANDIDATES:
        if candidate in features:
            return candidate
    for column, feature in features.items():
        if isinstance(feature, datasets.Image):
            return column
    raise ValueError(
        f"no image column found in split '{split}'; columns are {columns} and none is named "
        f"{list(IMAGE_COLUMN_CANDIDATES)} or has a datasets.Image feature. Pass image_column=..."
    )


def _resolve_label_column(label_column: str | None, features: datasets.Features, split: str) -> str:
    columns = list(features)
    if label_column is not None:
        if label_column not in features:
            raise ValueError(
                f"label column '{label_column}' not found in split '{split}'; columns are {columns}. "
                "Pass label_column=<one of them>."
            )
        return label_column
    present = [candidate for candidate in LABEL_COLUMN_CANDIDATES if candidate in features]
    class_label_candidates = [column for column in present if isinstance(features[column], datasets.ClassLabel)]
    if class_label_candidates:
        return class_label_candidates[0]
    if present:
        return present[0]
    class_label_columns = [column for column, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(class_label_columns) == 1:
        return class_label_columns[0]
    raise ValueError(
        f"no label column found in split '{split}'; columns are {columns} and none is named "
        f"{list(LABEL_COLUMN_CANDIDATES)}. Pass label_column=..."
    )


def _select_columns(dataset: datasets.Dataset, split: str, image_column: str, label_column: str) -> datasets.Dataset:
    """Keep only the image and label columns, renamed to "image" and "label"."""
    columns = dataset.column_names
    if image_column not in columns:
        raise ValueError(
            f"image column '{image_column}' not found in split '{split}'; columns are {columns}. "
            "Pass image_column=<one of them>, or choose splits that share their columns."
        )
    if label_column not in columns:
        raise ValueError(
            f"label column '{label_column}' not found in split '{split}'; columns are {columns}. "
            "Pass label_column=<one of them>, or choose splits that share their columns."
        )
    dataset = dataset.remove_columns([column for column in columns if column not in (image_column, label_column)])
    dataset = dataset.rename_columns(
        {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    )
    image_feature = dataset.features["image"]
    if not isinstance(image_feature, datasets.Image):
        dtype = getattr(image_feature, "dtype", None)
        if dtype not in (*_STRING_DTYPES, "binary", "large_binary"):
            raise ValueError(
                f"image column '{image_column}' in split '{split}' has feature {image_feature}, not an image; "
                "pass image_column=<a datasets.Image column>, or cast it first with "
                "dataset.cast_column(column, datasets.Image())."
            )
        # Paths and encoded bytes are what datasets.Image stores anyway, so the cast is lossless.
        dataset = dataset.cast_column("image", datasets.Image())
    # Added before any carving or subsetting: cheap on the source table, and it keeps the source's row numbers.
    return dataset.add_column(ROW_INDEX_COLUMN, list(range(len(dataset))))


def _label_kind(feature: Any) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return "class_label"
    dtype = getattr(feature, "dtype", None) if isinstance(feature, datasets.Value) else None
    if dtype in _INTEGER_DTYPES:
        return "int"
    if dtype in _STRING_DTYPES:
        return "string"
    return "other"


def _encode_labels(
    splits: dict[str, datasets.Dataset], source_splits: dict[str, str], label_column: str
) -> dict[str, datasets.Dataset]:
    """Make "label" a ClassLabel with the same names in every split."""
    features = {name: split.features["label"] for name, split in splits.items()}
    for name, feature in features.items():
        if _label_kind(feature) == "other":
            raise ValueError(
                f"label column '{label_column}' in split '{source_splits[name]}' has feature {feature}; a "
                "classification label must be a ClassLabel, int or string column. Pass label_column=<such a column>, "
                f"or cast it first: dataset.cast_column('{label_column}', datasets.ClassLabel(names=[...]))."
            )

    class_labels = [feature for feature in features.values() if isinstance(feature, datasets.ClassLabel)]
    if class_labels:
        target = class_labels[0]
        for name, feature in features.items():
            if isinstance(feature, datasets.ClassLabel) and feature.names != target.names:
                raise ValueError(
                    f"splits disagree on the class names of label column '{label_column}': "
                    f"{source_splits[name]!r} has {feature.names}, another split has {target.names}. "
                    "Cast them to one ClassLabel with dataset.cast_column('label', datasets.ClassLabel(names=[...]))."
                )
    else:
        kinds = {_label_kind(feature) for feature in features.values()}
        if kinds == {"int"}:
            target = _class_label_from_integers(splits, source_splits, label_column)
        elif kinds == {"string"}:
            values = set()
            for split in splits.values():
                values.update(split.unique("label"))
            if None in values:
                raise ValueError(
                    f"label column '{label_column}' has missing (None) values; drop those rows first, e.g. "
                    "dataset.filter(lambda example: example['label'] is not None)."
                )
            target = datasets.ClassLabel(names=sorted(values))
            logger.warning(
                "Label column '%s' holds strings; encoded as a ClassLabel of the %d sorted names %s.",
                label_column,
                target.num_classes,
                target.names[:MAX_REPORTED_ROWS],
            )
        else:
            raise ValueError(
                f"label column '{label_column}' mixes integer and string values across splits ({features}); cast "
                "every split to one ClassLabel with dataset.cast_column('label', datasets.ClassLabel(names=[...]))."
            )
    return {
        name: split if split.features["label"] == target else split.cast_column("label", target)
        for name, split in splits.items()
    }


def _class_label_from_integers(
    splits: dict[str, datasets.Dataset], source_splits: dict[str, str], label_column: str
) -> datasets.ClassLabel:
    # Not class_encode_column: it sorts the values as strings ("10" before "2") and so renumbers the classes.
    values = set()
    for split in splits.values():
        values.update(split.unique("label"))
    if None in values:
        raise ValueError(
            f"label column '{label_column}' has missing (None) values; drop those rows first, e.g. "
            "dataset.filter(lambda example: example['label'] is not None)."
        )
    if not values:
        raise ValueError(f"label column '{label_column}' is empty in splits {list(source_splits.values())}.")
    if min(values) < 0:
        raise ValueError(
            f"label column '{label_column}' has the negative label {min(values)} (often -1 marks unlabelled rows); "
            "drop those rows first, e.g. dataset.filter(lambda example: example['label'] >= 0)."
        )
    names = [str(index) for index in range(max(values) + 1)]
    logger.warning(
        "Label column '%s' holds integers; encoded as a ClassLabel with the %d names '0'..'%d'. Cast it to "
        "datasets.ClassLabel(names=[...]) beforehand to get readable class names.",
        label_column,
        len(names),
        len(names) - 1,
    )
    return datasets.ClassLabel(names=names)


def _carve_validation_split(
    train: datasets.Dataset, validation_size: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    # scikit-learn's split on the label array, not Dataset.train_test_split(stratify_by_column=...): in datasets 5 the
    # latter reads the labels row by row (about 6 s for CIFAR-10's 50,000 rows). Same idea: seeded, stratified,
    # both sides shuffled.
    from sklearn.model_selection import train_test_split

    num_rows = len(train)
    num_validation = math.ceil(validation_size * num_rows)
    if num_rows - num_validation < 1:
        raise ValueError(
            f"cannot carve validation_size={validation_size} out of a train split of {num_rows} rows; pass "
            "validation_size=0 (no validation split) or a dataset with more rows."
        )
    labels = np.asarray(train.with_format("numpy")["label"][:])
    class_counts = np.unique(labels, return_counts=True)[1]
    num_classes = len(class_counts)
    # A stratified split needs two rows per class and one row per class on each side; tiny datasets would fail
    # inside scikit-learn, so fall back to a seeded random split and say so.
    can_stratify = class_counts.min() >= 2 and min(num_validation, num_rows - num_validation) >= num_classes
    if not can_stratify:
        logger.warning(
            "Cannot stratify a %d-row validation split over %d classes (smallest class has %d rows); using a "
            "seeded random split instead.",
            num_validation,
            num_classes,
            class_counts.min(),
        )
    train_indices, validation_indices = train_test_split(
        np.arange(num_rows),
        test_size=num_validation,
        stratify=labels if can_stratify else None,
        random_state=seed,
    )
    return train.select(train_indices), train.select(validation_indices)


def _take_first(dataset: datasets.Dataset, max_samples: int) -> datasets.Dataset:
    return dataset.select(range(min(max_samples, len(dataset))))


# Undecodable images


def _decode_image(value: Any) -> PIL.Image.Image:
    """Decode a `{"bytes", "path"}` dict (or a path) the way datasets does; images pass through."""
    if isinstance(value, PIL.Image.Image):
        return value
    # datasets' own decoder: same handling of bytes, local and remote paths and EXIF orientation as decode=True.
    return datasets.Image().decode_example(value)


def _describe_image(value: Any) -> str:
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return f"'{path}'" if path else "(embedded bytes)"


def _flag_decodable_images(images: list[Any]) -> dict[str, list[bool]]:
    decodable = []
    for value in images:
        try:
            _decode_image(value)
            decodable.append(True)
        except Exception:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... for malformed files
            decodable.append(False)
    return {"decodable": decodable}


def find_undecodable_images(dataset: datasets.Dataset, num_proc: int | None = None) -> list[int]:
    """Return the row indices whose image cannot be decoded.

    Every image of the `"image"` column is opened and fully loaded with PIL. The scan is a `Dataset.map`, so datasets
    caches its result next to the dataset's cache files and a second call is nearly free.

    Args:
        dataset (`datasets.Dataset`):
            A split with an `"image"` column (a `datasets.Image` feature, decoded or not).
        num_proc (`int`, *optional*):
            Processes used for the scan.

    Returns:
        `list[int]`: indices into `dataset` (as given, including any selection) of the undecodable rows, ascending.
    """
    if "image" not in dataset.column_names:
        raise ValueError(
            f"no 'image' column; columns are {dataset.column_names}. Load the data with "
            "load_image_classification_dataset (which renames the image column) or rename it."
        )
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    flags = undecoded.map(
        _flag_decodable_images,
        batched=True,
        input_columns=["image"],
        remove_columns=undecoded.column_names,
        num_proc=num_proc,
        desc="Checking images",
    )
    decodable = np.asarray(flags.with_format("numpy")["decodable"][:], dtype=bool)
    return np.flatnonzero(~decodable).tolist()


def drop_undecodable_images(
    data: ImageClassificationData,
    on_bad_image: str = "error",
    num_proc: int | None = None,
    splits: list[str] | None = None,
) -> ImageClassificationData:
    """Scan splits once for images that cannot be decoded, and raise or drop them.

    Args:
        data ([`ImageClassificationData`]):
            The loaded dataset.
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            `"error"` raises a `ValueError` listing each split's bad rows (their row indices in the source split, as
            every message here gives them) and files; `"skip"` removes those rows and logs how many per split.
        num_proc (`int`, *optional*):
            Processes used for the scan.
        splits (`list[str]`, *optional*):
            The splits to scan; all by default.

    Returns:
        [`ImageClassificationData`]: `data` itself when every image decodes, else a copy without the bad rows.
    """
    _check_on_bad_image(on_bad_image)
    names = list(data.dataset) if splits is None else [name for name in splits if name in data.dataset]
    bad_rows = {name: find_undecodable_images(data.dataset[name], num_proc=num_proc) for name in names}
    bad_rows = {name: rows for name, rows in bad_rows.items() if rows}
    if not bad_rows:
        return data

    def where(name: str, rows: list[int]) -> str:
        split = data.dataset[name]
        # One read of the bad rows, not of the whole column per row.
        source_rows = list(split.select(rows)[ROW_INDEX_COLUMN]) if ROW_INDEX_COLUMN in split.column_names else rows
        source = data.source_splits.get(name, name)
        return f"split '{name}' rows {source_rows} of source split '{source}'"

    if on_bad_image == "error":
        details = []
        for name, rows in bad_rows.items():
            undecoded = data.dataset[name].cast_column("image", datasets.Image(decode=False))
            shown = rows[:MAX_REPORTED_ROWS]
            files = ", ".join(_describe_image(undecoded[row]["image"]) for row in shown)
            more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
            details.append(f"{where(name, shown)}{more} (files {files})")
        raise ValueError(
            f"found {sum(len(rows) for rows in bad_rows.values())} image(s) that cannot be decoded: "
            f"{'; '.join(details)}. Fix or delete those files, or pass on_bad_image='skip' "
            "(--on_bad_image skip in the recipes) to drop such rows; --check_images scans every split, the "
            "training split too, before training."
        )
    kept = dict(data.dataset)
    for name, rows in bad_rows.items():
        bad = set(rows)
        kept[name] = kept[name].select([index for index in range(len(kept[name])) if index not in bad])
        logger.warning("Dropped %d undecodable image(s): %s.", len(rows), where(name, rows[:10]))
    return dataclasses.replace(data, dataset=datasets.DatasetDict(kept))


def _check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE_CHOICES:
        raise ValueError(f"on_bad_image='{on_bad_image}' is not supported; pass one of {list(ON_BAD_IMAGE_CHOICES)}.")


# Transforms


def convert_image_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to RGB; transparent pixels are composited on white.

    Plain `convert("RGB")` would turn transparent pixels into whatever colour they store (often black) and saturate
    16-bit images, so those two cases are handled first. 32-bit integer and float images ("I", "F") are clipped to
    0..255 by PIL, as their value range is unknown.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (e.g. PNG): map 0..65535 onto 0..255 instead of clipping everything above 255 to white.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if "A" in image.getbands() or "transparency" in image.info:
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


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
        row_outputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.image_transform = image_transform
        self.on_bad_image = on_bad_image
        self.source_split = source_split
        # Per-row arrays indexed by row_index (e.g. a distillation's cached teacher logits), looked up for each
        # batch and carried with the images under their names.
        self.row_outputs = row_outputs or {}
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
        if self.row_outputs:
            if row_indices is None:
                raise ValueError("per-row outputs need the loader's 'row_index' column in the dataset.")
            for name, table in self.row_outputs.items():
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
    row_outputs: dict[str, np.ndarray] | None = None,
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
        row_outputs (`dict[str, np.ndarray]`, *optional*):
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
    return _ImageBatchTransform(image_transform, on_bad_image, source_split, row_outputs)


def with_image_transform(
    dataset: datasets.Dataset,
    image_transform: Callable[[PIL.Image.Image], torch.Tensor],
    *,
    on_bad_image: str = "error",
    source_split: str | None = None,
    row_outputs: dict[str, np.ndarray] | None = None,
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
        row_outputs (`dict[str, np.ndarray]`, *optional*):
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
            image_transform, on_bad_image=on_bad_image, source_split=source_split, row_outputs=row_outputs
        )
    )


# Collator


def uint8_normalisation(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(scale, shift)` as `(1, 3, 1, 1)` columns on `device` such that `images * scale - shift` normalises images in
    the 0-255 range with `mean`/`std` in one step (what `ToDtype(scale=True)` then `Normalize` do)."""
    std = torch.tensor(std, dtype=torch.float32)
    scale = (1 / (255 * std))[None, :, None, None]
    shift = (torch.tensor(mean, dtype=torch.float32) / std)[None, :, None, None]
    return scale.to(device), shift.to(device)


class ImageClassificationCollator:
    """Stack examples into a batch, with optional MixUp / CutMix and label smoothing.

    MixUp and CutMix are torchvision's `v2.MixUp` / `v2.CutMix` (one picked at random per batch when both are on). A
    batch is mixed with probability `mix_prob`. Whenever mixing or label smoothing is on, every batch gets soft targets
    of shape `(batch, num_labels)` that sum to 1 per row, including unmixed batches (one-hot), so the loss sees one
    label format. Soft targets need a loss that accepts probabilities, e.g.
    `torch.nn.functional.cross_entropy(logits, soft_targets)`; transformers' built-in classification loss would treat
    float labels as multi-label (BCE). The collator is a plain class, so it pickles into dataloader workers.

    With `mean` and `std`, examples are uint8 images (`build_transforms(..., normalize=False)`): the workers only stack
    them (a quarter of the bytes of float32 through pinned memory), and `on_device`, which the Trainer
    (`ImageClassificationTrainer`) calls on the batch once it is on the training device, converts, normalises and
    mixes it there.

    Args:
        num_labels (`int`, *optional*):
            Number of classes; required when mixing or label smoothing is on.
        mixup_alpha (`float`, *optional*, defaults to 0.0):
            Beta distribution parameter of MixUp; 0 disables it.
        cutmix_alpha (`float`, *optional*, defaults to 0.0):
            Beta distribution parameter of CutMix; 0 disables it.
        mix_prob (`float`, *optional*, defaults to 1.0):
            Probability that a batch is mixed.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Soft targets become `targets * (1 - label_smoothing) + label_smoothing / num_labels`.
        mean, std (`Sequence[float]`, *optional*):
            The normalisation of uint8 examples, applied by `on_device`; without them examples arrive normalised.
    """

    def __init__(
        self,
        num_labels: int | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std (uint8 examples normalised on the device), or neither.")
        self.mean, self.std = mean, std
        # (1, 3, 1, 1) scale and shift per device, built on first use there.
        self._normalisation: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(
                f"mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be >= 0 (0 disables each)."
            )
        if not 0 <= mix_prob <= 1:
            raise ValueError(f"mix_prob={mix_prob} is a probability; pass a value in [0, 1].")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1), e.g. 0.1 (0 disables it).")
        self.soft_targets = mixup_alpha > 0 or cutmix_alpha > 0 or label_smoothing > 0
        if self.soft_targets and (num_labels is None or num_labels < 2):
            raise ValueError(
                f"num_labels={num_labels}: mixup, cutmix and label smoothing need the number of classes (>= 2); "
                "pass num_labels=data.num_labels."
            )
        self.num_labels = num_labels
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.mix_prob = mix_prob
        self.label_smoothing = label_smoothing
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_labels))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_labels))
        self.mix = None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Collate examples with `"pixel_values"` (CHW tensors) and `"labels"` (ints).

        Returns:
            `dict[str, torch.Tensor]`: `"pixel_values"` of shape `(batch, channels, height, width)` and `"labels"` of
            shape `(batch,)` (long) or, with soft targets, `(batch, num_labels)` (float).
        """
        if not examples:
            raise ValueError(
                "cannot collate an empty batch; every image in it may have been skipped as undecodable. Remove bad "
                "rows beforehand with drop_undecodable_images(data, on_bad_image='skip')."
            )
        if "pixel_values" not in examples[0]:
            raise ValueError(
                f"examples have no 'pixel_values'; keys are {list(examples[0])}. Apply "
                "dataset.with_transform(make_batch_transform(...)) first."
            )
        batch = {"pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples])}
        # Per-example arrays the transform carried (its `row_outputs`) are stacked as they are; the row index was
        # for the transform's messages.
        for name in examples[0].keys() - {"pixel_values", "labels", ROW_INDEX_COLUMN}:
            batch[name] = torch.stack([torch.as_tensor(example[name], dtype=torch.float32) for example in examples])
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long)
        # uint8 images are mixed only once normalised, on the device.
        return batch if self.mean is not None else self.finish(batch)

    def __getstate__(self) -> dict:
        # Sent to dataloader workers without the device constants (CUDA tensors must not reach a worker).
        return {**self.__dict__, "_normalisation": {}}

    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The device half of a uint8 batch (see the class): float, normalised, then `finish`. Batches that arrive
        normalised pass through unchanged."""
        pixel_values = batch.get("pixel_values")
        if self.mean is None or pixel_values is None or pixel_values.dtype != torch.uint8:
            return batch
        if pixel_values.device not in self._normalisation:
            self._normalisation[pixel_values.device] = uint8_normalisation(self.mean, self.std, pixel_values.device)
        scale, shift = self._normalisation[pixel_values.device]
        return self.finish({**batch, "pixel_values": pixel_values.float() * scale - shift})

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mixing and soft targets for a stacked batch (`pixel_values`, class-index `labels`, per-example arrays
        such as cached teacher logits), on whatever device it is: the step shared with the tensor pipeline's
        `DeviceImageTransform`."""
        carried = sorted(batch.keys() - {"pixel_values", "labels"})
        if carried and self.mix is not None:
            raise ValueError(
                f"the batch carries per-example values ({carried}, e.g. cached teacher outputs) that belong to the "
                "unmixed images; turn mixup/cutmix off, or distill from a live teacher."
            )
        if "labels" not in batch or not self.soft_targets:
            return batch
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        # Checked where it costs nothing; on an accelerator the comparison would wait for the device every batch.
        if labels.device.type == "cpu" and (labels.min() < 0 or labels.max() >= self.num_labels):
            raise ValueError(
                f"labels {labels.tolist()} fall outside [0, {self.num_labels}); pass the dataset's num_labels "
                "(data.num_labels) to ImageClassificationCollator."
            )
        if self.mix is not None and torch.rand(()) < self.mix_prob:
            pixel_values, targets = self.mix(pixel_values, labels)
        else:
            targets = torch.nn.functional.one_hot(labels, self.num_labels).to(pixel_values.dtype)
        if self.label_smoothing > 0:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / self.num_labels
        return {**batch, "pixel_values": pixel_values, "labels": targets}
