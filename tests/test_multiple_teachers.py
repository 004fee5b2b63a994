"""Several teachers at once: the ensemble's closed form, the trainer's soft term against it, per-teacher terms,
each teacher's own input view, and the checks made before any work."""

import pytest
import torch
import torch.nn.functional as F
from test_distillation_trainer import config, rows, stack

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification
from hf_vision_distill.distillation import DistillationTrainer, Teacher, TeacherInputTransform
from hf_vision_distill.losses import (
    hard_distillation_loss,
    soft_distillation_loss,
    standardize_logits,
    teacher_ensemble_logits,
)
from hf_vision_distill.models import InputSpecification
from hf_vision_distill.training import classification_loss

LABELS = {0: "cat", 1: "dog", 2: "bird"}
LABEL_IDS = {name: index for index, name in LABELS.items()}


def vit(seed: int, image_size: int = 16, hidden_size: int = 16, **label_fields):
    torch.manual_seed(seed)
    label_fields = label_fields or {"id2label": LABELS, "label2id": LABEL_IDS}
    config = VisionTransformerConfig(image_size=image_size, patch_size=8, hidden_size=hidden_size, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, **label_fields)  # fmt: skip
    return VisionTransformerForImageClassification(config)


def test_the_ensemble_softmax_is_the_weighted_average_of_the_teachers():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(5, 4, generator=generator) * 3, torch.randn(5, 4, generator=generator) * 3
    for temperature in (1.0, 4.0):
        ensemble = teacher_ensemble_logits([first, second], [0.25, 0.75], temperature)
        expected = 0.25 * F.softmax(first / temperature, -1) + 0.75 * F.softmax(second / temperature, -1)
        torch.testing.assert_close(F.softmax(ensemble / temperature, -1), expected)
    # one teacher: its own distribution, so every soft loss is unchanged
    alone = teacher_ensemble_logits([first], [1.0], 4.0)
    torch.testing.assert_close(F.softmax(alone / 4.0, -1), F.softmax(first / 4.0, -1))
    with pytest.raises(ValueError, match="one weight per teacher"):
        teacher_ensemble_logits([first, second], [1.0], 1.0)
    with pytest.raises(ValueError, match="non-negative and sum to 1"):
        teacher_ensemble_logits([first, second], [0.5, 0.7], 1.0)


def test_the_soft_term_is_kd_against_the_weighted_average_of_the_teachers(tmp_path):
    student, first, second = vit(0, hidden_size=8), vit(1), vit(2)
    args = config(tmp_path, temperature=2.0, label_loss_weight=0.3, soft_loss_weight=0.7, hard_loss_weight=0.1,
                  teacher_weights=[1.0, 3.0])  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher=[first, second], args=args, data_collator=stack)
    assert trainer.teacher_weights == [0.25, 0.75] and len(trainer.teachers) == 2
    batch = stack(rows(4))
    student.eval()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        pixels = batch["pixel_values"]
        student_logits, first_logits, second_logits = (model(pixels).logits for model in (student, first, second))
    soft_target = teacher_ensemble_logits([first_logits, second_logits], [0.25, 0.75], 2.0)
    hard_target = teacher_ensemble_logits([first_logits, second_logits], [0.25, 0.75], 1.0)
    expected = (0.3 * classification_loss(student_logits, batch["labels"])
                + 0.7 * soft_distillation_loss(student_logits, soft_target, 2.0)
                + 0.1 * hard_distillation_loss(student_logits, hard_target))  # fmt: skip
    torch.testing.assert_close(loss, expected)


def test_one_soft_term_per_teacher_and_standardisation_per_teacher(tmp_path):
    student, first, second = vit(0, hidden_size=8), vit(1), vit(2)
    args = config(tmp_path, temperature=2.0, label_loss_weight=0.0, soft_loss_weight=1.0,
                  teacher_ensemble="per_teacher", logit_standardization=True)  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher=[first, second], args=args, data_collator=stack)
    batch = stack(rows(4))
    student.eval()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        pixels = batch["pixel_values"]
        student_logits, first_logits, second_logits = (
            standardize_logits(model(pixels).logits) for model in (student, first, second)
        )
    expected = 0.5 * soft_distillation_loss(student_logits, first_logits, 2.0) + 0.5 * soft_distillation_loss(
        student_logits, second_logits, 2.0
    )
    torch.testing.assert_close(loss, expected)
    assert {"loss_soft_teacher_0", "loss_soft_teacher_1"} <= set(trainer.logged_terms["eval"])


def test_each_teacher_sees_its_own_view_and_training_leaves_them_frozen(tmp_path):
    student = vit(0, hidden_size=8)
    small, large = vit(1), vit(2, image_size=32)
    view = TeacherInputTransform(InputSpecification(16, (0.5,) * 3, (0.5,) * 3),
                                 InputSpecification(32, (0.5,) * 3, (0.5,) * 3))  # fmt: skip
    before = {name: value.clone() for name, value in large.state_dict().items()}
    args = config(tmp_path, eval_strategy="steps", eval_steps=2)
    trainer = DistillationTrainer(model=student, teacher=[small, Teacher(large, view)], args=args,
                                  train_dataset=rows(), eval_dataset=rows(4), data_collator=stack)  # fmt: skip
    trainer.train()
    for name, value in large.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)
    evaluations = [entry for entry in trainer.state.log_history if "eval_agreement" in entry]
    assert evaluations  # agreement with the teachers' ensemble


def test_mismatched_teachers_and_weights_are_refused_before_any_work(tmp_path):
    student = vit(0, hidden_size=8)
    other_labels = vit(1, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    with pytest.raises(ValueError, match="the teacher predicts 2 classes but the student 3"):
        DistillationTrainer(model=student, teacher=[vit(2), other_labels], args=config(tmp_path), data_collator=stack)
    with pytest.raises(ValueError, match="teacher_weights has 3 weights for 2 teachers"):
        DistillationTrainer(model=student, teacher=[vit(1), vit(2)], args=config(tmp_path, teacher_weights=[1, 1, 1]),
                            data_collator=stack)  # fmt: skip
    with pytest.raises(ValueError, match="teacher_ensemble='vote'"):
        config(tmp_path, teacher_ensemble="vote")
    with pytest.raises(ValueError, match="teacher_weights"):
        config(tmp_path, teacher_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="offline_teacher caches one teacher"):
        config(tmp_path, offline_teacher=True, attention_loss_weight=0.0, extra_teachers=["somewhere"])


def test_a_teacher_named_in_extra_teachers_gets_the_view_the_student_processor_says(tmp_path):
    student, large = vit(0, hidden_size=8), vit(2, image_size=32)
    large.save_pretrained(tmp_path / "large")
    InputSpecification(32, (0.5,) * 3, (0.5,) * 3).image_processor().save_pretrained(tmp_path / "large")
    processor = InputSpecification(16, (0.4,) * 3, (0.2,) * 3).image_processor()
    args = config(tmp_path, extra_teachers=[str(tmp_path / "large")])
    trainer = DistillationTrainer(model=student, teacher=vit(1), args=args, data_collator=stack,
                                  processing_class=processor)  # fmt: skip
    transform = trainer.teachers[1].input_transform
    assert transform.student == InputSpecification(16, (0.4,) * 3, (0.2,) * 3)
    assert transform.teacher.image_size == (32, 32)
    student.eval()
    assert torch.isfinite(trainer.compute_loss(student, stack(rows(4))))  # the 32-pixel teacher got 32-pixel images
    with pytest.raises(ValueError, match="teacher= lists 1 teachers and extra_teachers names 1 more"):
        DistillationTrainer(model=student, teacher=[vit(1)], args=args, data_collator=stack)


def test_teacher_weights_are_checked_against_the_named_teachers_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights has 3 weights for 2 teachers"):
        config(tmp_path, extra_teachers=["elsewhere"], teacher_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="offline_teacher caches one"):
        config(tmp_path, offline_teacher=True, teacher_weights=[1.0])
