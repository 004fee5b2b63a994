"""The tensor-resident input pipeline for small images (CIFAR, Fashion-MNIST, STL-10, the shipped sample).

The worker pipeline (`data.with_image_transform`) decodes and augments every image in dataloader workers, one PIL image
at a time, every epoch. For small images that costs more than the model: on 2 CPU cores it took most of the time, and
on a GPU the workers cannot keep up. Here each split is decoded once into a uint8 tensor `(rows, 3, height, width)`,
cached on disk under the split's fingerprint (the next run loads it in a moment), and kept in memory. A batch is a
slice of that tensor; the collator ([`DeviceImageTransform`]) moves it to the training device and augments it there,
with per-sample randomness: pad-and-crop or random-resized crop, flip, resizing to the model's size, normalisation,
then mixup/cutmix and label smoothing as [`ImageClassificationCollator`] does them.

    decoded = decode_images(data.dataset["train"])
    train_dataset = TensorImageDataset(decoded)
    collator = DeviceImageTransform(32, train=True, mean=..., std=..., device="cuda")

RandAugment, TrivialAugment, AutoAugment, colour jitter and random erasing are PIL-era per-image transforms: they stay
on the worker pipeline (`WORKER_ONLY_AUGMENTATIONS`), which the recipes choose when one is asked for.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .data import (
    CROP_CHOICES,
    INTERPOLATION_MODES,
    PAD_CROP_MAX_IMAGE_SIZE,
    ROW_INDEX_COLUMN,
    ImageClassificationCollator,
    convert_image_to_rgb,
    pad_crop_padding,
    uint8_normalisation,
    with_image_transform,
)
from .data.transforms import _image_size_pair

logger = logging.getLogger(__name__)

# Bump when the decoded layout changes, so old cache files are not read.
DECODED_FORMAT_VERSION = 1
# Decoded splits of one dataset larger than this together stay on the worker pipeline (host memory, per process).
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
# Augmentations that only the worker pipeline applies (per image, on PIL images).
WORKER_ONLY_AUGMENTATIONS = ("color_jitter", "auto_augment", "random_erasing")


# The batch's dataset indices, which key its augmentation draws (see DeviceImageTransform); the collator removes them.
SAMPLE_INDICES_KEY = "sample_indices"
# Views given with a batch instead of drawn (cached teacher views, `DeviceImageTransform(replay_views=True)`): each
# image's box, float `(batch, 4)` (top, left, height, width; see `DeviceImageTransform.draw_views`), and flip, bool
# `(batch,)`. The collator removes them.
VIEW_BOXES_KEY = "view_boxes"
VIEW_FLIPS_KEY = "view_flips"


class MixedImageSizesError(ValueError):
    """The split's images do not share one size, so they cannot be stacked into one tensor."""


@dataclass
class DecodedImages:
    """A split decoded once: `images` uint8 `(rows, 3, height, width)`, `labels` int64 `(rows,)`, and `row_index`
    int64 `(rows,)`, each row's position in its source split."""

    images: torch.Tensor
    labels: torch.Tensor
    row_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])


def decoded_cache_path(split: datasets.Dataset, on_bad_image: str, cache_dir: str | os.PathLike | None) -> Path:
    """Where `decode_images` keeps a split: keyed by the split's datasets fingerprint (which changes with the source
    files and every select/cast before it) and by how undecodable images are handled."""
    root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "hf_vision_distill"
    return root / "decoded" / f"{split._fingerprint}-{on_bad_image}-v{DECODED_FORMAT_VERSION}.safetensors"


def first_image_size(split: datasets.Dataset) -> tuple[int, int]:
    """The (height, width) of the split's first image, decoded alone: what the whole split would take if the images
    share it."""
    image = convert_image_to_rgb(split.cast_column("image", datasets.Image())[0]["image"])
    return image.height, image.width


def estimated_bytes(split: datasets.Dataset) -> int:
    """The decoded size of a split whose images share its first image's size."""
    if len(split) == 0:
        return 0
    height, width = first_image_size(split)
    return len(split) * 3 * height * width


def _to_uint8(image) -> torch.Tensor:
    return v2.functional.pil_to_tensor(convert_image_to_rgb(image))


def decode_images(
    split: datasets.Dataset,
    *,
    on_bad_image: str = "error",
    source_split: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
) -> DecodedImages:
    """Decodes every image of a split into one uint8 tensor, or loads it from the disk cache.

    Args:
        split (`datasets.Dataset`):
            A split of `ImageClassificationData.dataset` (columns `image`, `label`, `row_index`).
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            As in `data.with_image_transform`: `"error"` raises naming the source row, `"skip"` drops the row.
        source_split (`str`, *optional*):
            The source split's name, for messages.
        cache_dir (`str`, *optional*):
            Folder of the decoded files; defaults to `<HF_DATASETS_CACHE>/hf_vision_distill`.
        num_workers (`int`, *optional*):
            Decoding processes; defaults to the CPU count (at most 8), none on a single core.

    Raises:
        `MixedImageSizesError`: the images do not all have the first image's size.
    """
    path = decoded_cache_path(split, on_bad_image, cache_dir)
    if path.is_file():
        tensors = load_file(path)
        logger.info("Loaded %d decoded images from %s", len(tensors["labels"]), path)
        return DecodedImages(tensors["images"], tensors["labels"], tensors["row_index"])

    if num_workers is None:
        cpus = os.cpu_count() or 1
        num_workers = 0 if cpus <= 1 else min(cpus, 8)
    prepared = with_image_transform(split, _to_uint8, on_bad_image=on_bad_image, source_split=source_split)
    loader = DataLoader(prepared, batch_size=256, num_workers=num_workers, collate_fn=_stack_examples)
    images, labels, rows = [], [], []
    expected_size = None
    for batch in loader:
        for image, label, row in zip(batch["pixel_values"], batch["labels"], batch[ROW_INDEX_COLUMN]):
            size = tuple(image.shape[-2:])
            if expected_size is None:
                expected_size = size
            elif size != expected_size:
                raise MixedImageSizesError(
                    f"the images of split '{source_split or 'train'}' do not share one size (row {row} is "
                    f"{size[0]}x{size[1]}, the first is {expected_size[0]}x{expected_size[1]}), so they cannot be "
                    "held as one tensor; use the worker pipeline (--input_pipeline workers)."
                )
            images.append(image)
            labels.append(label)
            rows.append(row)
    decoded = DecodedImages(
        images=torch.stack(images) if images else torch.zeros(0, 3, 1, 1, dtype=torch.uint8),
        labels=torch.tensor(labels, dtype=torch.int64),
        row_index=torch.tensor(rows, dtype=torch.int64),
    )
    _save_atomically(decoded, path)
    logger.info("Decoded %d images (%dx%d) into %s", len(decoded), *decoded.image_size, path)
    return decoded


def _stack_examples(examples: list[dict]) -> dict[str, Any]:
    """A decoding worker's batch: its images as one tensor when they share a size, else as a list. A tensor crosses
    to the main process as one shared-memory file: one per image, all kept until the split is stacked, exhausted the
    open-file limit (`ulimit -n`) on splits of some 20,000 images."""
    images = [example["pixel_values"] for example in examples]
    same_size = all(image.shape == images[0].shape for image in images)
    return {
        "pixel_values": torch.stack(images) if images and same_size else images,
        "labels": [example["labels"] for example in examples],
        ROW_INDEX_COLUMN: [example[ROW_INDEX_COLUMN] for example in examples],
    }


def _save_atomically(decoded: DecodedImages, path: Path) -> None:
    # Written beside, then renamed: a run killed while writing leaves no truncated file to be read next time.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    save_file({"images": decoded.images.contiguous(), "labels": decoded.labels, "row_index": decoded.row_index},
              str(partial))  # fmt: skip
    os.replace(partial, path)


def columns_for_rows(extra_columns: dict[str, np.ndarray] | None, row_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row arrays indexed by source row (e.g. cached teacher logits) taken for a split's rows, in its
    order; refused when a row has no value (a cache computed for another subset of the split)."""
    outputs = {}
    for name, table in (extra_columns or {}).items():
        table = torch.as_tensor(np.asarray(table, dtype=np.float32))
        rows = row_index
        if len(rows) and (rows.max() >= len(table) or torch.isnan(table[rows.clamp(max=len(table) - 1)]).any()):
            raise ValueError(
                f"no precomputed '{name}' for some rows of this split; compute the cache for this split (with "
                "cache_teacher_logits) before training from it."
            )
        outputs[name] = table[rows]
    return outputs


class TensorImageDataset(Dataset):
    """A decoded split as a map-style dataset whose batches are slices of one tensor.

    `dataset[i]` is one example (`pixel_values` uint8 `(3, height, width)`, `labels`, and any per-row outputs);
    the `DataLoader` fetches a whole batch at once through `__getitems__`, one indexing operation per batch.

    Args:
        decoded (`DecodedImages`): the split.
        extra_columns (`dict[str, np.ndarray]`, *optional*): per-row arrays indexed by `row_index` (cached teacher
            logits), carried with each example as in `data.make_batch_transform`.
    """

    def __init__(self, decoded: DecodedImages, extra_columns: dict[str, np.ndarray] | None = None):
        self.decoded = decoded
        self.extra_columns = columns_for_rows(extra_columns, decoded.row_index)

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = {"pixel_values": self.decoded.images[index], "labels": self.decoded.labels[index]}
        example.update({name: values[index] for name, values in self.extra_columns.items()})
        return example

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"pixel_values": self.decoded.images[index], "labels": self.decoded.labels[index],
                 SAMPLE_INDICES_KEY: index}  # fmt: skip
        batch.update({name: values[index] for name, values in self.extra_columns.items()})
        return batch


class DeviceImageTransform:
    """The collator of the tensor pipeline: a uint8 batch in, the model's normalised float batch out, augmented on
    `device` with every image drawing its own crop and flip.

    Training: resize to `image_size` then pad-and-crop (reflect padding of `crop_padding` pixels, by default an
    eighth of the shorter side, as `data.build_transforms` does), or a random-resized crop (scale 0.08-1, ratio
    3/4-4/3, torchvision's sampling) read from the stored image straight at `image_size`; horizontal flip;
    normalisation; then mixing and label smoothing through [`ImageClassificationCollator`]. Evaluation: resize and
    normalise.

    The draws of a batch are keyed by `seed` and the batch's dataset indices (which the shuffling sampler orders
    afresh every epoch), not taken from the global generators: a run resumed from a checkpoint augments every batch as
    the uninterrupted run did (the Trainer restores the global generators only after fetching the first batch), and
    the model's own randomness (dropout) is the same on either input pipeline.

    A view is drawn (`draw_views`) then applied (`apply_views`), so it can also be given: with `replay_views=True`
    every training batch brings each image's view (`VIEW_BOXES_KEY`, `VIEW_FLIPS_KEY`), drawn earlier with
    `draw_views`, and gets exactly those pixels back (cached teacher views, `distillation.cache_teacher_views`).

    Args:
        image_size (`int` or `tuple[int, int]`): the model's input size.
        train (`bool`): augment (training) or only resize and normalise (evaluation).
        mean, std (`Sequence[float]`): the model's normalisation.
        interpolation (`str`): `"bilinear"`, `"bicubic"` or `"nearest"`, for resizing and crops.
        crop (`str`): `"auto"`, `"pad"`, `"random_resized"` or `"none"`, as in `data.build_transforms`.
        horizontal_flip (`bool`): random horizontal flips in training.
        device (`str` or `torch.device`): where batches are augmented (the training device).
        seed (`int`): the run's seed, the key of every batch's draws with the batch's indices.
        replay_views (`bool`): apply the views each training batch brings instead of drawing them; mixup and
            cutmix are refused (they blend two images into one that no cached view shows).
        kwargs: mixing and label smoothing, as for [`ImageClassificationCollator`] (`num_labels`, `mixup_alpha`,
            `cutmix_alpha`, `mix_prob`, `label_smoothing`).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
        crop: str = "auto",
        horizontal_flip: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 42,
        replay_views: bool = False,
        crop_padding: int | None = None,
        **kwargs,
    ):
        self.image_size = _image_size_pair(image_size)
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation='{interpolation}' is not supported; pass one of {list(INTERPOLATION_MODES)}."
            )
        if crop not in CROP_CHOICES:
            raise ValueError(f"crop='{crop}' is not supported; pass one of {list(CROP_CHOICES)}.")
        if crop == "auto":
            crop = "pad" if max(self.image_size) <= PAD_CROP_MAX_IMAGE_SIZE else "random_resized"
        self.train = train
        self.crop = crop if train else "none"
        self.horizontal_flip = horizontal_flip and train
        self.padding = pad_crop_padding(self.image_size, crop_padding)
        self.interpolation = interpolation
        self.device = torch.device(device)
        self.seed = seed
        self.generator = torch.Generator(device=self.device)
        self.scale, self.shift = uint8_normalisation(mean, std, self.device)  # built once, on the device
        self.labels_collator = ImageClassificationCollator(**kwargs)
        self.replay_views = False
        if replay_views:
            self._check_replayable()
            self.replay_views = True

    def with_replayed_views(self) -> DeviceImageTransform:
        """This transform (same geometry, normalisation, labels and device), applying the views each batch brings
        instead of drawing them."""
        self._check_replayable()
        replaying = copy.copy(self)
        replaying.replay_views = True
        return replaying

    def _check_replayable(self) -> None:
        if not self.train:
            raise ValueError(
                "replay_views=True replays training views, and an evaluation transform (train=False) has none."
            )
        if self.labels_collator.mix is not None:
            raise ValueError(
                f"replay_views=True with mixup_alpha={self.labels_collator.mixup_alpha} and cutmix_alpha="
                f"{self.labels_collator.cutmix_alpha}: a replayed view comes with the teacher's outputs on that one "
                "image, and mixing blends two images into one the teacher never saw. Pass mixup_alpha=0 and "
                "cutmix_alpha=0 (--mixup_alpha 0 --cutmix_alpha 0), or distill from a live teacher."
            )

    def __call__(self, batch: dict[str, torch.Tensor] | list[dict]) -> dict[str, torch.Tensor]:
        if isinstance(batch, list):  # examples fetched one by one (dataset[i]) rather than by __getitems__
            batch = {name: torch.stack([torch.as_tensor(example[name]) for example in batch]) for name in batch[0]}
        indices = batch.pop(SAMPLE_INDICES_KEY, None)
        batch = {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}
        images = batch.pop("pixel_values")
        if images.dtype != torch.uint8:
            raise ValueError(
                f"DeviceImageTransform takes uint8 images (a TensorImageDataset's), got {images.dtype}; use "
                "ImageClassificationCollator for batches of transformed images."
            )
        return self.augment(images.float(), batch, indices)

    def batch_seed(self, indices: torch.Tensor | None) -> int | None:
        """The key of a batch's draws: the run's seed and the batch's dataset indices (`None` without indices: the
        global generators draw)."""
        if indices is None:
            return None
        return zlib.crc32(indices.numpy().astype(np.int64).tobytes(), self.seed & 0xFFFFFFFF)

    def augment(
        self,
        images: torch.Tensor,
        batch: dict[str, torch.Tensor],
        indices: torch.Tensor | None,
        cropped_and_flipped: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The device half shared by the pipelines that bring images to the device: float images in the 0-255 range
        `(batch, 3, height, width)` cropped (or `cropped_and_flipped` already, at `image_size`), resized, flipped,
        normalised, then mixed with the rest of `batch` (labels, carried per-row arrays, on the device)."""
        batch_seed = self.batch_seed(indices)
        generator = None if batch_seed is None else self.generator.manual_seed(batch_seed)
        boxes, flips = batch.pop(VIEW_BOXES_KEY, None), batch.pop(VIEW_FLIPS_KEY, None)
        if self.replay_views and not cropped_and_flipped and (boxes is None or flips is None):
            raise ValueError(
                f"replay_views=True but the batch has no '{VIEW_BOXES_KEY}' and '{VIEW_FLIPS_KEY}' (keys: "
                f"{sorted(batch)}); batch a dataset that brings each row's view (distillation.TeacherViewDataset)."
            )
        if boxes is not None and not self.replay_views:
            raise ValueError(
                f"the batch brings views ('{VIEW_BOXES_KEY}') but this transform draws its own; build it with "
                "replay_views=True to apply them."
            )
        if not cropped_and_flipped:
            if boxes is None:
                boxes, flips = self.draw_views(images.shape[0], tuple(images.shape[-2:]), generator)
            images = self.apply_views(images, boxes, flips)
        batch["pixel_values"] = self.normalise(images)
        if batch_seed is None or self.labels_collator.mix is None:
            return self.labels_collator.finish(batch)
        # torchvision's MixUp/CutMix draw from the global CPU generator: keyed the same way, then put back.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(batch_seed)
            return self.labels_collator.finish(batch)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == self.image_size:
            return images
        downsampling = images.shape[-2] > self.image_size[0] or images.shape[-1] > self.image_size[1]
        mode = self.interpolation
        resized = F.interpolate(images, size=self.image_size, mode=mode,
                                align_corners=None if mode == "nearest" else False,
                                antialias=downsampling and mode != "nearest")  # fmt: skip
        return resized.clamp_(0, 255) if mode == "bicubic" else resized

    def draw_views(
        self,
        batch_size: int,
        stored_size: tuple[int, int],
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every image's own crop and flip, drawn as training draws them (`augment` calls it).

        Args:
            batch_size (`int`): how many views.
            stored_size (`tuple[int, int]`): the (height, width) of the stored images.
            generator (`torch.Generator`, *optional*): the draws' generator (else the global one of `device`).
            device (`str` or `torch.device`, *optional*): where to draw; defaults to the generator's device, else
                the transform's.

        Returns:
            `boxes`, float `(batch, 4)` of whole numbers, and `flips`, bool `(batch,)` (`None` without flips). A box
            is (top, left, height, width): for `crop="random_resized"` the crop of the stored image; for `"pad"` the
            crop of the image resized to `image_size` and reflect-padded (offsets in [0, 2 * padding]); for
            `"none"` the whole resized image.
        """
        if device is None:
            device = generator.device if generator is not None else self.device
        height, width = self.image_size
        if self.crop == "random_resized":
            sizes = torch.tensor([stored_size], device=device, dtype=torch.float32).expand(batch_size, 2)
            top, left, crop_height, crop_width = random_resized_crop_boxes(sizes, generator)
        else:
            top = left = torch.zeros(batch_size, device=device)
            if self.crop == "pad":
                # Every image its own offset in [0, 2 * padding], as RandomCrop draws it.
                padding = self._padding()
                top = torch.randint(0, 2 * padding + 1, (batch_size, 1), device=device, generator=generator)[:, 0]
                left = torch.randint(0, 2 * padding + 1, (batch_size, 1), device=device, generator=generator)[:, 0]
            crop_height = torch.full((batch_size,), float(height), device=device)
            crop_width = torch.full((batch_size,), float(width), device=device)
        boxes = torch.stack([top.float(), left.float(), crop_height, crop_width], dim=1)
        flips = None
        if self.horizontal_flip:
            flips = torch.rand(batch_size, device=device, generator=generator) < 0.5
        return boxes, flips

    def apply_views(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
        """Float images in the 0-255 range `(batch, 3, height, width)` seen through the views of `draw_views`, at
        `image_size` (not normalised): the same pixels for the same views, whether drawn now or replayed."""
        boxes = boxes.to(images.device, torch.float32)
        flips = None if flips is None else flips.to(images.device, torch.bool)
        if self.crop == "random_resized":
            return self._resample_boxes(images, boxes, flips)
        images = self._resize(images)
        if self.crop == "pad":
            images = self._pad_and_crop(images, boxes[:, 0:1].long(), boxes[:, 1:2].long())
        if flips is not None:
            images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        return images

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in the 0-255 range, normalised as the model takes them."""
        return images * self.scale - self.shift

    def _padding(self) -> int:
        return self.padding

    def _pad_and_crop(self, images: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Each image reflect-padded by `_padding()` and cropped back to its size at its own `(batch, 1)` offsets;
        one gather for the whole batch."""
        batch_size, _, height, width = images.shape
        padding = self._padding()
        padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
        rows = (top + torch.arange(height, device=images.device))[:, :, None]
        columns = (left + torch.arange(width, device=images.device))[:, None, :]
        samples = torch.arange(batch_size, device=images.device)[:, None, None]
        # Advanced indices around a slice put their dimensions first: (batch, height, width, channels).
        return padded[samples, :, rows, columns].permute(0, 3, 1, 2)

    def _resample_boxes(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
        """Every image's box of the stored image (`random_resized_crop_boxes`) resampled to `image_size` by one
        `grid_sample`, with the flip folded into the grid."""
        _, _, height, width = images.shape
        device = images.device
        top, left, crop_height, crop_width = boxes.unbind(dim=1)
        # The affine map from output coordinates in [-1, 1] to the box, in grid_sample's align_corners=False frame.
        scale_x = crop_width / width
        scale_y = crop_height / height
        centre_x = (left + crop_width / 2) / width * 2 - 1
        centre_y = (top + crop_height / 2) / height * 2 - 1
        if flips is not None:
            scale_x = torch.where(flips, -scale_x, scale_x)
        # Written out per axis, not through F.affine_grid's batched matrix product: each image's grid, hence its
        # pixels, is then the same whatever else is in its batch, so a replayed view equals the cached one exactly.
        out_height, out_width = self.image_size
        xs = (torch.arange(out_width, device=device) * 2 + 1) / out_width - 1
        ys = (torch.arange(out_height, device=device) * 2 + 1) / out_height - 1
        grid_x = (scale_x[:, None] * xs + centre_x[:, None])[:, None, :].expand(-1, out_height, -1)
        grid_y = (scale_y[:, None] * ys + centre_y[:, None])[:, :, None].expand(-1, -1, out_width)
        grid = torch.stack([grid_x, grid_y], dim=-1)
        cropped = F.grid_sample(images, grid, mode=self.interpolation, padding_mode="border", align_corners=False)
        return cropped.clamp_(0, 255) if self.interpolation == "bicubic" else cropped


@torch.no_grad()
def predict_decoded(
    model: torch.nn.Module, decoded: DecodedImages, transform: DeviceImageTransform, batch_size: int = 500
) -> torch.Tensor:
    """The model's predicted class for every image of `decoded`, in order, through an evaluation `transform`: what a
    script needs to score a saved model on a split without a Trainer. Batches go to the model's device."""
    device = next(model.parameters()).device
    model.eval()
    predictions = []
    for start in range(0, len(decoded), batch_size):
        batch = transform({"pixel_values": decoded.images[start : start + batch_size].to(device),
                           "labels": decoded.labels[start : start + batch_size].to(device)})  # fmt: skip
        predictions.append(model(pixel_values=batch["pixel_values"]).logits.argmax(-1).cpu())
    return torch.cat(predictions)


def random_resized_crop_boxes(
    sizes: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's `RandomResizedCrop` box sampling (scale 0.08-1, ratio 3/4-4/3, 10 tries, else the centre crop of
    the clamped ratio), drawn for every image at once.

    Args:
        sizes (`torch.Tensor`): float `(batch, 2)`, each image's (height, width).
        generator (`torch.Generator`, *optional*): the draws' generator, on `sizes`' device.

    Returns:
        `(top, left, crop_height, crop_width)`, float `(batch,)` tensors of whole numbers.
    """
    batch_size, device = sizes.shape[0], sizes.device
    height, width = sizes[:, 0], sizes[:, 1]
    tries = 10
    area = (height * width)[:, None]
    target_area = area * torch.empty(batch_size, tries, device=device).uniform_(0.08, 1.0, generator=generator)
    log_ratio = torch.empty(batch_size, tries, device=device).uniform_(
        math.log(3 / 4), math.log(4 / 3), generator=generator
    )
    ratio = torch.exp(log_ratio)
    crop_width = torch.sqrt(target_area * ratio).round()
    crop_height = torch.sqrt(target_area / ratio).round()
    fits = (crop_width > 0) & (crop_width <= width[:, None]) & (crop_height > 0) & (crop_height <= height[:, None])
    first = fits.float().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    crop_width = crop_width.gather(1, first)[:, 0]
    crop_height = crop_height.gather(1, first)[:, 0]
    # The fallback: the whole image, cropped to the nearest allowed ratio, centred.
    image_ratio = width / height
    too_tall, too_wide = image_ratio < 3 / 4, image_ratio > 4 / 3
    fallback_width = torch.where(too_wide, (height * (4 / 3)).round(), width)
    fallback_height = torch.where(too_tall, (width / (3 / 4)).round(), height)
    crop_width = torch.where(found, crop_width, fallback_width)
    crop_height = torch.where(found, crop_height, fallback_height)
    top = torch.floor(torch.rand(batch_size, device=device, generator=generator) * (height - crop_height + 1))
    left = torch.floor(torch.rand(batch_size, device=device, generator=generator) * (width - crop_width + 1))
    top = torch.where(found, top, ((height - crop_height) / 2).round())
    left = torch.where(found, left, ((width - crop_width) / 2).round())
    return top, left, crop_height, crop_width


__all__ = [
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "WORKER_ONLY_AUGMENTATIONS",
    "DecodedImages",
    "DeviceImageTransform",
    "MixedImageSizesError",
    "VIEW_BOXES_KEY",
    "VIEW_FLIPS_KEY",
    "TensorImageDataset",
    "decode_images",
    "decoded_cache_path",
    "estimated_bytes",
    "first_image_size",
    "predict_decoded",
    "random_resized_crop_boxes",
]
