"""Tests for hf_vision_distill.data: loading, label encoding, bad images, transforms and the collator."""

import logging
import pickle
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hf_vision_distill.data import (
    ImageClassificationCollator,
    ImageClassificationData,
    build_transforms,
    convert_image_to_rgb,
    drop_undecodable_images,
    find_undecodable_images,
    load_image_classification_dataset,
    make_batch_transform,
    with_image_transform,
)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Identity normalisation, so tensors hold the [0, 1] pixel values and colours can be checked exactly.
NO_NORMALIZATION = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


# Helpers that build small datasets on disk


def solid_image(index: int, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A one-colour image whose colour encodes `index`, so rows can be told apart after decoding."""
    color = (index * 7 % 256, index * 13 % 256, index * 29 % 256)
    return Image.new("RGB", size, color).convert(mode)


def make_image_folder(root: Path, images: dict[str, list[Image.Image]]) -> Path:
    for class_name, class_images in images.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(class_images):
            image.save(root / class_name / f"{index}.png")
    return root


def write_parquet_dataset(root: Path, splits: dict[str, dict[str, list]], features: datasets.Features) -> Path:
    """Write `<root>/<split>.parquet` files, which datasets loads as a local repository with those splits."""
    root.mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        datasets.Dataset.from_dict(columns, features=features).to_parquet(root / f"{split}.parquet")
    return root


def labels_of(dataset: datasets.Dataset) -> list[int]:
    return dataset.with_format("numpy")["label"][:].tolist()


def colors_of(dataset: datasets.Dataset) -> list[tuple[int, ...]]:
    return [image.convert("RGB").getpixel((0, 0)) for image in dataset["image"]]


# Loading real datasets


def test_load_cifar10_detects_columns_and_carves_stratified_validation(cifar10_path):
    data = load_image_classification_dataset(str(cifar10_path), max_train_samples=64, max_eval_samples=32)

    assert isinstance(data, ImageClassificationData)
    assert list(data.dataset) == ["train", "validation", "test"]
    assert [len(data.dataset[split]) for split in data.dataset] == [64, 32, 32]
    for split in data.dataset.values():
        assert split.column_names == ["image", "label", "row_index"]
        assert isinstance(split.features["image"], datasets.Image)
        assert split.features["label"].names == CIFAR10_NAMES
    assert data.num_labels == 10
    assert data.id2label == dict(enumerate(CIFAR10_NAMES))
    assert data.label2id["truck"] == 9
    assert data.dataset["train"][0]["image"].size == (32, 32)

    # Without truncation the carved validation split is exactly 10% of each class (CIFAR-10 train has 5,000 a class).
    full = load_image_classification_dataset(str(cifar10_path))
    assert [len(full.dataset[split]) for split in full.dataset] == [45_000, 5_000, 10_000]
    assert Counter(labels_of(full.dataset["validation"])) == dict.fromkeys(range(10), 500)


def test_load_fashion_mnist_grayscale_becomes_three_channels(fashion_mnist_path):
    data = load_image_classification_dataset(str(fashion_mnist_path), max_train_samples=16, max_eval_samples=8)

    assert list(data.dataset) == ["train", "validation", "test"]
    assert data.num_labels == 10
    assert data.id2label[9] == "Ankle boot"
    image = data.dataset["train"][0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    transform = build_transforms(28, train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pixel_values = transform(image)
    assert pixel_values.shape == (3, 28, 28) and pixel_values.dtype == torch.float32
    # Gray replicated into RGB: with equal normalisation per channel, the three channels are identical.
    torch.testing.assert_close(pixel_values[0], pixel_values[1])
    torch.testing.assert_close(pixel_values[0], pixel_values[2])


def test_shipped_cifar10_sample(cifar10_sample_path):
    data = load_image_classification_dataset(str(cifar10_sample_path))

    assert [len(data.dataset[split]) for split in ("train", "validation", "test")] == [4500, 500, 1000]
    assert data.num_labels == 10 and list(data.label2id) == CIFAR10_NAMES
    # Stratified: each class keeps its share of the 5,000 rows (10%, rounded) in validation.
    train_counts = Counter(labels_of(data.dataset["train"]))
    validation_counts = Counter(labels_of(data.dataset["validation"]))
    for label in range(10):
        total = train_counts[label] + validation_counts[label]
        assert abs(validation_counts[label] - total / 10) <= 1
    assert (cifar10_sample_path / "README.md").read_text().count("Krizhevsky") == 1


def test_seeded_validation_split_is_deterministic(cifar10_sample_path):
    first = load_image_classification_dataset(str(cifar10_sample_path), seed=0)
    second = load_image_classification_dataset(str(cifar10_sample_path), seed=0)
    other_seed = load_image_classification_dataset(str(cifar10_sample_path), seed=1)

    def image_bytes(dataset: datasets.Dataset) -> list[bytes]:
        undecoded = dataset.select(range(20)).cast_column("image", datasets.Image(decode=False))
        return [value["bytes"] for value in undecoded["image"]]

    assert image_bytes(first.dataset["validation"]) == image_bytes(second.dataset["validation"])
    assert labels_of(first.dataset["validation"]) == labels_of(second.dataset["validation"])
    assert image_bytes(first.dataset["validation"]) != image_bytes(other_seed.dataset["validation"])


def test_validation_size_zero_and_existing_validation_split(tmp_path, cifar10_sample_path):
    data = load_image_classification_dataset(str(cifar10_sample_path), validation_size=0, max_train_samples=10)
    assert list(data.dataset) == ["train", "test"]

    # A split named "valid" is used as the validation split instead of carving one.
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    splits = {
        split: {"image": [solid_image(index) for index in range(4)], "label": [0, 1, 0, 1]}
        for split in ("train", "valid")
    }
    root = write_parquet_dataset(tmp_path / "with_valid", splits, features)
    data = load_image_classification_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    assert list(data.dataset) == ["train", "validation"]
    assert [len(split) for split in data.dataset.values()] == [4, 4]


# Image folders and RGB conversion


@pytest.mark.parametrize("use_imagefolder_name", [True, False])
def test_image_folder_of_mixed_modes_gives_rgb_tensors(tmp_path, use_imagefolder_name):
    transparent = Image.new("RGBA", (9, 7), (0, 0, 255, 0))
    palette = solid_image(3, "P")
    images = {
        "gray": [solid_image(index, "L") for index in range(3)],
        "palette": [palette, solid_image(4, "P"), solid_image(5, "P")],
        "rgb": [solid_image(index) for index in range(3)],
        "rgba": [transparent, solid_image(1, "RGBA"), solid_image(2, "RGBA")],
    }
    folder = make_image_folder(tmp_path / "images", images)
    if use_imagefolder_name:
        data = load_image_classification_dataset(
            "imagefolder", data_dir=str(folder), validation_size=0, cache_dir=str(tmp_path / "cache")
        )
    else:
        data = load_image_classification_dataset(str(folder), validation_size=0, cache_dir=str(tmp_path / "cache"))

    assert data.id2label == {0: "gray", 1: "palette", 2: "rgb", 3: "rgba"}
    train = data.dataset["train"]
    assert len(train) == 12 and train.column_names == ["image", "label", "row_index"]
    assert {image.mode for image in train["image"]} == {"L", "P", "RGB", "RGBA"}

    transform = build_transforms((24, 20), train=False, **NO_NORMALIZATION)
    for example in train:
        pixel_values = transform(example["image"])
        assert pixel_values.shape == (3, 24, 20)
    # A fully transparent pixel is composited on white, not left as its stored (blue) colour.
    white = transform(transparent)
    torch.testing.assert_close(white, torch.ones(3, 24, 20))


def test_convert_image_to_rgb_handles_sixteen_bit_cmyk_and_gray_alpha():
    sixteen_bit = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert sixteen_bit.mode == "I;16"
    # 32768 / 65535 is mid-gray; a plain convert("RGB") would clip it to white.
    assert convert_image_to_rgb(sixteen_bit).getpixel((0, 0)) == (128, 128, 128)
    assert convert_image_to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert convert_image_to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert convert_image_to_rgb(Image.new("LA", (4, 4), (0, 255))).getpixel((0, 0)) == (0, 0, 0)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    assert convert_image_to_rgb(rgb) is rgb


def test_carved_validation_split_is_disjoint_and_stratified(tmp_path):
    # Every image has its own colour, so train and validation can be compared by content.
    folder = make_image_folder(
        tmp_path / "images",
        {
            name: [solid_image(10 * class_index + index) for index in range(10)]
            for class_index, name in enumerate("abcd")
        },
    )
    data = load_image_classification_dataset(str(folder), validation_size=0.2, cache_dir=str(tmp_path / "cache"))

    train_colors, validation_colors = colors_of(data.dataset["train"]), colors_of(data.dataset["validation"])
    assert len(train_colors) == 32 and len(validation_colors) == 8
    assert set(train_colors).isdisjoint(validation_colors)
    assert len(set(train_colors) | set(validation_colors)) == 40
    assert Counter(labels_of(data.dataset["validation"])) == dict.fromkeys(range(4), 2)


# Columns and labels


@pytest.fixture
def custom_columns_dataset(tmp_path) -> Path:
    """Parquet splits with columns picture (Image), category (strings) and an extra column."""
    features = datasets.Features(
        {"picture": datasets.Image(), "category": datasets.Value("string"), "extra": datasets.Value("int64")}
    )
    categories = ["zebra", "ant", "moose", "ant", "zebra", "moose"] * 2
    splits = {
        "train": {
            "picture": [solid_image(index) for index in range(12)],
            "category": categories,
            "extra": list(range(12)),
        },
        "test": {"picture": [solid_image(index) for index in range(3)], "category": ["moose", "ant", "zebra"]},
    }
    splits["test"]["extra"] = [0, 1, 2]
    return write_parquet_dataset(tmp_path / "custom", splits, features)


def test_explicit_columns_and_string_labels(custom_columns_dataset, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_vision_distill.data"):
        data = load_image_classification_dataset(
            str(custom_columns_dataset),
            image_column="picture",
            label_column="category",
            validation_size=0,
            cache_dir=str(tmp_path / "cache"),
        )

    assert "holds strings" in caplog.text
    assert data.id2label == {0: "ant", 1: "moose", 2: "zebra"}
    for split in data.dataset.values():
        assert split.column_names == ["image", "label", "row_index"]
        assert split.features["label"].names == ["ant", "moose", "zebra"]
    assert [data.id2label[label] for label in labels_of(data.dataset["train"])][:6] == [
        "zebra",
        "ant",
        "moose",
        "ant",
        "zebra",
        "moose",
    ]
    assert [data.id2label[label] for label in labels_of(data.dataset["test"])] == ["moose", "ant", "zebra"]


def test_missing_columns_name_the_columns_and_the_fix(custom_columns_dataset, tmp_path):
    cache_dir = str(tmp_path / "cache")
    # The image column is found by its datasets.Image feature, but nothing looks like a label.
    with pytest.raises(ValueError, match="no label column found") as error:
        load_image_classification_dataset(str(custom_columns_dataset), cache_dir=cache_dir)
    assert "['picture', 'category', 'extra']" in str(error.value) and "label_column=" in str(error.value)

    with pytest.raises(ValueError) as error:
        load_image_classification_dataset(
            str(custom_columns_dataset), image_column="foo", label_column="category", cache_dir=cache_dir
        )
    message = str(error.value)
    assert "image column 'foo' not found" in message
    assert "['picture', 'category', 'extra']" in message and "image_column=" in message

    with pytest.raises(ValueError) as error:
        load_image_classification_dataset(str(custom_columns_dataset), label_column="bar", cache_dir=cache_dir)
    assert "label column 'bar' not found" in str(error.value) and "label_column=" in str(error.value)

    with pytest.raises(ValueError, match="not an image") as error:
        load_image_classification_dataset(
            str(custom_columns_dataset), image_column="extra", label_column="category", cache_dir=cache_dir
        )
    assert "cast_column" in str(error.value)


def test_label_detection_prefers_class_label_and_casts_path_columns(tmp_path):
    paths = []
    for index in range(4):
        paths.append(str(tmp_path / f"{index}.png"))
        solid_image(index).save(paths[-1])
    features = datasets.Features(
        {
            "image": datasets.Value("string"),  # file paths, cast to datasets.Image by the loader
            "labels": datasets.Value("int64"),
            "fine_label": datasets.ClassLabel(names=["x", "y"]),
        }
    )
    splits = {"train": {"image": paths, "labels": [5, 6, 7, 8], "fine_label": [1, 0, 1, 0]}}
    root = write_parquet_dataset(tmp_path / "paths", splits, features)
    data = load_image_classification_dataset(str(root), validation_size=0, cache_dir=str(tmp_path / "cache"))

    # "labels" comes first among the candidates, but the ClassLabel column "fine_label" wins.
    assert data.id2label == {0: "x", 1: "y"}
    assert labels_of(data.dataset["train"]) == [1, 0, 1, 0]
    assert isinstance(data.dataset["train"].features["image"], datasets.Image)
    assert colors_of(data.dataset["train"]) == [solid_image(index).getpixel((0, 0)) for index in range(4)]


def test_integer_labels_keep_numeric_order(tmp_path, caplog):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    train_labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2]
    splits = {
        "train": {"image": [solid_image(index) for index in range(12)], "label": train_labels},
        # The test split alone holds class 11, so the names must come from every split.
        "test": {"image": [solid_image(index) for index in range(2)], "label": [11, 10]},
    }
    root = write_parquet_dataset(tmp_path / "ints", splits, features)
    with caplog.at_level(logging.WARNING, logger="hf_vision_distill.data"):
        data = load_image_classification_dataset(str(root), validation_size=0, cache_dir=str(tmp_path / "cache"))

    assert "holds integers" in caplog.text
    assert data.num_labels == 12
    assert list(data.id2label.values()) == [str(index) for index in range(12)]
    assert data.id2label[10] == "10" and data.id2label[2] == "2"
    assert labels_of(data.dataset["train"]) == train_labels
    assert labels_of(data.dataset["test"]) == [11, 10]


def test_label_column_that_cannot_be_a_class_label(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")})
    splits = {"train": {"image": [solid_image(index) for index in range(4)], "label": [0.5, 1.5, 0.5, 2.0]}}
    root = write_parquet_dataset(tmp_path / "floats", splits, features)
    with pytest.raises(ValueError) as error:
        load_image_classification_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    message = str(error.value)
    assert "float32" in message and "label column 'label'" in message
    assert "ClassLabel, int or string" in message and "cast_column('label', datasets.ClassLabel(names=" in message

    negative = write_parquet_dataset(
        tmp_path / "negative",
        {"train": {"image": [solid_image(index) for index in range(3)], "label": [0, -1, 1]}},
        datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    with pytest.raises(ValueError, match="negative label -1"):
        load_image_classification_dataset(str(negative), cache_dir=str(tmp_path / "cache"))


# Errors for missing datasets, splits and bad arguments


def test_missing_local_path_and_unreachable_hub_id(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="was not found as a local path or a Hub dataset id") as error:
        load_image_classification_dataset(str(tmp_path / "no_such_folder"))
    assert isinstance(error.value.__cause__, FileNotFoundError)
    assert "local folder" in str(error.value) and "network" in str(error.value)

    # Offline mode makes datasets fail at once instead of retrying the unreachable Hub for ~25 s.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="could not be reached") as error:
        load_image_classification_dataset("no-such-user/no-such-dataset")
    assert isinstance(error.value.__cause__, ConnectionError)
    assert "'no-such-user/no-such-dataset'" in str(error.value) and "Check the spelling" in str(error.value)

    with pytest.raises(ValueError, match="needs data_dir="):
        load_image_classification_dataset("imagefolder")


def test_missing_splits_list_the_available_ones(cifar10_sample_path):
    with pytest.raises(ValueError, match=r"split 'training' not found; available splits are \['train', 'test'\]"):
        load_image_classification_dataset(str(cifar10_sample_path), train_split="training")
    with pytest.raises(ValueError, match=r"split 'dev' not found.*validation_split="):
        load_image_classification_dataset(str(cifar10_sample_path), validation_split="dev")
    with pytest.raises(ValueError, match=r"split 'eval' not found.*test_split="):
        load_image_classification_dataset(str(cifar10_sample_path), test_split="eval")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"validation_size": 1.0}, "validation_size=1.0"),
        ({"validation_size": -0.1}, "validation_size=-0.1"),
        ({"max_train_samples": 0}, "max_train_samples=0"),
        ({"max_eval_samples": -5}, "max_eval_samples=-5"),
    ],
)
def test_out_of_range_loader_arguments(cifar10_sample_path, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        load_image_classification_dataset(str(cifar10_sample_path), **kwargs)


# Undecodable images


@pytest.fixture
def folder_with_corrupt_image(tmp_path) -> ImageClassificationData:
    folder = make_image_folder(
        tmp_path / "images", {"cat": [solid_image(index) for index in range(3)], "dog": [solid_image(7)]}
    )
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really a png")
    return load_image_classification_dataset(str(folder), validation_size=0, cache_dir=str(tmp_path / "cache"))


def broken_row(data: ImageClassificationData) -> int:
    paths = data.dataset["train"].cast_column("image", datasets.Image(decode=False))["image"]
    return next(index for index, value in enumerate(paths) if value["path"].endswith("broken.png"))


def test_corrupt_image_is_reported_with_its_row(folder_with_corrupt_image, caplog):
    data = folder_with_corrupt_image
    row = broken_row(data)
    assert find_undecodable_images(data.dataset["train"]) == [row]

    with pytest.raises(ValueError) as error:
        drop_undecodable_images(data)
    message = str(error.value)
    assert f"split 'train' rows [{row}]" in message and "broken.png" in message
    assert "on_bad_image='skip'" in message and "--on_bad_image skip" in message

    with caplog.at_level(logging.WARNING, logger="hf_vision_distill.data"):
        cleaned = drop_undecodable_images(data, on_bad_image="skip")
    assert "Dropped 1 undecodable image(s): split 'train' rows" in caplog.text
    assert len(cleaned.dataset["train"]) == len(data.dataset["train"]) - 1 == 4
    assert find_undecodable_images(cleaned.dataset["train"]) == []
    assert all(image.size == (12, 10) for image in cleaned.dataset["train"]["image"])
    assert cleaned.id2label == data.id2label and cleaned.source_splits == data.source_splits == {"train": "train"}
    # Clean data comes back unchanged.
    assert drop_undecodable_images(cleaned) is cleaned

    with pytest.raises(ValueError, match="on_bad_image='ignore' is not supported"):
        drop_undecodable_images(data, on_bad_image="ignore")


def test_batch_transform_raises_or_skips_undecodable_images(folder_with_corrupt_image, caplog):
    data = folder_with_corrupt_image
    undecoded = data.dataset["train"].cast_column("image", datasets.Image(decode=False))
    transform = build_transforms(8, train=False)

    with pytest.raises(ValueError) as error:
        undecoded.with_transform(make_batch_transform(transform))[:]
    assert "broken.png" in str(error.value) and "on_bad_image='skip'" in str(error.value)

    batch_transform = make_batch_transform(transform, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="hf_vision_distill.data"):
        batch = undecoded.with_transform(batch_transform)[:]
    assert len(batch["pixel_values"]) == len(batch["labels"]) == 4
    assert all(pixel_values.shape == (3, 8, 8) for pixel_values in batch["pixel_values"])
    assert batch_transform.num_skipped == 1 and "Skipped 1 undecodable image(s)" in caplog.text
    # The kept labels still line up with their images: one dog (label 1) survives, next to three cats.
    assert sorted(batch["labels"]) == [0, 0, 0, 1]


def test_with_image_transform_names_the_row_and_skips_through_a_dataloader(folder_with_corrupt_image, caplog):
    data = folder_with_corrupt_image
    row = broken_row(data)
    transform = build_transforms(8, train=False)
    prepared = with_image_transform(data.dataset["train"], transform)
    assert prepared[0]["pixel_values"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=rf"image at row {row}, file '.*broken.png'.*on_bad_image='skip'"):
        prepared[row]

    skipping = with_image_transform(data.dataset["train"], transform, on_bad_image="skip")
    # Batches of 3 over 5 rows with one bad image: every batch keeps at least one image.
    loader = DataLoader(skipping, batch_size=3, collate_fn=ImageClassificationCollator())
    with caplog.at_level(logging.WARNING, logger="hf_vision_distill.data"):
        labels = torch.cat([batch["labels"] for batch in loader])
    assert sorted(labels.tolist()) == [0, 0, 0, 1]
    assert f"row {row}" in caplog.text
    with pytest.raises(ValueError, match="has no 'image' column"):
        with_image_transform(data.dataset["train"].rename_column("image", "picture"), transform)


# Transforms


@pytest.mark.parametrize(
    ("image_size", "kwargs"),
    [
        (32, {}),  # auto -> pad crop
        (80, {}),  # auto -> random resized crop
        ((40, 24), {"crop": "random_resized", "interpolation": "bicubic"}),
        (32, {"crop": "none", "color_jitter": 0.4, "random_erasing": 1.0}),
        (32, {"auto_augment": "randaugment"}),
        (32, {"auto_augment": "trivialaugment", "interpolation": "nearest"}),
        (32, {"auto_augment": "autoaugment"}),
    ],
)
def test_train_transforms_shape_and_randomness(image_size, kwargs):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 37, 3), dtype=np.uint8))
    transform = build_transforms(image_size, train=True, **kwargs)
    expected_shape = (3, image_size, image_size) if isinstance(image_size, int) else (3, *image_size)

    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    repeated = transform(image)
    outputs = []
    for seed in range(1, 4):
        torch.manual_seed(seed)
        outputs.append(transform(image))

    assert first.shape == expected_shape and first.dtype == torch.float32
    torch.testing.assert_close(first, repeated)
    assert any(not torch.equal(first, output) for output in outputs)


def test_train_transform_crop_choices_are_applied():
    assert "RandomCrop" in repr(build_transforms(32, train=True))
    assert "padding_mode=reflect" in repr(build_transforms(32, train=True))
    assert "RandomResizedCrop" in repr(build_transforms(96, train=True))
    assert "RandomCrop" not in repr(build_transforms(32, train=True, crop="none", horizontal_flip=False))
    assert "RandomHorizontalFlip" not in repr(build_transforms(32, train=True, horizontal_flip=False))
    assert "RandomErasing" in repr(build_transforms(32, train=True, random_erasing=0.25))
    # Augmentation options never leak into evaluation.
    assert "Random" not in repr(build_transforms(32, train=False, random_erasing=0.25, auto_augment="randaugment"))


def test_eval_transform_is_deterministic_resize_and_normalize():
    image = Image.new("RGB", (50, 30), (255, 0, 128))
    transform = build_transforms((20, 16), train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pixel_values = transform(image)
    assert pixel_values.shape == (3, 20, 16)
    torch.testing.assert_close(pixel_values, transform(image))
    # (x - 0.5) / 0.5 maps 255 -> 1, 0 -> -1 and 128 -> 0.0039.
    torch.testing.assert_close(pixel_values[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"interpolation": "lanczos"}, "interpolation='lanczos'"),
        ({"crop": "center"}, "crop='center'"),
        ({"auto_augment": "augmix"}, "auto_augment='augmix'"),
        ({"color_jitter": -0.1}, "color_jitter=-0.1"),
        ({"random_erasing": 1.5}, "random_erasing=1.5"),
        ({"mean": (0.5,), "std": (0.5,)}, "3 values each"),
    ],
)
def test_transform_arguments_are_validated(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        build_transforms(32, train=True, **kwargs)
    with pytest.raises(ValueError, match=r"image_size=\(0, 32\)"):
        build_transforms((0, 32), train=False)


# Collator


def make_examples(batch_size: int = 6, num_labels: int = 5) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {"pixel_values": torch.rand(3, 16, 16, generator=generator), "labels": index % num_labels}
        for index in range(batch_size)
    ]


def test_collator_stacks_hard_labels():
    examples = make_examples()
    batch = ImageClassificationCollator()(examples)
    assert batch["pixel_values"].shape == (6, 3, 16, 16)
    torch.testing.assert_close(batch["pixel_values"][2], examples[2]["pixel_values"])
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2, 3, 4, 0]
    assert "labels" not in ImageClassificationCollator()([{"pixel_values": torch.zeros(3, 2, 2)}])


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_collator_mixes_into_soft_labels(mixup_alpha, cutmix_alpha):
    examples = make_examples()
    collator = ImageClassificationCollator(num_labels=5, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    torch.manual_seed(0)
    batch = collator(examples)

    stacked = torch.stack([example["pixel_values"] for example in examples])
    assert batch["pixel_values"].shape == stacked.shape
    assert not torch.equal(batch["pixel_values"], stacked)
    assert batch["labels"].shape == (6, 5) and batch["labels"].dtype == torch.float32
    torch.testing.assert_close(batch["labels"].sum(dim=1), torch.ones(6))
    # Each row mixes its own class with one other, so at most two classes carry weight.
    assert ((batch["labels"] > 0).sum(dim=1) <= 2).all()
    assert (batch["labels"][torch.arange(6), torch.tensor([0, 1, 2, 3, 4, 0])] > 0).all()


def test_collator_label_smoothing_and_mix_probability():
    examples = make_examples()
    smoothed = ImageClassificationCollator(num_labels=5, label_smoothing=0.1)(examples)["labels"]
    assert smoothed.shape == (6, 5)
    torch.testing.assert_close(smoothed.sum(dim=1), torch.ones(6))
    assert smoothed[0].tolist() == pytest.approx([0.92, 0.02, 0.02, 0.02, 0.02])

    never_mixed = ImageClassificationCollator(num_labels=5, mixup_alpha=1.0, mix_prob=0.0)(examples)
    torch.testing.assert_close(
        never_mixed["pixel_values"], torch.stack([example["pixel_values"] for example in examples])
    )
    torch.testing.assert_close(
        never_mixed["labels"], torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4, 0]), 5).float()
    )


def test_collator_validates_arguments_and_labels():
    with pytest.raises(ValueError, match="num_labels=None.*pass num_labels=data.num_labels"):
        ImageClassificationCollator(mixup_alpha=0.8)
    with pytest.raises(ValueError, match="mix_prob=1.5"):
        ImageClassificationCollator(num_labels=5, cutmix_alpha=1.0, mix_prob=1.5)
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        ImageClassificationCollator(num_labels=5, label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        ImageClassificationCollator(num_labels=3, mixup_alpha=0.5)(make_examples(num_labels=5))
    with pytest.raises(ValueError, match="empty batch"):
        ImageClassificationCollator()([])


# End to end: with_transform + DataLoader workers


def test_with_transform_and_dataloader_workers(cifar10_sample_path):
    data = load_image_classification_dataset(str(cifar10_sample_path), max_train_samples=48, max_eval_samples=8)
    batch_transform = make_batch_transform(build_transforms(32, train=True, auto_augment="trivialaugment"))
    collator = ImageClassificationCollator(num_labels=data.num_labels, mixup_alpha=0.2, cutmix_alpha=1.0)
    # Workers may be spawned rather than forked (macOS, Windows), which pickles both callables.
    batch_transform, collator = pickle.loads(pickle.dumps((batch_transform, collator)))

    train_dataset = data.dataset["train"].with_transform(batch_transform)
    example = train_dataset[0]
    assert example["pixel_values"].shape == (3, 32, 32) and example["labels"] == labels_of(data.dataset["train"])[0]

    loader = torch.utils.data.DataLoader(train_dataset, batch_size=16, num_workers=2, collate_fn=collator)
    batches = list(loader)
    assert len(batches) == 3
    for batch in batches:
        assert batch["pixel_values"].shape == (16, 3, 32, 32)
        assert batch["labels"].shape == (16, 10)
        torch.testing.assert_close(batch["labels"].sum(dim=1), torch.ones(16))

    eval_dataset = data.dataset["test"].with_transform(make_batch_transform(build_transforms(32, train=False)))
    eval_loader = torch.utils.data.DataLoader(eval_dataset, batch_size=8, collate_fn=ImageClassificationCollator())
    eval_batch = next(iter(eval_loader))
    assert eval_batch["labels"].tolist() == labels_of(data.dataset["test"])


def test_uint8_batches_are_normalised_and_mixed_on_the_device(cifar10_sample_path):
    split = load_image_classification_dataset(str(cifar10_sample_path), max_eval_samples=8).dataset["validation"]
    mean, std = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)
    as_float = with_image_transform(split, build_transforms(32, train=False, mean=mean, std=std))
    as_uint8 = with_image_transform(split, build_transforms(32, train=False, mean=mean, std=std, normalize=False))
    assert as_uint8[0]["pixel_values"].dtype == torch.uint8
    expected = ImageClassificationCollator()([as_float[index] for index in range(8)])
    collator = ImageClassificationCollator(mean=mean, std=std)
    batch = collator([as_uint8[index] for index in range(8)])
    assert batch["pixel_values"].dtype == torch.uint8  # what the workers send
    finished = collator.on_device(batch)
    torch.testing.assert_close(finished["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)
    assert torch.equal(finished["labels"], expected["labels"])
    # Pickled into workers without the device constants it built.
    assert pickle.loads(pickle.dumps(collator))._normalisation == {}

    mixing = ImageClassificationCollator(num_labels=10, mixup_alpha=1.0, mean=mean, std=std)
    unmixed = mixing([as_uint8[index] for index in range(8)])
    assert unmixed["labels"].dtype == torch.long  # mixed only once normalised
    mixed = mixing.on_device(unmixed)
    assert mixed["labels"].shape == (8, 10) and mixed["pixel_values"].dtype == torch.float32
    with pytest.raises(ValueError, match="normalize=True"):
        build_transforms(32, train=True, random_erasing=0.5, normalize=False)
