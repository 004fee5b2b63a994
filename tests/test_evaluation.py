"""The statistics the recipes report beside their tables."""

import numpy as np
import pytest

from hf_vision_distill.evaluation import paired_accuracy_gain


def test_paired_gain_counts_the_images_each_model_alone_gets_right():
    model = np.array([1, 1, 1, 0, 0, 1, 1, 1], dtype=bool)
    reference = np.array([1, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    gain = paired_accuracy_gain(model, reference, num_resamples=2000)
    assert gain["gain"] == pytest.approx(model.mean() - reference.mean()) == 0.125
    assert (gain["only_model_right"], gain["only_reference_right"], gain["images"]) == (2, 1, 8)
    assert gain["low"] <= gain["gain"] <= gain["high"]


def test_identical_results_have_no_gain_and_no_spread():
    results = np.random.default_rng(0).random(500) < 0.7
    assert paired_accuracy_gain(results, results) | {"confidence": 0} == {
        "gain": 0.0, "low": 0.0, "high": 0.0, "confidence": 0, "images": 500, "only_model_right": 0,
        "only_reference_right": 0,
    }  # fmt: skip


@pytest.mark.slow
def test_the_interval_matches_the_normal_approximation_and_narrows_with_more_images():
    generator = np.random.default_rng(1)
    widths = []
    for images in (1000, 16000):
        model = generator.random(images) < 0.80
        # The reference agrees with the model on most images: pairing makes the interval far narrower than two
        # independent accuracies' would be.
        reference = np.where(generator.random(images) < 0.9, model, generator.random(images) < 0.75)
        gain = paired_accuracy_gain(model, reference)
        differences = model.astype(float) - reference
        half_width = 1.96 * differences.std() / np.sqrt(images)
        assert gain["high"] - gain["low"] == pytest.approx(2 * half_width, rel=0.1)
        assert gain["low"] == pytest.approx(differences.mean() - half_width, abs=0.2 * half_width)
        independent = 1.96 * np.sqrt((model.var() + reference.var()) / images)
        assert half_width < 0.6 * independent
        widths.append(gain["high"] - gain["low"])
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.2)  # 16x the images, a quarter of the width


def test_mismatched_results_are_refused():
    with pytest.raises(ValueError, match="equal-length"):
        paired_accuracy_gain(np.ones(3, dtype=bool), np.ones(4, dtype=bool))
