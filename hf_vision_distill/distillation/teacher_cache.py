"""An offline teacher: its logits computed once per example, kept in a `datasets.Dataset` keyed by source row.

Training from the cache skips the teacher's forward pass at every step, which pays when the teacher is large compared
with the student (the expected speedup is about 1 + F_teacher / (3 F_student): a student step is a forward and a
backward, about three forwards). The cache is only valid when every epoch shows the teacher the same image for a row,
so it is computed with, and may only be used with, a deterministic transform (no random crops, flips, augmentation,
mixup or cutmix). `cache_teacher_logits` checks that by transforming one image twice.

    cache = cache_teacher_logits(teacher, data.dataset["train"], build_transforms(32, train=False))
    cache.save_to_disk("outputs/teacher_cache")            # or cache.push_to_hub("user/cifar10-vit-logits")
    train = with_image_transform(data.dataset["train"], build_transforms(32, train=False),
                                 row_outputs=teacher_outputs_by_row(cache))

Every split the trainer evaluates on needs its own cache too (its evaluation loss includes the teacher terms);
examples/distill.py --offline_teacher caches train, validation and test.

Under several processes, compute the cache once: the process that saves runs `cache_teacher_logits` and
`save_to_disk` inside `training_args.main_process_first(local=training_args.save_on_each_node)`, and the others
`datasets.load_from_disk` the result there (examples/distill.py `cache_teacher`).
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np
import PIL.Image
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import ROW_INDEX_COLUMN, ImageClassificationCollator, with_image_transform

TEACHER_LOGITS_COLUMN = "teacher_logits"


@torch.no_grad()
def cache_teacher_logits(
    teacher: nn.Module,
    split: datasets.Dataset,
    transform: Callable[[PIL.Image.Image], torch.Tensor],
    *,
    teacher_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> datasets.Dataset:
    """Runs the teacher once over `split` and returns its logits per source row.

    Args:
        teacher (`nn.Module`): the teacher (put in eval mode here).
        split (`datasets.Dataset`): a split of `ImageClassificationData.dataset` (with its `row_index` column).
        transform (`Callable`): the deterministic transform the student will train with (e.g. the eval transform).
        teacher_view (`Callable`, *optional*): maps the transformed batch to the teacher's input (`TeacherView`).
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
    teacher = teacher.eval().to(device)
    prepared = with_image_transform(split, transform)
    loader = DataLoader(prepared, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=ImageClassificationCollator())  # fmt: skip
    logits = []
    for batch in loader:
        pixel_values = batch["pixel_values"].to(device)
        if teacher_view is not None:
            pixel_values = teacher_view(pixel_values)
        parameter = next(teacher.parameters())
        outputs = teacher(pixel_values=pixel_values.to(parameter.dtype))
        logits.append((outputs.logits if hasattr(outputs, "logits") else outputs).float().cpu())
    features = datasets.Features({
        ROW_INDEX_COLUMN: datasets.Value("int64"),
        TEACHER_LOGITS_COLUMN: datasets.Sequence(datasets.Value("float32")),
    })  # fmt: skip
    return datasets.Dataset.from_dict(
        {ROW_INDEX_COLUMN: split[ROW_INDEX_COLUMN], TEACHER_LOGITS_COLUMN: torch.cat(logits).numpy()},
        features=features,
    )


def teacher_outputs_by_row(cache: datasets.Dataset) -> dict[str, np.ndarray]:
    """The cache as arrays indexed by `row_index` (rows it lacks are NaN), for `with_image_transform(row_outputs=)`."""
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


__all__ = ["TEACHER_LOGITS_COLUMN", "cache_teacher_logits", "teacher_outputs_by_row"]
