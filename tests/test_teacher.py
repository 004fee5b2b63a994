"""`distillation.Teacher`: loading next to a student, freezing, precision and placement."""

import pytest
import torch

from hf_vision_distill import (
    CompactCNNConfig,
    CompactCNNForImageClassification,
    VisionTransformerConfig,
    VisionTransformerForImageClassification,
)
from hf_vision_distill.distillation import Teacher
from hf_vision_distill.models import load_image_classifier

LABELS = {0: "cat", 1: "dog", 2: "ship"}


def saved_vit(folder, image_size: int = 32, labels: dict[int, str] = LABELS) -> str:
    torch.manual_seed(0)
    config = VisionTransformerConfig(image_size=image_size, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, id2label=labels,
                                     label2id={name: index for index, name in labels.items()})  # fmt: skip
    VisionTransformerForImageClassification(config).save_pretrained(folder)
    return str(folder)


def saved_cnn_student(folder) -> str:
    torch.manual_seed(0)
    config = CompactCNNConfig(hidden_sizes=[4, 8, 8], depths=[1, 1, 1], image_size=16, id2label=LABELS,
                              label2id={name: index for index, name in LABELS.items()})  # fmt: skip
    CompactCNNForImageClassification(config).save_pretrained(folder)
    return str(folder)


def test_from_pretrained_beside_a_student_takes_its_batches_to_the_teacher_input(tmp_path):
    student = load_image_classifier(saved_cnn_student(tmp_path / "student"), id2label=None)
    teacher = Teacher.from_pretrained(saved_vit(tmp_path / "teacher"), student=student)
    assert not teacher.model.training
    assert not any(parameter.requires_grad for parameter in teacher.model.parameters())
    assert teacher.image_size == (32, 32) and teacher.input_transform.teacher.image_size == (32, 32)
    batch = torch.randn(2, 3, *student.input_specification.image_size)
    assert teacher.inputs(batch).shape == (2, 3, 32, 32)
    assert teacher(batch).shape == (2, 3) and teacher(batch).dtype == torch.float32
    # Same input as the student: nothing to transform.
    same = load_image_classifier(saved_vit(tmp_path / "same"), id2label=None)
    assert Teacher.from_pretrained(str(tmp_path / "same"), student=same).input_transform is None


def test_a_teacher_of_other_classes_is_refused_before_it_runs(tmp_path):
    student = load_image_classifier(saved_cnn_student(tmp_path / "student"), id2label=None)
    other = saved_vit(tmp_path / "teacher", labels={0: "cat", 1: "dog", 2: "truck"})
    with pytest.raises(ValueError, match="name their classes differently"):
        Teacher.from_pretrained(other, student=student)


def test_placement_casts_the_weights_and_lays_out_a_cnn_channels_last(tmp_path):
    vit = load_image_classifier(saved_vit(tmp_path / "teacher"), id2label=None).model
    teacher = Teacher(vit, dtype="bfloat16").place("cpu")
    assert {parameter.dtype for parameter in teacher.model.parameters()} == {torch.bfloat16}
    cnn = Teacher(CompactCNNForImageClassification(CompactCNNConfig(hidden_sizes=[4, 8, 8], depths=[1, 1, 1])))
    cnn.place("cpu")
    convolution = next(module for module in cnn.model.modules() if isinstance(module, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="float16"):
        Teacher(vit, dtype=torch.float16)
