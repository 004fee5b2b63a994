"""Teacher-student distillation: `DistillationConfig` (TrainingArguments) beside `DistillationTrainer` (Trainer), the
`Teacher` it runs and the student with its adapters it trains."""

from .adapters import StudentWithAdapters
from .distillation_config import DistillationConfig
from .distillation_trainer import DistillationTrainer
from .layerwise import LayerwiseDistillationTrainer, block_names, transformer_blocks
from .teacher import Teacher, TeacherInputTransform, check_label_spaces, gives_attention_maps, use_eager_attention
from .teacher_cache import (
    TEACHER_LOGITS_COLUMN,
    TeacherViewCache,
    TeacherViewDataset,
    TeacherViewEpochCallback,
    cache_teacher_logits,
    cache_teacher_views,
    dense_teacher_logits,
    teacher_outputs_by_row,
)

__all__ = [
    "TEACHER_LOGITS_COLUMN",
    "DistillationConfig",
    "DistillationTrainer",
    "LayerwiseDistillationTrainer",
    "StudentWithAdapters",
    "Teacher",
    "TeacherInputTransform",
    "TeacherViewCache",
    "TeacherViewDataset",
    "TeacherViewEpochCallback",
    "block_names",
    "cache_teacher_logits",
    "cache_teacher_views",
    "check_label_spaces",
    "dense_teacher_logits",
    "gives_attention_maps",
    "teacher_outputs_by_row",
    "transformer_blocks",
    "use_eager_attention",
]
