"""AirbenchCNN, the CNN teacher: whitening filters from the data, norm shifts at a multiple of the learning rate (the
trainers read `learning_rate_scales`), test-time augmentation in eval mode, and the recipe's data-dependent start."""

import dataclasses
import logging

import pytest
import torch
from conftest import load_example
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoModelForImageClassification, TrainingArguments

from hf_vision_distill import AirbenchCNNConfig, AirbenchCNNForImageClassification
from hf_vision_distill.finetuning import FineTuningArguments, FineTuningTrainer
from hf_vision_distill.models.airbench_cnn.modeling_airbench_cnn import augmented_views
from hf_vision_distill.training import ImageClassificationTrainer

TINY = dict(num_labels=3, hidden_sizes=[8, 16, 16])


def tiny_model(**overrides) -> AirbenchCNNForImageClassification:
    torch.manual_seed(0)
    return AirbenchCNNForImageClassification(AirbenchCNNConfig(**{**TINY, **overrides}))


def test_whitening_filters_decorrelate_the_patches_they_were_computed_from():
    torch.manual_seed(0)
    # Strongly correlated channels and neighbouring pixels, as in photographs.
    base = F.avg_pool2d(torch.randn(64, 1, 18, 18), 3, stride=1)
    pixel_values = (
        torch.cat([base, base + 0.1 * torch.randn_like(base), -0.5 * base + 0.1 * torch.randn_like(base)], dim=1) * 3
    )
    model = tiny_model()
    model.init_from_data(pixel_values)
    whitening = model.airbench_cnn.whitening
    filters = whitening.weight
    assert filters.shape == (24, 3, 2, 2)
    torch.testing.assert_close(filters[12:], -filters[:12])  # each filter and its negative
    responses = F.conv2d(pixel_values, filters[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = responses.T @ responses / len(responses)
    # Unit variance along each eigenvector (up to eps = 5e-4 over eigenvalues of 1e-2 and more), no correlation.
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.double), atol=0.05)
    patches = pixel_values.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    assert not torch.allclose(patches.T @ patches / len(patches), torch.eye(12, dtype=torch.double), atol=0.05)


def test_the_whitening_filters_are_saved_and_loaded(tmp_path):
    model = tiny_model().eval()
    model.init_from_data(torch.randn(16, 3, 32, 32))
    model.save_pretrained(tmp_path)
    assert "airbench_cnn.whitening.weight" in load_file(tmp_path / "model.safetensors")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.airbench_cnn.whitening.weight, model.airbench_cnn.whitening.weight)
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits)


def test_identity_initialised_convolutions_keep_loaded_weights(tmp_path):
    model = tiny_model()
    conv = model.airbench_cnn.stages[1].conv1
    assert torch.equal(conv.weight[:8, :, 1, 1], torch.eye(8))  # dirac: the centre tap passes each input on
    with torch.no_grad():
        conv.weight.fill_(0.25)
    model.save_pretrained(tmp_path)
    reloaded = AirbenchCNNForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(reloaded.airbench_cnn.stages[1].conv1.weight, conv.weight)


def test_flip_test_time_augmentation_is_mirror_invariant_and_off_in_training():
    model = tiny_model(test_time_augmentation="flip").eval()
    pixel_values = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values).logits
        torch.testing.assert_close(model(pixel_values.flip(-1)).logits, logits)
        model.config.test_time_augmentation = "none"
        plain = model(pixel_values).logits
        assert not torch.allclose(plain, logits)
        model.config.test_time_augmentation = "flip"
        model.train()
        assert not torch.allclose(model(pixel_values).logits, logits)  # one view while training


def test_flip_translate_averages_six_views_with_airbenchs_weights():
    model = tiny_model(test_time_augmentation="flip_translate").eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    views = augmented_views(pixel_values, "flip_translate")
    assert len(views) == 6
    torch.testing.assert_close(views[2][..., 1:, 1:], pixel_values[..., :-1, :-1])  # shifted down-right by one
    with torch.no_grad():
        logits = model(pixel_values).logits
        model.config.test_time_augmentation = "none"
        each = [model(view).logits for view in views]
    expected = 0.5 * (each[0] + each[1]) / 2 + 0.5 * torch.stack(each[2:]).mean(0)
    torch.testing.assert_close(logits, expected)


def test_a_bad_test_time_augmentation_is_refused():
    with pytest.raises(ValueError, match="test_time_augmentation='mirror'"):
        AirbenchCNNConfig(test_time_augmentation="mirror")


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    return {id(parameter): group["lr"] for group in optimizer.param_groups for parameter in group["params"]}


def test_trainers_give_the_norm_shifts_their_learning_rate_multiple(tmp_path):
    model = tiny_model(norm_bias_learning_rate_scale=64)
    parameters = dict(model.named_parameters())
    shifts = {name for name in parameters if ".norm" in name}
    assert shifts == set(model.learning_rate_scales()) and len(shifts) == 6
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.01, optim="sgd", report_to="none",
                             use_cpu=True)  # fmt: skip
    # Every optimizer the Trainer builds, AdamW (the recipes' default) included.
    adamw = dataclasses.replace(args, optim="adamw_torch")
    rate_of = learning_rates(ImageClassificationTrainer(model=model, args=adamw).create_optimizer())
    assert rate_of[id(parameters["airbench_cnn.stages.0.norm1.bias"])] == pytest.approx(0.64)
    rate_of = learning_rates(ImageClassificationTrainer(model=model, args=args).create_optimizer())
    assert sorted(rate_of) == sorted(id(parameter) for parameter in parameters.values())  # every parameter once
    for name, parameter in parameters.items():
        assert rate_of[id(parameter)] == pytest.approx(0.64 if name in shifts else 0.01), name
    # Layer-wise decay (fine-tuning) first, then the multiple: within a stage, the shift runs 64 times the conv.
    finetuning = FineTuningTrainer(model=model, args=args, finetuning_args=FineTuningArguments(layer_decay=0.5))
    rate_of = learning_rates(finetuning.create_optimizer())
    for stage in range(3):
        conv = rate_of[id(parameters[f"airbench_cnn.stages.{stage}.conv1.weight"])]
        assert rate_of[id(parameters[f"airbench_cnn.stages.{stage}.norm1.bias"])] == pytest.approx(64 * conv)
        assert conv == pytest.approx(0.01 * 0.5 ** (3 - stage))

    # One plain SGD step: the shift moves 64 times as far as the gradient alone would move it.
    trainer = ImageClassificationTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    before = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)).logits, torch.tensor([0, 1, 2, 0])).backward()
    gradients = {name: parameter.grad.clone() for name, parameter in parameters.items()}
    optimizer.step()
    for name in ("airbench_cnn.stages.2.norm2.bias", "classifier.weight"):
        step = 0.64 if name in shifts else 0.01
        torch.testing.assert_close(parameters[name].detach(), before[name] - step * gradients[name])


@pytest.mark.slow
def test_the_recipe_starts_the_model_from_the_training_images(tmp_path, caplog):
    recipe = load_example("train")
    arguments = ["--model_name_or_path", "airbench-cnn", "--config_overrides", '{"hidden_sizes": [8, 16, 16]}',
                 "--max_train_samples", "64", "--max_eval_samples", "16", "--per_device_train_batch_size", "32",
                 "--num_train_epochs", "1", "--report_to", "none", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="hf_vision_distill.recipes"):
        recipe.main(arguments)
    assert "Initialised AirbenchCNNForImageClassification from 64 training images." in caplog.text
    saved = load_file(tmp_path / "run" / "model.safetensors")["airbench_cnn.whitening.weight"]
    random_start = tiny_model(num_labels=10).airbench_cnn.whitening.weight
    assert saved.shape == random_start.shape and not torch.allclose(saved, random_start)
    torch.testing.assert_close(saved[12:], -saved[:12])  # whitening pairs, not the random start
