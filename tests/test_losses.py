"""The distillation losses against their closed forms, written out by hand."""

import math

import pytest
import torch

from hf_vision_distill.losses import (
    attention_alignment_loss,
    attention_entropy,
    cls_attention_map,
    decoupled_distillation_loss,
    decoupled_distillation_terms,
    entropy_layer_weights,
    feature_distillation_loss,
    feature_energy_map,
    generalized_jsd_loss,
    hard_distillation_loss,
    resize_distribution,
    reverse_distillation_loss,
    soft_distillation_loss,
    standardize_logits,
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


# ---- reverse KL, generalised Jensen-Shannon, decoupled KD, logit standardisation ----

STUDENT = [[1.0, 0.0, -1.0, 0.5], [0.2, 0.3, 0.1, -0.4], [2.0, -1.0, 0.0, 0.0]]
TEACHER = [[3.0, 1.0, 0.0, -2.0], [0.0, 0.0, 2.0, 1.0], [-1.0, 4.0, 0.5, 0.0]]
TARGETS = [0, 2, 1]


def kl(p: list[float], q: list[float]) -> float:
    return sum(p_i * math.log(p_i / q_i) for p_i, q_i in zip(p, q) if p_i > 0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_reverse_distillation_is_kl_from_the_student_times_t_squared(temperature):
    expected = sum(
        kl(softmax(student_row, temperature), softmax(teacher_row, temperature))
        for student_row, teacher_row in zip(STUDENT, TEACHER)
    )
    expected = expected / len(STUDENT) * temperature**2
    actual = reverse_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert actual.item() == pytest.approx(expected, rel=1e-5)
    forward = soft_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert actual.item() != pytest.approx(forward.item(), rel=1e-3)  # the direction matters


@pytest.mark.parametrize(("beta", "temperature"), [(0.3, 1.0), (0.5, 2.0), (0.9, 1.0)])
def test_generalized_jsd_against_the_mixture_written_out(beta, temperature):
    """TRL's definition: M = beta * teacher + (1 - beta) * student, JSD = beta KL(P||M) + (1 - beta) KL(Q||M)."""
    expected = 0.0
    for student_row, teacher_row in zip(STUDENT, TEACHER):
        p, q = softmax(teacher_row, temperature), softmax(student_row, temperature)
        m = [beta * p_i + (1 - beta) * q_i for p_i, q_i in zip(p, q)]
        expected += beta * kl(p, m) + (1 - beta) * kl(q, m)
    expected = expected / len(STUDENT) * temperature**2
    actual = generalized_jsd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), beta, temperature)
    assert actual.item() == pytest.approx(expected, rel=1e-5)


def test_generalized_jsd_limits_are_forward_and_reverse_kl():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    forward = soft_distillation_loss(student, teacher, 2.0)
    reverse = reverse_distillation_loss(student, teacher, 2.0)
    torch.testing.assert_close(generalized_jsd_loss(student, teacher, beta=0.0, temperature=2.0), forward)
    torch.testing.assert_close(generalized_jsd_loss(student, teacher, beta=1.0, temperature=2.0), reverse)
    # The ends are the normalised limits: JSD(beta) / beta -> forward KL, JSD(beta) / (1 - beta) -> reverse KL.
    small = 1e-3
    near_forward = generalized_jsd_loss(student.double(), teacher.double(), beta=small, temperature=2.0) / small
    near_reverse = generalized_jsd_loss(student.double(), teacher.double(), beta=1 - small, temperature=2.0) / small
    assert near_forward.item() == pytest.approx(forward.item(), rel=5e-3)
    assert near_reverse.item() == pytest.approx(reverse.item(), rel=5e-3)
    # Symmetric and bounded by log 2 at beta = 0.5 (T = 1); zero for equal distributions.
    symmetric = generalized_jsd_loss(student, teacher, beta=0.5)
    torch.testing.assert_close(symmetric, generalized_jsd_loss(teacher, student, beta=0.5))
    assert 0 < symmetric.item() < math.log(2)
    far = torch.tensor([[100.0, 0.0, 0.0]])
    assert generalized_jsd_loss(far, far.flip(-1), beta=0.5).item() == pytest.approx(math.log(2), rel=1e-4)
    assert generalized_jsd_loss(student, student.clone(), beta=0.3).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"beta=1.5 must be in \[0, 1\]"):
        generalized_jsd_loss(student, teacher, beta=1.5)


def test_generalized_jsd_gives_the_student_a_gradient():
    student = torch.tensor(STUDENT, requires_grad=True)
    generalized_jsd_loss(student, torch.tensor(TEACHER), beta=0.5, temperature=2.0).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def decoupled_by_hand(student_row, teacher_row, target, temperature) -> tuple[float, float, float]:
    """TCKD, NCKD and teacher p_t from the binary and non-target distributions, written out."""
    p_student, p_teacher = softmax(student_row, temperature), softmax(teacher_row, temperature)
    binary_student = [p_student[target], 1 - p_student[target]]
    binary_teacher = [p_teacher[target], 1 - p_teacher[target]]
    others = [index for index in range(len(student_row)) if index != target]
    non_target_student = [p_student[index] / (1 - p_student[target]) for index in others]
    non_target_teacher = [p_teacher[index] / (1 - p_teacher[target]) for index in others]
    return kl(binary_teacher, binary_student), kl(non_target_teacher, non_target_student), p_teacher[target]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_decoupled_terms_against_binary_and_non_target_distributions(temperature):
    student, teacher, targets = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)
    target_class_kl, non_target_class_kl = decoupled_distillation_terms(
        student, teacher, targets, temperature, reduction="none"
    )
    for row, target in enumerate(TARGETS):
        tckd, nckd, _ = decoupled_by_hand(STUDENT[row], TEACHER[row], target, temperature)
        assert target_class_kl[row].item() == pytest.approx(tckd * temperature**2, rel=1e-4)
        assert non_target_class_kl[row].item() == pytest.approx(nckd * temperature**2, rel=1e-4)
    means = decoupled_distillation_terms(student, teacher, targets, temperature)
    torch.testing.assert_close(means[0], target_class_kl.mean())
    torch.testing.assert_close(means[1], non_target_class_kl.mean())
    loss = decoupled_distillation_loss(student, teacher, targets, alpha=0.5, beta=3.0, temperature=temperature)
    torch.testing.assert_close(loss, 0.5 * means[0] + 3.0 * means[1])


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_is_tckd_plus_damped_nckd(temperature):
    """Zhao et al.'s identity, per example: KD = TCKD + (1 - teacher p_t) * NCKD."""
    student, teacher, targets = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)
    target_class_kl, non_target_class_kl = decoupled_distillation_terms(
        student, teacher, targets, temperature, reduction="none"
    )
    teacher_target_probability = torch.softmax(teacher / temperature, dim=-1).gather(-1, targets[:, None])[:, 0]
    for row in range(len(STUDENT)):
        kd = soft_distillation_loss(student[row : row + 1], teacher[row : row + 1], temperature)
        decomposed = target_class_kl[row] + (1 - teacher_target_probability[row]) * non_target_class_kl[row]
        torch.testing.assert_close(decomposed, kd, rtol=1e-5, atol=1e-6)


def test_decoupled_terms_stay_finite_for_a_confident_teacher_and_reject_bad_labels():
    student = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[200.0, 0.0, -5.0]])  # p_t == 1 in float32: log(1 - p_t) must not be -inf
    target_class_kl, non_target_class_kl = decoupled_distillation_terms(student, teacher, torch.tensor([0]), 1.0)
    assert torch.isfinite(target_class_kl) and torch.isfinite(non_target_class_kl)
    (target_class_kl + non_target_class_kl).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # Equal logits: both terms vanish.
    same = decoupled_distillation_terms(teacher, teacher.clone(), torch.tensor([1]), 4.0)
    assert [value.item() for value in same] == pytest.approx([0.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="class indices of shape"):
        decoupled_distillation_terms(student, teacher, torch.tensor([[0.2, 0.8, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="reduction='sum'"):
        decoupled_distillation_terms(student, teacher, torch.tensor([0]), 1.0, reduction="sum")
    with pytest.raises(ValueError, match="temperature=0"):
        decoupled_distillation_terms(student, teacher, torch.tensor([0]), 0.0)


def test_standardized_logits_have_zero_mean_and_unit_std():
    logits = torch.tensor(STUDENT)
    standardized = standardize_logits(logits)
    mean, std = logits.mean(-1, keepdim=True), logits.std(-1, keepdim=True)  # unbiased, as the authors'
    torch.testing.assert_close(standardized, (logits - mean) / (std + 1e-7))
    torch.testing.assert_close(standardized.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(standardized.std(-1), torch.ones(3))
    assert torch.equal(standardize_logits(torch.full((1, 5), 3.0)), torch.zeros(1, 5))  # constant: finite zeros
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.zeros(2, 1))


def test_standardized_kd_ignores_the_teachers_scale_and_shift():
    """What logit standardisation is for: a teacher with larger or shifted logits (a * z + b, a > 0) gives the same
    targets, so the student no longer has to match the teacher's logit range."""
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    plain = soft_distillation_loss(standardize_logits(student), standardize_logits(teacher), 2.0)
    rescaled = soft_distillation_loss(standardize_logits(student), standardize_logits(5.0 * teacher + 3.0), 2.0)
    torch.testing.assert_close(plain, rescaled)
    assert soft_distillation_loss(student, 5.0 * teacher + 3.0, 2.0).item() != pytest.approx(
        soft_distillation_loss(student, teacher, 2.0).item(), rel=1e-2
    )
