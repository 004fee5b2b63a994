"""The distillation losses against their closed forms, written out by hand."""

import math

import pytest
import torch

from hf_vision_distill.losses import (
    attention_alignment_loss,
    attention_entropy,
    cls_attention_map,
    entropy_layer_weights,
    feature_distillation_loss,
    feature_energy_map,
    hard_distillation_loss,
    resize_distribution,
    soft_distillation_loss,
    uniform_entropy,
)


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exponentials = [math.exp(value / temperature) for value in values]
    return [exponential / sum(exponentials) for exponential in exponentials]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_distillation_is_kl_times_t_squared(temperature):
    student = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]]
    teacher = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    expected = 0.0
    for student_row, teacher_row in zip(student, teacher):
        p, q = softmax(teacher_row, temperature), softmax(student_row, temperature)
        expected += sum(p_i * math.log(p_i / q_i) for p_i, q_i in zip(p, q))
    expected = expected / len(student) * temperature**2
    actual = soft_distillation_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert actual.item() == pytest.approx(expected, rel=1e-5)


def test_soft_distillation_is_zero_for_equal_logits_and_has_a_gradient():
    logits = torch.randn(4, 10)
    assert soft_distillation_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 10, requires_grad=True)
    soft_distillation_loss(student, torch.randn(4, 10), 2.0).backward()
    assert student.grad.abs().sum() > 0


def test_soft_distillation_rejects_bad_inputs():
    with pytest.raises(ValueError, match="temperature=0"):
        soft_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="same label space"):
        soft_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_hard_distillation_is_cross_entropy_on_teacher_argmax():
    student = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.0, 5.0, 1.0], [0.0, 0.0, 3.0]])  # argmax 1 and 2
    expected = -(math.log(softmax([2.0, 0.0, 1.0])[1]) + math.log(softmax([0.0, 1.0, 0.0])[2])) / 2
    assert hard_distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_feature_distillation_mse_and_cosine():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    assert feature_distillation_loss(student, teacher).item() == pytest.approx((1 + 0 + 0 + 1) / 4)
    # cosine of (1, 0, 0, 2) and (0, 0, 0, 1): 2 / sqrt(5)
    cosine = feature_distillation_loss(student, teacher, "cosine").item()
    assert cosine == pytest.approx(1 - 2 / math.sqrt(5))
    assert feature_distillation_loss(teacher * 3, teacher, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="distance='l1'"):
        feature_distillation_loss(student, teacher, "l1")
    with pytest.raises(ValueError, match="adapt the student's first"):
        feature_distillation_loss(torch.zeros(1, 3), torch.zeros(1, 4))


def test_cls_attention_map_averages_heads_and_renormalises():
    # 1 prefix token + a 1x2 grid; two heads.
    attentions = torch.zeros(1, 2, 3, 3)
    attentions[0, 0, 0] = torch.tensor([0.5, 0.5, 0.0])  # head 0: [CLS] -> patch 0
    attentions[0, 1, 0] = torch.tensor([0.0, 0.25, 0.75])  # head 1: mostly patch 1
    patch_map = cls_attention_map(attentions, (1, 2))
    # mean over heads of the patch part: [0.375, 0.375], renormalised: [0.5, 0.5]
    torch.testing.assert_close(patch_map, torch.tensor([[[0.5, 0.5]]]))
    with pytest.raises(ValueError, match="do not fit a 2x2 grid"):
        cls_attention_map(attentions, (2, 2))


def test_feature_energy_map_is_mean_squared_activation_as_distribution():
    features = torch.zeros(1, 2, 1, 2)
    features[0, :, 0, 0] = torch.tensor([1.0, 1.0])  # energy mean(1, 1) = 1
    features[0, :, 0, 1] = torch.tensor([3.0, -1.0])  # energy mean(9, 1) = 5
    torch.testing.assert_close(feature_energy_map(features), torch.tensor([[[1 / 6, 5 / 6]]]))


def test_resize_distribution_keeps_mass_and_identity():
    maps = torch.softmax(torch.randn(2, 16), -1).reshape(2, 4, 4)
    assert resize_distribution(maps, (4, 4)) is maps
    resized = resize_distribution(maps, (8, 8))
    assert resized.shape == (2, 8, 8)
    torch.testing.assert_close(resized.sum(dim=(1, 2)), torch.ones(2))


def test_shrinking_a_map_keeps_every_cell_mass():
    point = torch.zeros(1, 16, 16)
    point[0, 0, 0] = 1.0
    shrunk = resize_distribution(point, (4, 4))
    assert shrunk[0, 0, 0].item() == pytest.approx(1.0)  # a strided bilinear sample would miss it entirely
    stripes = torch.zeros(1, 16, 16)
    stripes[0, :, ::4] = 1 / 64
    torch.testing.assert_close(resize_distribution(stripes, (4, 4)), torch.full((1, 4, 4), 1 / 16))


def test_attention_alignment_loss():
    teacher = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
    student = torch.tensor([[[0.25, 0.25], [0.25, 0.25]]])
    # scaled by 4 cells: teacher (2, 2, 0, 0), student (1, 1, 1, 1): squared errors 1, 1, 1, 1
    assert attention_alignment_loss(student, teacher).item() == pytest.approx(1.0)
    assert attention_alignment_loss(teacher, teacher).item() == 0.0
    # A finer student grid is resampled to the teacher's: a uniform map stays uniform.
    uniform_fine = torch.full((1, 4, 4), 1 / 16)
    assert attention_alignment_loss(uniform_fine, student).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="same batch"):
        attention_alignment_loss(torch.zeros(2, 2, 2), teacher)


def test_attention_entropy_bounds():
    uniform = torch.full((1, 4, 4), 1 / 16)
    peaked = torch.zeros(1, 4, 4)
    peaked[0, 1, 2] = 1.0
    assert attention_entropy(uniform).item() == pytest.approx(uniform_entropy(16))
    assert attention_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert attention_entropy(half).item() == pytest.approx(math.log(2))


def test_entropy_layer_weights():
    entropies = torch.tensor([1.0, 2.0, 3.0])
    weights = entropy_layer_weights(entropies, temperature=0.5)
    expected = softmax([-2.0, -4.0, -6.0])
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights[0] > weights[1] > weights[2]  # lower entropy, more weight
    assert entropy_layer_weights(entropies, uniform=True).tolist() == pytest.approx([1 / 3] * 3)
    normalised = entropy_layer_weights(entropies, temperature=1.0, max_entropy=2.0)
    assert normalised.tolist() == pytest.approx(softmax([-0.5, -1.0, -1.5]), rel=1e-6)
    assert entropy_layer_weights(torch.tensor([1.0, 1.0]), temperature=100).tolist() == pytest.approx([0.5, 0.5])
    entropies_with_grad = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not entropy_layer_weights(entropies_with_grad).requires_grad
    with pytest.raises(ValueError, match="temperature=0"):
        entropy_layer_weights(entropies, temperature=0)
