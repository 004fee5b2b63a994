"""Loading an image-classification dataset: the Hub, local folders and imagefolders; columns, labels and splits
found or carved, rows numbered by their source position (`row_index`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

logger = logging.getLogger(__name__)


IMAGE_COLUMN_CANDIDATES = ("image", "img")
# Added by the loader: each row's position in its source split, so errors about a batch can name the rows.
ROW_INDEX_COLUMN = "row_index"
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")
VALIDATION_SPLIT_CANDIDATES = ("validation", "valid", "val")
# How many bad rows an error message lists before it says "and N more".
MAX_REPORTED_ROWS = 10

_INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_STRING_DTYPES = ("string", "large_string", "string_view")


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
