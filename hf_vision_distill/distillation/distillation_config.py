"""`DistillationConfig`: `TrainingArguments` plus what a teacher-student run needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    Arguments of [`DistillationTrainer`]: every `TrainingArguments` field, plus the teacher and the loss weights.

    The training loss is

        label_loss_weight * CE(student, labels)
        + soft_loss_weight * KL(teacher / T || student / T) * T^2
        + hard_loss_weight * CE(student, argmax teacher)

    and each term is logged on its own (`loss_label`, `loss_soft`, `loss_hard`).
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The teacher, when the trainer is not given a model: a local directory or Hub id that "
            "AutoModelForImageClassification loads (ours, transformers', timm/...). Its labels must be the student's."
        },
    )
    temperature: float = field(
        default=4.0, metadata={"help": "Softmax temperature T of the soft (KL) distillation loss."}
    )
    label_loss_weight: float = field(
        default=0.5, metadata={"help": "Weight of the cross-entropy against the dataset's labels."}
    )
    soft_loss_weight: float = field(
        default=0.5, metadata={"help": "Weight of the soft distillation loss, KL(teacher || student) at T, times T^2."}
    )
    hard_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight of DeiT's hard distillation: cross-entropy on the teacher's argmax."}
    )
    # The recipes' datasets keep the image column, which the model's forward does not take.
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep dataset columns the model does not take (the lazy image transform needs them)."},
    )

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive (typical values: 1 to 4).")
        weights = {
            "label_loss_weight": self.label_loss_weight,
            "soft_loss_weight": self.soft_loss_weight,
            "hard_loss_weight": self.hard_loss_weight,
        }
        negative = {name: weight for name, weight in weights.items() if weight < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}.")
        if not any(weights.values()):
            raise ValueError(f"every loss weight is 0 ({weights}); give at least one a positive weight.")
        super().__post_init__()

    @property
    def needs_teacher(self) -> bool:
        """Whether any loss term reads the teacher's outputs."""
        return self.soft_loss_weight > 0 or self.hard_loss_weight > 0


__all__ = ["DistillationConfig"]
