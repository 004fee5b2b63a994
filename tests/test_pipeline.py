"""The recipes' shared pipeline: the input specification that travels from the model to everything that feeds or
describes it, and the one place the training arguments change (`final_training_arguments`)."""

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.distillation import TeacherInputTransform
from hf_vision_distill.hub import build_model_card
from hf_vision_distill.models import InputSpecification, load_image_classifier
from hf_vision_distill.recipes import DataArguments, build_inputs, final_training_arguments

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "data" / "cifar10-sample")


@pytest.fixture(scope="module")
def sample():
    return load_image_classification_dataset(SAMPLE, max_train_samples=64, max_eval_samples=32)


def arguments(tmp_path, **changes) -> TrainingArguments:
    values = {"output_dir": str(tmp_path), "report_to": [], "per_device_train_batch_size": 16, "num_train_epochs": 1,
              "eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
              "metric_for_best_model": "accuracy", "logging_steps": 500, "dataloader_num_workers": 2,
              "remove_unused_columns": False}  # fmt: skip
    return TrainingArguments(**{**values, **changes})


def test_a_specification_has_one_form_and_refuses_what_the_transforms_cannot_do():
    specification = InputSpecification(32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert specification == InputSpecification((32, 32), (0.5,) * 3, (0.25,) * 3, "bilinear")
    assert specification.with_size(48).image_size == (48, 48)
    assert str(specification) == "32x32, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25], bilinear"
    with pytest.raises(ValueError, match="interpolation 'lanczos' is not supported"):
        InputSpecification(32, (0.5,) * 3, (0.5,) * 3, "lanczos")
    with pytest.raises(ValueError, match="one value per channel"):
        InputSpecification(32, (0.5,) * 3, (0.5,))


def test_the_image_processor_and_the_transforms_come_from_the_same_specification():
    specification = InputSpecification((24, 20), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")
    processor = specification.image_processor()
    assert InputSpecification.from_image_processor(processor) == specification  # saved and read back alike
    image = Image.fromarray(torch.randint(0, 256, (40, 36, 3), dtype=torch.uint8).numpy())
    from_processor = torch.as_tensor(processor(image, return_tensors="pt")["pixel_values"][0])
    from_transform = specification.eval_transform()(image)
    assert from_transform.shape == from_processor.shape == (3, 24, 20)
    # PIL's and torchvision's bicubic resizes differ by rounding only
    torch.testing.assert_close(from_transform, from_processor, atol=0.05, rtol=0)
    uint8 = specification.eval_transform(normalize=False)(image)
    assert uint8.dtype == torch.uint8 and uint8.shape == (3, 24, 20)


def test_the_loader_gives_the_checkpoint_specification_and_the_card_shows_it(tmp_path):
    labels = {0: "cat", 1: "dog"}
    loaded = load_image_classifier("compact-cnn", id2label=labels, config_overrides={"hidden_sizes": [4, 8, 8]})
    specification = InputSpecification(32, (0.5,) * 3, (0.25,) * 3, "nearest")
    loaded.model.save_pretrained(tmp_path)
    specification.image_processor().save_pretrained(tmp_path)
    reloaded = load_image_classifier(str(tmp_path), id2label=labels)
    assert reloaded.input_specification == specification
    assert InputSpecification.from_image_processor(reloaded.image_processor) == specification
    card = build_model_card(reloaded.model, repo_id="user/cnn", dataset_name="user/pets", recipe="(test)",
                            results={}, hyperparameters={}, input_specification=specification)  # fmt: skip
    assert "32x32 RGB (resized nearest), normalised with mean [0.5, 0.5, 0.5] and std [0.25, 0.25, 0.25]" in card.text


@pytest.mark.parametrize("with_baseline", [False, True])
def test_the_card_claims_a_same_budget_comparison_only_with_a_baseline(with_baseline):
    """A distillation run without --baseline has one student beside its teacher: its card's side-by-side table must
    not speak of two students."""
    loaded = load_image_classifier("compact-cnn", id2label={0: "cat", 1: "dog"},
                                   config_overrides={"hidden_sizes": [4, 8, 8]})  # fmt: skip
    rows = [
        {"model": "teacher (t)", "parameters": 9, "test_accuracy": 0.9, "test_f1_macro": 0.9},
        {"model": "distilled student (s)", "parameters": 5, "test_accuracy": 0.8, "test_f1_macro": 0.8},
    ]
    if with_baseline:
        rows.append({"model": "baseline student (s, labels only)", "parameters": 5, "test_accuracy": 0.7,
                     "test_f1_macro": 0.7})  # fmt: skip
    card = build_model_card(loaded.model, repo_id="user/cnn", dataset_name="user/pets", recipe="(test)",
                            results={}, hyperparameters={}, input_specification=loaded.input_specification,
                            comparison=rows)  # fmt: skip
    assert "Side by side, from the same run (same data" in card.text
    assert ("same training budget for the two students" in card.text) is with_baseline


def test_the_teacher_input_is_resized_with_the_teacher_interpolation():
    student = InputSpecification(16, (0.5,) * 3, (0.25,) * 3)
    teacher = InputSpecification(32, (0.0,) * 3, (1.0,) * 3, "bicubic")
    assert TeacherInputTransform.between(student, student) is None
    transform = TeacherInputTransform.between(student, teacher)
    images = torch.rand(2, 3, 16, 16)
    expected = torch.nn.functional.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    torch.testing.assert_close(transform((images - 0.5) / 0.25), expected.clamp(0, 1))
    # bicubic overshoots at sharp edges: clamped to the image range, as PIL and the tensor pipeline do
    edges = (torch.arange(16)[None, None, None, :] % 2).float().expand(1, 3, 16, 16)
    upsampled = transform((edges - 0.5) / 0.25)
    assert upsampled.min() >= 0.0 and upsampled.max() <= 1.0 and upsampled.max() == 1.0
    nearest = TeacherInputTransform.between(student, InputSpecification(8, (0.0,) * 3, (1.0,) * 3, "nearest"))
    assert nearest((images - 0.5) / 0.25).shape == (2, 3, 8, 8)  # downsampling without antialias for nearest


def test_final_arguments_without_a_validation_split_evaluate_at_the_end_only(sample, tmp_path, caplog):
    no_validation = load_image_classification_dataset(SAMPLE, max_train_samples=64, validation_size=0.0)
    assert "validation" not in no_validation.dataset
    specification = InputSpecification(32, (0.5,) * 3, (0.25,) * 3)
    args = arguments(tmp_path)
    inputs = build_inputs(no_validation, DataArguments(input_pipeline="tensors"), args, specification)
    with caplog.at_level(logging.INFO, logger="hf_vision_distill"):
        final = final_training_arguments(args, data=no_validation, inputs=inputs, argv=[])
    assert final.eval_strategy == "no" and not final.load_best_model_at_end
    # the tensor pipeline's dataloader settings, and each change said with its reason
    assert final.dataloader_num_workers == 0 and not final.dataloader_pin_memory
    assert "eval_strategy='no' (no validation split" in caplog.text
    assert "dataloader_num_workers=0 (the tensors input pipeline)" in caplog.text
    assert args.eval_strategy == "epoch" and args.dataloader_num_workers == 2  # the parsed arguments stay as they were


@pytest.mark.parametrize("pipeline", ["tensors", "workers"])
def test_label_smoothing_is_decided_once_the_collator_smooths_mixed_batches(sample, tmp_path, pipeline):
    specification = InputSpecification(32, (0.5,) * 3, (0.25,) * 3)
    args = arguments(tmp_path, label_smoothing_factor=0.1)
    mixed = DataArguments(input_pipeline=pipeline, mixup_alpha=0.2)
    inputs = build_inputs(sample, mixed, args, specification)
    final = final_training_arguments(args, data=sample, inputs=inputs, argv=[])
    collator = getattr(inputs.train_collator, "labels_collator", inputs.train_collator)
    assert inputs.label_smoothing == collator.label_smoothing == 0.1 and final.label_smoothing_factor == 0.0
    # unmixed batches: the Trainer smooths, the collator does not
    inputs = build_inputs(sample, DataArguments(input_pipeline=pipeline), args, specification)
    final = final_training_arguments(args, data=sample, inputs=inputs, argv=[])
    collator = getattr(inputs.train_collator, "labels_collator", inputs.train_collator)
    assert inputs.label_smoothing == collator.label_smoothing == 0.0 and final.label_smoothing_factor == 0.1


def test_recipe_changes_and_logging_steps_go_through_the_one_place(sample, tmp_path, caplog):
    specification = InputSpecification(32, (0.5,) * 3, (0.25,) * 3)
    args = arguments(tmp_path, weight_decay=0.05)
    inputs = build_inputs(sample, DataArguments(input_pipeline="tensors"), args, specification)
    with caplog.at_level(logging.INFO, logger="hf_vision_distill"):
        final = final_training_arguments(args, data=sample, inputs=inputs, argv=[],
                                         changes={"weight_decay": (0.0, "a sanity check")})  # fmt: skip
    assert final.weight_decay == 0.0 and "weight_decay=0.0 (a sanity check)" in caplog.text
    assert final.logging_steps == 1  # 4 optimizer steps: every one logged, for a curve
    given = final_training_arguments(args, data=sample, inputs=inputs, argv=["--logging_steps", "500"])
    assert given.logging_steps == 500  # the user's own setting stays
