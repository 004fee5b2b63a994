"""Teacher-student distillation: `DistillationConfig` (TrainingArguments) beside `DistillationTrainer` (Trainer)."""

from .distillation_config import DistillationConfig
from .distillation_trainer import DistillationTrainer, TeacherView, check_label_spaces

__all__ = ["DistillationConfig", "DistillationTrainer", "TeacherView", "check_label_spaces"]
