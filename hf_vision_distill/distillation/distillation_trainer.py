"""`DistillationTrainer`: a `Trainer` whose loss mixes the labels with a frozen teacher's predictions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel

from ..losses import hard_distillation_loss, soft_distillation_loss
from ..training import ImageClassificationTrainer, classification_loss
from .distillation_config import DistillationConfig


@dataclass
class TeacherView:
    """Turns the student's normalised batch into the teacher's input: same images, the teacher's size and statistics.

    The teacher sees exactly the augmented (and mixed) images the student sees: the batch is un-normalised with the
    student's mean/std, resized to the teacher's size, and normalised with the teacher's mean/std, on the device.
    Upsampling a 32-pixel image to 224 adds no detail, so this is exact for data stored at the student's size
    (CIFAR); for larger source images the teacher sees them at the student's resolution.
    """

    student_mean: tuple[float, ...]
    student_std: tuple[float, ...]
    teacher_size: tuple[int, int]
    teacher_mean: tuple[float, ...]
    teacher_std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        def as_column(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, device=pixel_values.device, dtype=pixel_values.dtype)[None, :, None, None]

        images = pixel_values * as_column(self.student_std) + as_column(self.student_mean)
        if tuple(images.shape[-2:]) != tuple(self.teacher_size):
            downsampling = images.shape[-1] > self.teacher_size[1] or images.shape[-2] > self.teacher_size[0]
            images = F.interpolate(
                images, size=self.teacher_size, mode=self.interpolation, align_corners=False, antialias=downsampling
            )
        return (images - as_column(self.teacher_mean)) / as_column(self.teacher_std)


def check_label_spaces(student_config: PreTrainedConfig, teacher_config: PreTrainedConfig) -> None:
    """Fails when teacher and student predict different classes (count, or names where both have real names)."""
    student_labels = {int(index): name for index, name in (student_config.id2label or {}).items()}
    teacher_labels = {int(index): name for index, name in (teacher_config.id2label or {}).items()}
    if len(student_labels) != len(teacher_labels):
        raise ValueError(
            f"the teacher predicts {len(teacher_labels)} classes but the student {len(student_labels)}; distillation "
            "needs the same label space. Fine-tune the teacher on the student's dataset first (examples/train.py)."
        )

    def is_generic(labels: dict[int, str]) -> bool:
        return all(name == f"LABEL_{index}" for index, name in labels.items())

    if is_generic(student_labels) or is_generic(teacher_labels):
        return
    differences = [(index, student_labels[index], teacher_labels.get(index)) for index in sorted(student_labels)
                   if student_labels[index] != teacher_labels.get(index)]  # fmt: skip
    if differences:
        shown = ", ".join(
            f"{index}: student {student!r} vs teacher {teacher!r}" for index, student, teacher in differences[:5]
        )
        raise ValueError(
            f"teacher and student name their classes differently ({len(differences)} of {len(student_labels)}: "
            f"{shown}). Train the teacher on the same dataset, or give both the same id2label."
        )


class DistillationTrainer(ImageClassificationTrainer):
    """A `Trainer` that distills a frozen teacher into the student (`model`).

    The teacher is put in eval mode with gradients off, placed on the device by Accelerate in evaluation mode (no DDP
    wrapper, autocast under mixed precision), cast to the mixed-precision dtype, and run under `torch.no_grad()`. It
    is an attribute of the trainer, not of the model, so it is never saved into the student's checkpoints.

    Args:
        model (`PreTrainedModel`):
            The student.
        teacher_model (`nn.Module` or `str`, *optional*):
            The teacher, or a local directory / Hub id for `AutoModelForImageClassification.from_pretrained`;
            defaults to `args.teacher_model_name_or_path`. Its `id2label` must match the student's.
        args (`DistillationConfig`):
            Training arguments, temperature and loss weights.
        teacher_view (`TeacherView`, *optional*):
            Maps the student's batch to the teacher's input when their sizes or normalisations differ.
        kwargs:
            As for [`ImageClassificationTrainer`] (datasets, collators, `compute_metrics`, `processing_class`, ...).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        teacher_model: nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        teacher_view: TeacherView | None = None,
        **kwargs,
    ):
        if not isinstance(args, DistillationConfig):
            raise ValueError(f"args must be a DistillationConfig, got {type(args).__name__}.")
        super().__init__(model=model, args=args, **kwargs)
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher_model is None and args.needs_teacher:
            raise ValueError(
                "no teacher: pass teacher_model= or set teacher_model_name_or_path, or set soft_loss_weight and "
                "hard_loss_weight to 0 to train the student on labels alone."
            )
        if isinstance(teacher_model, str):
            teacher_model = AutoModelForImageClassification.from_pretrained(teacher_model)
        if teacher_model is not None:
            if hasattr(teacher_model, "config") and hasattr(self.model, "config"):
                check_label_spaces(self.model.config, teacher_model.config)
            teacher_model.eval().requires_grad_(False)
            if args.bf16 or args.fp16:
                teacher_model.to(torch.bfloat16 if args.bf16 else torch.float16)
            teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.teacher_model = teacher_model
        self.teacher_view = teacher_view
        self._loss_components: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        labels = inputs.get("labels")
        pixel_values = inputs["pixel_values"]
        student_outputs = model(pixel_values=pixel_values)
        student_logits = student_outputs.logits
        args: DistillationConfig = self.args

        components: dict[str, torch.Tensor] = {}
        if args.label_loss_weight > 0:
            if labels is None:
                raise ValueError("label_loss_weight > 0 needs 'labels' in every batch.")
            label_smoothing = args.label_smoothing_factor if model.training else 0.0
            components["label"] = classification_loss(student_logits, labels, label_smoothing)
        if args.needs_teacher:
            teacher_logits = self._teacher_logits(pixel_values)
            if args.soft_loss_weight > 0:
                components["soft"] = soft_distillation_loss(student_logits, teacher_logits, args.temperature)
            if args.hard_loss_weight > 0:
                components["hard"] = hard_distillation_loss(student_logits, teacher_logits)
        weights = {"label": args.label_loss_weight, "soft": args.soft_loss_weight, "hard": args.hard_loss_weight}
        loss = sum(weights[name] * value for name, value in components.items())

        mode = "train" if model.training else "eval"
        for name, value in components.items():
            self._loss_components[mode][f"loss_{name}"].append(value.detach().float().item())
        return (loss, student_outputs) if return_outputs else loss

    @torch.no_grad()
    def _teacher_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        teacher_inputs = self.teacher_view(pixel_values) if self.teacher_view is not None else pixel_values
        parameter = next(self.teacher_model.parameters())
        outputs = self.teacher_model(pixel_values=teacher_inputs.to(device=parameter.device, dtype=parameter.dtype))
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        return logits.float()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        self._loss_components["eval"].clear()
        self._metric_key_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Averages of each loss term since the last log, beside the Trainer's total (TRL's pattern): the model is in
        # eval mode exactly while evaluate() logs its metrics.
        mode = "train" if self.model.training else "eval"
        prefix = f"{getattr(self, '_metric_key_prefix', 'eval')}_" if mode == "eval" else ""
        for name, values in self._loss_components[mode].items():
            if values:
                logs[f"{prefix}{name}"] = sum(values) / len(values)
        self._loss_components[mode].clear()
        super().log(logs, start_time)


__all__ = ["DistillationTrainer", "TeacherView", "check_label_spaces"]
