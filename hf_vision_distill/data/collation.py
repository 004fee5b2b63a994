"""Collating transformed examples into batches: stacking, uint8 normalisation on the device, mixup/cutmix and soft
targets."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from .loading import ROW_INDEX_COLUMN

logger = logging.getLogger(__name__)


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
        # Per-example arrays the transform carried (its `extra_columns`) are stacked as they are; the row index was
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
