"""Images as they come: decoding, RGB conversion, and finding or dropping rows whose image does not decode."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import datasets
import numpy as np
import PIL.Image

from .loading import MAX_REPORTED_ROWS, ROW_INDEX_COLUMN, ImageClassificationData

logger = logging.getLogger(__name__)


ON_BAD_IMAGE_CHOICES = ("error", "skip")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


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
