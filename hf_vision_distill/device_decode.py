"""The input pipeline that decodes JPEG images on the training device (nvJPEG on a GPU).

For large images (ImageNet-sized photographs) the worker pipeline spends most of its CPU time in JPEG decoding, and a
GPU trains faster than a few CPU cores per GPU can decode. Here the dataloader workers only read each image's encoded
bytes (and its EXIF orientation, from the header) and the collator's device half ([`DeviceJpegTransform.on_device`],
called by the Trainer once the batch is on the device) decodes the whole batch in one call on the device, then crops,
resizes, flips, normalises and mixes it there, each image with its own draws.

    train_dataset = EncodedImageDataset(data.dataset["train"])
    collator = DeviceJpegTransform(224, train=True, mean=..., std=..., device="cuda")

Decoding uses TorchCodec's `decode_jpeg` when it is installed (the successor of torchvision's image decoders since
torchvision 0.29) and torchvision's otherwise. Images that are not JPEG (PNG, WebP, ...) or that the device decoder
refuses (CMYK on some nvJPEG versions) are decoded on the CPU by PIL, as the worker pipeline does. The recipes use this
pipeline only when asked (`--input_pipeline decode_on_device`): whether it beats the workers depends on the GPU's
decoder, the image sizes and the CPU cores per GPU (`benchmarks/gpu_check.py` measures it).
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .data import ROW_INDEX_COLUMN, convert_image_to_rgb
from .data.images import _describe_image
from .tensor_data import DeviceImageTransform, columns_for_rows, random_resized_crop_boxes

logger = logging.getLogger(__name__)

JPEG_SIGNATURE = b"\xff\xd8\xff"
ENCODED_IMAGES_KEY = "encoded_images"
# The EXIF tag of the orientation, and what each of its values asks for (PIL.ImageOps.exif_transpose's table).
EXIF_ORIENTATION_TAG = 0x0112


class EncodedImages:
    """A batch's encoded images (`bytes`, one per image), their EXIF orientations (1 = upright), dataset indices and
    source rows, in a holder that the Trainer's and Accelerate's device placement and batch-size detection pass over:
    encoded bytes must stay on the CPU, where the decoders read them, and so must the indices that key the batch's
    draws (reading them back from a GPU would wait for it)."""

    def __init__(self, data: list[bytes], orientations: list[int], indices: list[int], rows: list[int]):
        self.data = data
        self.orientations = orientations
        self.indices = indices
        self.rows = rows

    @classmethod
    def concatenate(cls, parts: list[EncodedImages]) -> EncodedImages:
        return cls(*([value for part in parts for value in getattr(part, name)]
                     for name in ("data", "orientations", "indices", "rows")))  # fmt: skip

    def __len__(self) -> int:
        return len(self.data)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) in an encoded image's header, 1 when it has none; PIL reads only the header."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # an undecodable image: the decoder reports it with its row
        return 1
    return orientation if orientation in range(1, 9) else 1


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turns a decoded `(channels, height, width)` image upright as `PIL.ImageOps.exif_transpose` does (datasets'
    decoder, so the worker pipeline), for decoders that ignore the orientation (nvJPEG)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


@functools.cache  # looked up once, not for every batch (a failed import searches sys.path again each time)
def _jpeg_decoder() -> Callable[..., list[torch.Tensor]]:
    try:
        from torchcodec.decoders import decode_jpeg

        return lambda sources, device: decode_jpeg(sources, mode="RGB", device=device)
    except ImportError:
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(sources: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
            with warnings.catch_warnings():  # deprecated in favour of TorchCodec's, which is not installed
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(sources, mode=ImageReadMode.RGB, device=device)

        return decode


def decode_on_device(encoded: EncodedImages, device: torch.device) -> list[torch.Tensor | None]:
    """Each image of `encoded` decoded to uint8 `(3, height, width)` on `device`, upright; `None` for an image nothing
    can decode. JPEGs are decoded in one batched call (nvJPEG on a GPU); the others, and JPEGs the device decoder
    refuses, by PIL on the CPU."""
    images: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [position for position, data in enumerate(encoded.data) if data[:3] == JPEG_SIGNATURE]
    if jpegs:
        decode = _jpeg_decoder()
        sources = [torch.frombuffer(bytearray(encoded.data[position]), dtype=torch.uint8) for position in jpegs]
        try:
            decoded = decode(sources, device)
        except RuntimeError:  # the batch call returns nothing when one image fails: decode them one by one
            decoded = []
            for source in sources:
                try:
                    decoded.append(decode([source], device)[0])
                except RuntimeError:
                    decoded.append(None)
        for position, image in zip(jpegs, decoded):
            images[position] = image
    for position, image in enumerate(images):
        if image is None:
            try:
                with PIL.Image.open(io.BytesIO(encoded.data[position])) as opened:
                    images[position] = v2.functional.pil_to_tensor(convert_image_to_rgb(opened)).to(device)
            except Exception:  # PIL raises a zoo of exception types for malformed files
                continue
        elif encoded.orientations[position] != 1:
            images[position] = apply_exif_orientation(image, encoded.orientations[position])
    return images


class EncodedImageDataset(Dataset):
    """A split whose batches are the images' encoded bytes, read without decoding (`datasets.Image(decode=False)`),
    for [`DeviceJpegTransform`].

    A batch (`__getitems__`, one table read) is `{"labels", "encoded_images"}` ([`EncodedImages`]) plus any per-row
    outputs. Images stored as paths are read from their files.

    Args:
        split (`datasets.Dataset`): a split of `ImageClassificationData.dataset` (`image`, `label`, `row_index`).
        extra_columns (`dict[str, np.ndarray]`, *optional*): per-row arrays indexed by `row_index` (cached teacher
            logits), carried with each batch.
    """

    def __init__(self, split: datasets.Dataset, extra_columns: dict[str, np.ndarray] | None = None):
        self.images = split.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
        self.labels = torch.as_tensor(split["label"], dtype=torch.long)
        self.row_index = torch.as_tensor(split[ROW_INDEX_COLUMN], dtype=torch.long)
        self.extra_columns = columns_for_rows(extra_columns, self.row_index)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(indices, dtype=torch.long)
        data = [_read_encoded(value) for value in self.images[list(indices)]["image"]]
        encoded = EncodedImages(
            data, list(map(exif_orientation, data)), index.tolist(), self.row_index[index].tolist()
        )
        # "labels" first: the Trainer takes a batch's size from its first tensor.
        batch = {"labels": self.labels[index], ENCODED_IMAGES_KEY: encoded}
        batch.update({name: values[index] for name, values in self.extra_columns.items()})
        return batch


def _read_encoded(value: dict[str, Any]) -> bytes:
    if value.get("bytes") is not None:
        return value["bytes"]
    # datasets' own reader: local paths, and remote ones through fsspec, as decode=True reads them.
    path = value["path"]
    if Path(path).is_file():
        return Path(path).read_bytes()
    with datasets.utils.file_utils.xopen(path, "rb") as file:
        return file.read()


class DeviceJpegTransform(DeviceImageTransform):
    """The collator of the decode-on-device pipeline: encoded images in, the model's normalised batch out.

    Called in the dataloader workers, it passes the batch of an [`EncodedImageDataset`] through; `on_device`, called
    by the Trainer (`ImageClassificationTrainer`) once the batch is on the training device, decodes it there
    ([`decode_on_device`]) and applies the crops of `data.build_transforms` to each image at its own size: training,
    a random-resized crop (torchvision's box sampling) read with antialiasing straight at `image_size`, or a resize to
    `image_size` then pad-and-crop; evaluation, a resize to `image_size`. Flip, normalisation, mixing and label
    smoothing follow as in [`DeviceImageTransform`], whose arguments it takes, plus:

    Args:
        on_bad_image (`str`, *optional*, defaults to `"error"`): `"error"` raises naming the image's source row,
            `"skip"` drops it from its batch, as the worker pipeline does.
        source_split (`str`, *optional*): the source split's name, for messages.
    """

    def __init__(self, *args, on_bad_image: str = "error", source_split: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_bad_image = on_bad_image
        self.source_split = source_split

    def __call__(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        if isinstance(batch, list):  # examples fetched one by one (dataset[i]), each a batch of one
            merged = {name: torch.cat([example[name] for example in batch]) for name in batch[0]
                      if name != ENCODED_IMAGES_KEY}  # fmt: skip
            merged[ENCODED_IMAGES_KEY] = EncodedImages.concatenate([example[ENCODED_IMAGES_KEY] for example in batch])
            return merged
        return batch

    def __getstate__(self) -> dict:
        # Sent to dataloader workers, which only pass batches through: without the device constants (CUDA tensors
        # must not reach a worker) and the device generator.
        return {**self.__dict__, "scale": None, "shift": None, "generator": None}

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The device half (see the class) of a batch of [`EncodedImageDataset`]."""
        batch = dict(batch)
        encoded = batch.pop(ENCODED_IMAGES_KEY)
        images = decode_on_device(encoded, self.device)
        failed = [position for position, image in enumerate(images) if image is None]
        if failed:
            images, batch, encoded = self._drop_undecodable(failed, images, batch, encoded)
        batch = {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}
        indices = torch.tensor(encoded.indices, dtype=torch.long)
        images, cropped_and_flipped = self._crop_each(images, indices)
        return self.augment(images, batch, indices, cropped_and_flipped=cropped_and_flipped)

    def _drop_undecodable(
        self, failed: list[int], images: list, batch: dict[str, torch.Tensor], encoded: EncodedImages
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], EncodedImages]:
        of_split = f" of source split '{self.source_split}'" if self.source_split else ""
        where = ", ".join(f"row {encoded.rows[position]}{of_split}" for position in failed)
        if self.on_bad_image == "error" or len(failed) == len(images):
            raise ValueError(
                f"cannot decode the image at {where} (first bytes {encoded.data[failed[0]][:8]!r}). Pass "
                "--on_bad_image skip to drop undecodable rows, or --check_images to find them all before training."
            )
        logger.warning("Skipped %d undecodable image(s): %s.", len(failed), where)
        kept = [position for position, image in enumerate(images) if image is not None]
        index = torch.tensor(kept, dtype=torch.long)
        encoded = EncodedImages(*([getattr(encoded, name)[position] for position in kept]
                                  for name in ("data", "orientations", "indices", "rows")))  # fmt: skip
        batch = {name: value[index.to(value.device)] for name, value in batch.items()}
        return [images[position] for position in kept], batch, encoded

    def _crop_each(self, images: list[torch.Tensor], indices: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """The geometric step for images of their own sizes: `(batch, 3, *image_size)` floats in 0-255, and whether
        the flip was applied too (random-resized crops fold it in)."""
        if self.crop != "random_resized":
            return torch.cat([self._resize_one(image.float(), image.shape[-2:]) for image in images]), False
        # Boxes drawn on the CPU (their bounds slice each image: no device round trip), keyed like every draw.
        batch_seed = self.batch_seed(indices)
        generator = None if batch_seed is None else torch.Generator().manual_seed(batch_seed)
        sizes = torch.tensor([list(image.shape[-2:]) for image in images], dtype=torch.float32)
        top, left, height, width = (values.long().tolist() for values in random_resized_crop_boxes(sizes, generator))
        flips = (torch.rand(len(images), generator=generator) < 0.5).tolist() if self.horizontal_flip else []
        crops = []
        for position, image in enumerate(images):
            box = image[
                :, top[position] : top[position] + height[position], left[position] : left[position] + width[position]
            ]
            crop = self._resize_one(box.float(), box.shape[-2:])
            crops.append(crop.flip(-1) if flips and flips[position] else crop)
        return torch.cat(crops), True

    def _resize_one(self, image: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if tuple(size) == self.image_size:
            return image[None]
        shrinking = size[0] > self.image_size[0] or size[1] > self.image_size[1]
        mode = self.interpolation
        resized = F.interpolate(image[None], size=self.image_size, mode=mode,
                                align_corners=None if mode == "nearest" else False,
                                antialias=shrinking and mode != "nearest")  # fmt: skip
        return resized.clamp_(0, 255) if mode == "bicubic" else resized


def split_is_jpeg(split: datasets.Dataset, rows: int = 16) -> bool:
    """Whether the first `rows` images of a split are stored as JPEG (read undecoded)."""
    images = split.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    values = images[: min(rows, len(images))]["image"]
    return bool(values) and all(_read_encoded(value)[:3] == JPEG_SIGNATURE for value in values)


def describe_first_image(split: datasets.Dataset) -> str:
    """The first image's file or `(embedded bytes)`, for messages."""
    value = split.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))[0]["image"]
    return _describe_image(value)


__all__ = [
    "DeviceJpegTransform",
    "EncodedImageDataset",
    "EncodedImages",
    "apply_exif_orientation",
    "decode_on_device",
    "exif_orientation",
    "split_is_jpeg",
]
