"""An offline teacher: its logits computed once per example, kept in a `datasets.Dataset` keyed by source row.

Training from the cache skips the teacher's forward pass at every step, which pays when the teacher is large compared
with the student (the expected speedup is about 1 + F_teacher / (3 F_student): a student step is a forward and a
backward, about three forwards). The cache is only valid when every epoch shows the teacher the same image for a row,
so it is computed with, and may only be used with, a deterministic transform (no random crops, flips, augmentation,
mixup or cutmix). `cache_teacher_logits` checks that by transforming one image twice.

    cache = cache_teacher_logits(teacher, data.dataset["train"], build_transforms(32, train=False))
    cache.save_to_disk("outputs/teacher_cache")            # or cache.push_to_hub("user/cifar10-vit-logits")
    train = with_image_transform(data.dataset["train"], build_transforms(32, train=False),
                                 extra_columns=teacher_outputs_by_row(cache))

Every split the trainer evaluates on needs its own cache too (its evaluation loss includes the teacher terms);
examples/distill.py --offline_teacher caches train, validation and test.

Under several processes, compute the cache once: the process that saves runs `cache_teacher_logits` and
`save_to_disk` inside `training_args.main_process_first(local=training_args.save_on_each_node)`, and the others
`datasets.load_from_disk` the result there (examples/distill.py `cache_teacher`).

With augmentation (FKD, Shen and Xing 2022), on the tensor input pipeline: `cache_teacher_views` runs the teacher
once on K views of every training image (crop box and flip drawn by the training `DeviceImageTransform`), keeps each
view's parameters and the teacher's top-k logits (float16, bounded size), and saves them in one safetensors file keyed
by the teacher's weights, the images, the view settings, K and k, so a rerun loads it. `TeacherViewDataset` then
gives every row one of its views per epoch, with the soft labels of that view, and the collator replays exactly that
view (mixup and cutmix are refused: a mixed image is no cached view):

    decoded = decode_images(data.dataset["train"])
    collator = DeviceImageTransform(32, train=True, mean=..., std=..., device="cuda")
    cache = cache_teacher_views(teacher, decoded, collator, num_views=10, top_k=10)
    train = TeacherViewDataset(decoded, cache, seed=42)
    trainer = DistillationTrainer(..., train_dataset=train, data_collator=collator.with_replayed_views(),
                                  callbacks=[TeacherViewEpochCallback(train)])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..data import ROW_INDEX_COLUMN, ImageClassificationCollator, with_image_transform
from ..tensor_data import (
    SAMPLE_INDICES_KEY,
    VIEW_BOXES_KEY,
    VIEW_FLIPS_KEY,
    DecodedImages,
    DeviceImageTransform,
    TensorImageDataset,
)
from .teacher import Teacher

logger = logging.getLogger(__name__)

TEACHER_LOGITS_COLUMN = "teacher_logits"


@torch.no_grad()
def cache_teacher_logits(
    teacher: Teacher | nn.Module,
    split: datasets.Dataset,
    transform: Callable[[PIL.Image.Image], torch.Tensor],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> datasets.Dataset:
    """Runs the teacher once over `split` and returns its logits per source row.

    Args:
        teacher (`Teacher` or `nn.Module`): the teacher, with its input transform when its input differs from the
            student's (placed on `device` here).
        split (`datasets.Dataset`): a split of `ImageClassificationData.dataset` (with its `row_index` column).
        transform (`Callable`): the deterministic transform the student will train with (e.g. the eval transform).
        batch_size, num_workers, device: how to run it.

    Returns:
        `datasets.Dataset` with `row_index` (int64) and `teacher_logits` (float32 sequences).
    """
    if ROW_INDEX_COLUMN not in split.column_names:
        raise ValueError(
            f"the split has no '{ROW_INDEX_COLUMN}' column (columns: {split.column_names}); pass a split of "
            "load_image_classification_dataset, whose rows carry their source position."
        )
    _check_deterministic(split, transform)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = _as_teacher(teacher).place(device)
    prepared = with_image_transform(split, transform)
    loader = DataLoader(prepared, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=ImageClassificationCollator())  # fmt: skip
    logits = []
    for batch in loader:
        logits.append(teacher(batch["pixel_values"]).cpu())
    features = datasets.Features({
        ROW_INDEX_COLUMN: datasets.Value("int64"),
        TEACHER_LOGITS_COLUMN: datasets.Sequence(datasets.Value("float32")),
    })  # fmt: skip
    return datasets.Dataset.from_dict(
        {ROW_INDEX_COLUMN: split[ROW_INDEX_COLUMN], TEACHER_LOGITS_COLUMN: torch.cat(logits).numpy()},
        features=features,
    )


def teacher_outputs_by_row(cache: datasets.Dataset) -> dict[str, np.ndarray]:
    """The cache as arrays indexed by `row_index` (rows it lacks are NaN), for
    `with_image_transform(extra_columns=)`."""
    rows = np.asarray(cache[ROW_INDEX_COLUMN])
    logits = np.asarray(cache.with_format("numpy")[TEACHER_LOGITS_COLUMN], dtype=np.float32)
    table = np.full((int(rows.max()) + 1, logits.shape[1]), np.nan, dtype=np.float32)
    table[rows] = logits
    return {TEACHER_LOGITS_COLUMN: table}


_RANDOM_TRANSFORMS = ("AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ColorJitter", "MixUp", "CutMix")


def _check_deterministic(split: datasets.Dataset, transform: Callable) -> None:
    if len(split) == 0:
        return
    # Known random transforms by name (they may leave a given image unchanged by chance), then a few passes.
    names = [type(step).__name__ for step in getattr(transform, "transforms", [transform])]
    random_steps = [name for name in names if name.startswith("Random") or name in _RANDOM_TRANSFORMS]
    image = split.cast_column("image", datasets.Image())[0]["image"]
    outputs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outputs.append(transform(image))
    if random_steps or any(not torch.equal(outputs[0], output) for output in outputs[1:]):
        raise ValueError(
            "the transform is random (two passes over one image differ), so cached teacher logits would not match "
            "what the student sees; cache with a deterministic transform (build_transforms(..., train=False), or "
            "--crop none --horizontal_flip false without augmentation in the recipes), or use a live teacher."
        )


# ---- The offline teacher with augmentation: the teacher's outputs on K cached views of every training image ----

# Bump when the layout of a cached-views file changes, so old files are not read.
TEACHER_VIEWS_FORMAT_VERSION = 1


@dataclass
class TeacherViewCache:
    """The teacher's top-k logits on `num_views` augmented views of every row of a decoded split, with each view's
    parameters (as FKD, Shen and Xing 2022, stores its region coordinates and soft labels).

    Attributes:
        row_index (`torch.Tensor`): int64 `(rows,)`, each row's position in its source split (as `DecodedImages`).
        boxes (`torch.Tensor`): int16 `(rows, views, 4)`, each view's box (top, left, height, width) in the frame of
            `DeviceImageTransform.draw_views` for the transform's crop mode.
        flips (`torch.Tensor`): bool `(rows, views)`, each view's horizontal flip.
        top_logits (`torch.Tensor`): float16 `(rows, views, k)`, the teacher's `k` largest logits on each view.
        top_indices (`torch.Tensor`): int16 (int32 beyond 32767 labels) `(rows, views, k)`, their classes.
        tail_logits (`torch.Tensor`): float16 `(rows, views)`, the logit that each class outside the top `k` gets
            back (`dense_teacher_logits`); `-inf` when `k` is every class.
        num_labels (`int`): the teacher's number of classes.
    """

    row_index: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    top_logits: torch.Tensor
    top_indices: torch.Tensor
    tail_logits: torch.Tensor
    num_labels: int

    @property
    def num_views(self) -> int:
        return self.boxes.shape[1]

    @property
    def top_k(self) -> int:
        return self.top_logits.shape[2]

    def __len__(self) -> int:
        return len(self.row_index)

    def teacher_logits(self, positions: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The teacher's logits, float32 `(n, num_labels)`, for view `views[i]` of the row at position
        `positions[i]` (`dense_teacher_logits`)."""
        return dense_teacher_logits(self.top_logits[positions, views], self.top_indices[positions, views],
                                    self.tail_logits[positions, views], self.num_labels)  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        """Writes the cache to one safetensors file (beside, then renamed: a killed run leaves no truncated file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        tensors = {name: getattr(self, name).contiguous() for name in _VIEW_CACHE_TENSORS}
        save_file(tensors, str(partial), metadata={"num_labels": str(self.num_labels),
                                                   "format_version": str(TEACHER_VIEWS_FORMAT_VERSION)})  # fmt: skip
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherViewCache:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata()
            tensors = {name: file.get_tensor(name) for name in _VIEW_CACHE_TENSORS}
        return cls(**tensors, num_labels=int(metadata["num_labels"]))


_VIEW_CACHE_TENSORS = ("row_index", "boxes", "flips", "top_logits", "top_indices", "tail_logits")


def dense_teacher_logits(
    top_logits: torch.Tensor, top_indices: torch.Tensor, tail_logits: torch.Tensor, num_labels: int
) -> torch.Tensor:
    """Full teacher logits back from the top `k`: each top class its own logit, every other class the tail logit.

    The tail logit (`top_k_with_tail`) is `logsumexp` of the other classes' logits minus `log(num_labels - k)`: at
    temperature 1 the distribution given back has the teacher's exact probability on each top-k class and the
    remaining probability spread evenly over the others, as FKD's soft labels do. Renormalising over the top `k`
    instead would give the other classes probability 0 (logit -inf): reverse KL and the Jensen-Shannon terms take the
    log of the teacher's probability where the student has some (infinite), logit standardisation z-scores the logit
    vector (NaN with an infinity in it), and DKD's non-target term loses every class outside the top `k`. With the
    even spread every soft loss stays finite and unchanged in form. At a temperature T > 1 the tail is slightly
    heavier than the teacher's (the power mean of `exp(z)` over the tail is at least its mean of `exp(z / T)`), and
    with `k` equal to `num_labels` the logits are the teacher's, to float16 rounding.

    Args:
        top_logits (`torch.Tensor`): `(..., k)`, the largest logits.
        top_indices (`torch.Tensor`): `(..., k)`, their classes.
        tail_logits (`torch.Tensor`): `(...)`, the logit of every other class.
        num_labels (`int`): the number of classes.

    Returns:
        `torch.Tensor`: float32 `(..., num_labels)`.
    """
    dense = tail_logits.float()[..., None].expand(*tail_logits.shape, num_labels).clone()
    return dense.scatter_(-1, top_indices.long(), top_logits.float())


def top_k_with_tail(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` largest logits of each row, their classes, and the tail logit that `dense_teacher_logits` gives every
    other class: `logsumexp` of the others minus `log(num_labels - k)` (`-inf` when `k` is every class).

    Args:
        logits (`torch.Tensor`): `(batch, num_labels)`.
        k (`int`): how many to keep.

    Returns:
        `(top_logits, top_indices, tail_logits)`: `(batch, k)`, `(batch, k)`, `(batch,)`, float32 and int64.
    """
    logits = logits.float()
    num_labels = logits.shape[-1]
    top_logits, top_indices = logits.topk(k, dim=-1)
    if k == num_labels:
        return top_logits, top_indices, torch.full(logits.shape[:-1], -math.inf, device=logits.device)
    others = logits.scatter(-1, top_indices, -math.inf)
    return top_logits, top_indices, torch.logsumexp(others, dim=-1) - math.log(num_labels - k)


def teacher_views_cache_path(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `cache_teacher_views` keeps the views of `key` (`teacher_views_key`): beside `decode_images`' files."""
    root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "hf_vision_distill"
    return root / "teacher_views" / f"{key}-v{TEACHER_VIEWS_FORMAT_VERSION}.safetensors"


def teacher_views_key(
    teacher: Teacher | nn.Module,
    decoded: DecodedImages,
    transform: DeviceImageTransform,
    *,
    num_views: int,
    top_k: int,
    seed: int,
) -> str:
    """The cache key of `cache_teacher_views`: a digest of the teacher's class, weights, input transform and compute
    dtype (`Teacher.compute_dtype`: its autocast's, if any), the decoded images and their row indices, the view
    geometry (crop mode and padding, flip, size, interpolation, normalisation), the number of views, `top_k` and the
    seed that draws the views. Any change computes a new cache."""
    teacher = _as_teacher(teacher)
    model = teacher.model
    digest = hashlib.sha256()
    settings = {
        "teacher": f"{type(model).__module__}.{type(model).__qualname__}",
        "crop": transform.crop,
        "padding": transform.padding,
        "horizontal_flip": transform.horizontal_flip,
        "image_size": list(transform.image_size),
        "interpolation": transform.interpolation,
        "scale": transform.scale.flatten().tolist(),
        "shift": transform.shift.flatten().tolist(),
        "teacher_input_transform": repr(teacher.input_transform),
        "teacher_compute_dtype": str(teacher.compute_dtype),  # a bf16-autocast teacher's logits are not float32's
        "num_views": num_views,
        "top_k": top_k,
        "seed": seed,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    for tensor in (decoded.images, decoded.row_index, decoded.labels):
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:32]


def _as_teacher(teacher: Teacher | nn.Module) -> Teacher:
    return teacher if isinstance(teacher, Teacher) else Teacher(teacher)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


@torch.no_grad()
def cache_teacher_views(
    teacher: Teacher | nn.Module,
    decoded: DecodedImages,
    transform: DeviceImageTransform,
    *,
    num_views: int,
    top_k: int,
    seed: int | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> TeacherViewCache:
    """The teacher's top-k logits on `num_views` augmented views of every training image, with each view's box and
    flip, or the cache file a previous run wrote for the same inputs (`teacher_views_key`).

    The views are drawn by `transform.draw_views` (the training geometry: pad-and-crop or random-resized crop, flip)
    from a CPU generator seeded with `seed`, for the whole split at once (so they do not depend on `batch_size`), and
    applied by `transform.apply_views` on the transform's device (the training device, where the teacher runs), as
    training replays them (`TeacherViewDataset` with `transform.with_replayed_views()`): the teacher saw exactly the
    pixels the student will see. Mixup and cutmix are refused (a mixed image is not a view of one row).

    Args:
        teacher (`Teacher` or `nn.Module`): the teacher, with its input transform when its input differs from the
            student's (placed on the transform's device here).
        decoded (`DecodedImages`): the training split (`decode_images`).
        transform (`DeviceImageTransform`): the training collator (`train=True`), whose geometry draws the views.
        num_views (`int`): views per image (K).
        top_k (`int`): logits kept per view (at most the number of classes; the rest share the remaining
            probability, `dense_teacher_logits`).
        seed (`int`, *optional*): the seed of the views' draws; defaults to `transform.seed`.
        batch_size (`int`): images per teacher forward pass (each of its views in turn).
        cache_dir (`str`, *optional*): folder of the cache files; defaults to `<HF_DATASETS_CACHE>/hf_vision_distill`.
        progress (`bool`): show a progress bar over the teacher's batches (the cache can take as long as K epochs of
            the live teacher).

    Returns:
        `TeacherViewCache`, rows in the order of `decoded`.
    """
    if num_views < 1 or top_k < 1:
        raise ValueError(f"num_views={num_views} and top_k={top_k} must be >= 1.")
    if len(decoded) == 0:
        raise ValueError("the split has no images to cache the teacher's views of.")
    if not transform.train:
        raise ValueError("transform is an evaluation transform (train=False); pass the training DeviceImageTransform.")
    transform._check_replayable()  # no mixing: the same error as the replaying collator would give
    if transform.crop == "none" and not transform.horizontal_flip and num_views > 1:
        logger.warning("The training transform draws no crop and no flip: the %d cached views are one image.",
                       num_views)  # fmt: skip
    seed = transform.seed if seed is None else seed
    # Placed first: the key hashes the weights as they run (its dtype), whatever placed the teacher before.
    teacher = _as_teacher(teacher).place(transform.device)
    key = teacher_views_key(teacher, decoded, transform, num_views=num_views, top_k=top_k, seed=seed)
    path = teacher_views_cache_path(key, cache_dir)
    if path.is_file():
        logger.info("Loaded the teacher's outputs on %d views of %d images from %s", num_views, len(decoded), path)
        return TeacherViewCache.load(path)

    rows = len(decoded)
    generator = torch.Generator().manual_seed(seed)
    boxes, flips = [], []
    for _ in range(num_views):
        view_boxes, view_flips = transform.draw_views(rows, decoded.image_size, generator, device="cpu")
        boxes.append(view_boxes)
        flips.append(torch.zeros(rows, dtype=torch.bool) if view_flips is None else view_flips)
    boxes, flips = torch.stack(boxes, dim=1), torch.stack(flips, dim=1)

    device = transform.device
    top_logits, top_indices, tail_logits = [], [], []
    num_labels = None
    logger.info("Running the teacher on %d views of %d images (once; later runs with the same teacher, images and "
                "view settings load the file %s)", num_views, rows, path)  # fmt: skip
    batches = range(0, rows, batch_size)
    for start in tqdm(batches, desc=f"Teacher on {num_views} views", unit="batch", disable=not progress):
        chunk = slice(start, start + batch_size)
        images = decoded.images[chunk].to(device).float()
        per_view = []
        for view in range(num_views):
            pixel_values = transform.normalise(transform.apply_views(images, boxes[chunk, view], flips[chunk, view]))
            logits = teacher(pixel_values)
            num_labels = logits.shape[-1]
            if top_k > num_labels:
                raise ValueError(f"top_k={top_k} is more than the teacher's {num_labels} classes; pass at most that.")
            per_view.append(top_k_with_tail(logits, top_k))
        for store, part in zip((top_logits, top_indices, tail_logits), zip(*per_view)):
            store.append(torch.stack(part, dim=1).cpu())
    top_logits, top_indices, tail_logits = torch.cat(top_logits), torch.cat(top_indices), torch.cat(tail_logits)
    largest = torch.cat([top_logits.flatten(), tail_logits[torch.isfinite(tail_logits)]]).abs().max().item()
    if largest > torch.finfo(torch.float16).max:
        raise ValueError(
            f"the teacher gives logits as large as {largest:.4g}, beyond float16 (65504), in which the cache keeps "
            "them; distill from the live teacher, or from a teacher with bounded logits."
        )
    cache = TeacherViewCache(
        row_index=decoded.row_index.clone(),
        boxes=boxes.to(torch.int16),
        flips=flips,
        top_logits=top_logits.half(),
        top_indices=top_indices.to(torch.int16 if num_labels <= torch.iinfo(torch.int16).max else torch.int32),
        tail_logits=tail_logits.half(),
        num_labels=num_labels,
    )
    cache.save(path)
    logger.info("Cached the teacher's top-%d logits on %d views of %d images in %s", top_k, num_views, rows, path)
    return cache


class TeacherViewDataset(TensorImageDataset):
    """A decoded training split whose batches bring, for every row, one cached view (its box and flip, for a
    `DeviceImageTransform.with_replayed_views()` collator) and the teacher's logits on it (`teacher_logits`, full
    again through `dense_teacher_logits`).

    Row `i` replays view `(offset[i] + epoch) % num_views` in epoch `epoch`, where `offset[i]` is drawn once from
    `seed`: every view of every row is seen once in any `num_views` consecutive epochs, and rows see different views in
    the same epoch. The epoch comes from `set_epoch`, which the Trainer's dataloader calls in a single process; add
    `TeacherViewEpochCallback(dataset)` to the Trainer so that it is set under several processes too and after a
    resumption.

    Args:
        decoded (`DecodedImages`): the training split, as the cache was computed on it.
        cache (`TeacherViewCache`): `cache_teacher_views(..., decoded, ...)`.
        seed (`int`): the seed of the rows' view offsets.
    """

    def __init__(self, decoded: DecodedImages, cache: TeacherViewCache, seed: int = 42):
        super().__init__(decoded)
        if len(cache) != len(decoded) or not torch.equal(cache.row_index, decoded.row_index):
            raise ValueError(
                f"the cached views are of {len(cache)} rows and the split has {len(decoded)} (or other rows); compute "
                "the cache on this split (cache_teacher_views) before training from it."
            )
        self.cache = cache
        self.epoch = 0
        generator = torch.Generator().manual_seed(seed)
        self.view_offsets = torch.randint(0, cache.num_views, (len(decoded),), generator=generator)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def views(self, positions: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        """The view each row at `positions` replays in `epoch` (defaults to the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return (self.view_offsets[positions] + epoch) % self.cache.num_views

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        del batch[SAMPLE_INDICES_KEY]
        return {name: value[0] for name, value in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        positions = batch[SAMPLE_INDICES_KEY]
        views = self.views(positions)
        batch[VIEW_BOXES_KEY] = self.cache.boxes[positions, views].float()
        batch[VIEW_FLIPS_KEY] = self.cache.flips[positions, views]
        batch[TEACHER_LOGITS_COLUMN] = self.cache.teacher_logits(positions, views)
        return batch


class TeacherViewEpochCallback(TrainerCallback):
    """Tells a `TeacherViewDataset` the epoch at the start of each (the integer part of the Trainer's epoch, which a
    resumed run restores), whether or not the dataloader forwards `set_epoch` to its dataset."""

    def __init__(self, dataset: TeacherViewDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch or 0))


__all__ = [
    "TEACHER_LOGITS_COLUMN",
    "TeacherViewCache",
    "TeacherViewDataset",
    "TeacherViewEpochCallback",
    "cache_teacher_logits",
    "cache_teacher_views",
    "dense_teacher_logits",
    "teacher_outputs_by_row",
    "teacher_views_cache_path",
    "teacher_views_key",
    "top_k_with_tail",
]
