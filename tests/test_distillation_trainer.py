"""DistillationTrainer: frozen teacher, loss terms, accumulation, label spaces, the teacher's view of the batch."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_vision_distill import (
    CompactCNNConfig,
    CompactCNNForImageClassification,
    VisionTransformerConfig,
    VisionTransformerForImageClassification,
)
from hf_vision_distill.distillation import (
    DistillationConfig,
    DistillationTrainer,
    Teacher,
    TeacherInputTransform,
    check_label_spaces,
)
from hf_vision_distill.losses import (
    decoupled_distillation_loss,
    decoupled_distillation_terms,
    generalized_jsd_loss,
    hard_distillation_loss,
    reverse_distillation_loss,
    soft_distillation_loss,
    standardize_logits,
)
from hf_vision_distill.models import InputSpecification
from hf_vision_distill.training import classification_loss

LABELS = {0: "cat", 1: "dog", 2: "ship"}
LABEL_IDS = {name: index for index, name in LABELS.items()}


def teacher_vit(image_size: int = 16, **label_fields) -> VisionTransformerForImageClassification:
    torch.manual_seed(1)
    label_fields = label_fields or {"id2label": LABELS, "label2id": LABEL_IDS}
    config = VisionTransformerConfig(image_size=image_size, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, **label_fields)  # fmt: skip
    return VisionTransformerForImageClassification(config)


def student_vit() -> VisionTransformerForImageClassification:
    torch.manual_seed(0)
    config = VisionTransformerConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     id2label=LABELS, label2id=LABEL_IDS)  # fmt: skip
    return VisionTransformerForImageClassification(config)


def rows(count: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(2)
    return [
        {"pixel_values": torch.randn(3, 16, 16, generator=generator), "labels": index % 3} for index in range(count)
    ]


def stack(batch: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([row["pixel_values"] for row in batch]),
        "labels": torch.tensor([row["labels"] for row in batch]),
    }


def config(tmp_path, **fields) -> DistillationConfig:
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=0.05,
                    report_to="none", save_strategy="no", use_cpu=True, logging_steps=1, seed=3)  # fmt: skip
    return DistillationConfig(**{**defaults, **fields})


def test_teacher_frozen_student_trained_and_not_saved_together(tmp_path):
    teacher, student = teacher_vit(), student_vit()
    teacher_before = {name: value.clone() for name, value in teacher.state_dict().items()}
    student_before = {name: value.clone() for name, value in student.state_dict().items()}
    args = config(tmp_path, hard_loss_weight=0.2)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=rows(),
                                  eval_dataset=rows(4), data_collator=stack)  # fmt: skip
    assert not trainer.teacher.model.training
    assert not any(parameter.requires_grad for parameter in trainer.teacher.model.parameters())
    trainer.train()
    for name, value in trainer.teacher.model.state_dict().items():
        torch.testing.assert_close(value, teacher_before[name], msg=name)
    assert any(not torch.equal(value, student_before[name]) for name, value in student.state_dict().items())

    trainer.save_model(str(tmp_path / "student"))
    saved = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert set(saved) == set(student.state_dict())  # the student's tensors only
    assert saved["classifier.weight"].shape == student.classifier.weight.shape


@pytest.mark.slow
def test_every_loss_term_is_logged_in_training_and_evaluation(tmp_path):
    args = config(tmp_path, hard_loss_weight=0.2, eval_strategy="steps", eval_steps=2)
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher_vit(), args=args,
                                  train_dataset=rows(), eval_dataset=rows(4), data_collator=stack)  # fmt: skip
    trainer.train()
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert train_logs and all({"loss_label", "loss_soft", "loss_hard"} <= set(entry) for entry in train_logs)
    eval_logs = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert eval_logs and {"eval_loss_label", "eval_loss_soft", "eval_loss_hard"} <= set(eval_logs[0])
    test_metrics = trainer.evaluate(rows(4), metric_key_prefix="test")
    assert {"test_loss", "test_loss_soft"} <= set(trainer.state.log_history[-1])
    assert "test_loss" in test_metrics


def test_loss_is_the_weighted_sum_of_the_pure_losses(tmp_path):
    teacher, student = teacher_vit(), student_vit()
    args = config(tmp_path, temperature=2.0, label_loss_weight=0.3, soft_loss_weight=0.7)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, data_collator=stack)
    batch = stack(rows(4))
    student.eval()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        student_logits, teacher_logits = student(batch["pixel_values"]).logits, teacher(batch["pixel_values"]).logits
    expected = 0.3 * classification_loss(student_logits, batch["labels"]) + 0.7 * soft_distillation_loss(
        student_logits, teacher_logits, 2.0
    )
    torch.testing.assert_close(loss, expected)


def test_a_distillation_token_learns_from_the_teacher_and_cls_from_the_labels(tmp_path):
    """DeiT: the [CLS] head takes the label term, the distillation head the teacher's terms; the prediction (and the
    agreement) is their mean."""
    torch.manual_seed(0)
    student = VisionTransformerForImageClassification(VisionTransformerConfig(
        image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        id2label=LABELS, label2id=LABEL_IDS, distillation_token=True,
    ))  # fmt: skip
    teacher = teacher_vit()
    args = config(tmp_path, temperature=2.0, label_loss_weight=0.3, soft_loss_weight=0.7, hard_loss_weight=0.1)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, data_collator=stack)
    batch = stack(rows(4))
    student.eval()
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)
    with torch.no_grad():
        student_outputs, teacher_logits = student(batch["pixel_values"]), teacher(batch["pixel_values"]).logits
    cls_logits, distillation_logits = student_outputs.cls_logits, student_outputs.distillation_logits
    expected = (0.3 * classification_loss(cls_logits, batch["labels"])
                + 0.7 * soft_distillation_loss(distillation_logits, teacher_logits, 2.0)
                + 0.1 * hard_distillation_loss(distillation_logits, teacher_logits))  # fmt: skip
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(outputs.logits, (cls_logits + distillation_logits) / 2)
    # Pure KD would leave the [CLS] head untrained, yet in every prediction: refused before any work.
    with pytest.raises(ValueError, match="leave one head untrained"):
        DistillationTrainer(model=student, teacher=teacher, args=config(tmp_path, label_loss_weight=0.0),
                            data_collator=stack)  # fmt: skip


# The soft losses beside classic KD: (name, DistillationConfig fields).
SOFT_LOSSES = {
    "kd": {},
    "kd_standardized": {"logit_standardization": True},
    "dkd": {"soft_loss_type": "dkd"},
    "dkd_standardized": {"soft_loss_type": "dkd", "logit_standardization": True, "dkd_alpha": 0.5, "dkd_beta": 2.0},
    "reverse_kl": {"soft_loss_type": "reverse_kl"},
    "jsd": {"soft_loss_type": "jsd", "jsd_beta": 0.3},
}


@pytest.mark.parametrize("soft_loss", list(SOFT_LOSSES))
@pytest.mark.slow
def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(tmp_path, soft_loss):
    def one_update(batch_size: int, accumulation: int) -> torch.nn.Module:
        student = student_vit()
        args = config(tmp_path / f"{batch_size}", per_device_train_batch_size=batch_size, max_steps=1,
                      gradient_accumulation_steps=accumulation, optim="sgd", lr_scheduler_type="constant",
                      max_grad_norm=0.0, weight_decay=0.0, logging_steps=1, **SOFT_LOSSES[soft_loss])  # fmt: skip
        DistillationTrainer(model=student, teacher=teacher_vit(), args=args, train_dataset=rows(),
                            data_collator=stack).train()  # fmt: skip
        return student

    large, accumulated = one_update(8, 1), one_update(4, 2)
    for (name, parameter), expected in zip(accumulated.named_parameters(), large.parameters()):
        torch.testing.assert_close(parameter, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_label_spaces_must_match(tmp_path):
    check_label_spaces(student_vit().config, teacher_vit(num_labels=3).config)  # generic names: count only
    with pytest.raises(ValueError, match="predicts 4 classes but the student 3"):
        DistillationTrainer(model=student_vit(), teacher=teacher_vit(num_labels=4), args=config(tmp_path))
    renamed = teacher_vit(id2label={0: "cat", 1: "dog", 2: "truck"}, label2id={"cat": 0, "dog": 1, "truck": 2})
    with pytest.raises(ValueError, match="2: student 'ship' vs teacher 'truck'"):
        DistillationTrainer(model=student_vit(), teacher=renamed, args=config(tmp_path))


def test_teacher_by_path_and_missing_teacher(tmp_path):
    teacher_vit().save_pretrained(tmp_path / "teacher")
    args = config(tmp_path, teacher_model_name_or_path=str(tmp_path / "teacher"))
    trainer = DistillationTrainer(model=student_vit(), args=args, data_collator=stack)
    assert isinstance(trainer.teacher.model, VisionTransformerForImageClassification)
    with pytest.raises(ValueError, match="no teacher"):
        DistillationTrainer(model=student_vit(), args=config(tmp_path))
    # Labels only: no teacher needed.
    DistillationTrainer(model=student_vit(), args=config(tmp_path, soft_loss_weight=0.0, label_loss_weight=1.0))
    with pytest.raises(ValueError, match="DistillationConfig"):
        DistillationTrainer(model=student_vit(), teacher=teacher_vit())


def test_an_offline_run_loads_no_teacher(tmp_path):
    # The batches bring the teacher's logits; the configured teacher path is the cache's maker, not loaded again.
    args = config(tmp_path, offline_teacher=True, teacher_model_name_or_path=str(tmp_path / "not-a-model"))
    assert DistillationTrainer(model=student_vit(), args=args).teacher is None


def test_teacher_view_resizes_and_renormalises():
    view = TeacherInputTransform(InputSpecification(16, (0.5,) * 3, (0.25,) * 3),
                                 InputSpecification(32, (0.0,) * 3, (1.0,) * 3))  # fmt: skip
    images = torch.rand(2, 3, 16, 16)
    student_batch = (images - 0.5) / 0.25
    teacher_batch = view(student_batch)
    assert teacher_batch.shape == (2, 3, 32, 32)
    expected = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(teacher_batch, expected)
    constant = torch.full((1, 3, 16, 16), 0.8)
    torch.testing.assert_close(view((constant - 0.5) / 0.25), torch.full((1, 3, 32, 32), 0.8))


@pytest.mark.slow
def test_vit_teacher_at_32_distills_into_cnn_student_at_16(tmp_path):
    """Different input sizes and statistics: the trainer feeds each model its own view of the same images."""
    teacher = teacher_vit(image_size=32)
    torch.manual_seed(0)
    student = CompactCNNForImageClassification(
        CompactCNNConfig(hidden_sizes=[4, 8, 8], depths=[1, 1, 1], id2label=LABELS, label2id=LABEL_IDS)
    )
    view = TeacherInputTransform(InputSpecification(16, (0.5,) * 3, (0.5,) * 3),
                                 InputSpecification(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher=Teacher(teacher, view), args=config(tmp_path),
                                  train_dataset=rows(), data_collator=stack)  # fmt: skip
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    with pytest.raises(ValueError, match="does not match the model's 32x32"):
        DistillationTrainer(model=student_vit(), teacher=teacher_vit(image_size=32), args=config(tmp_path),
                            train_dataset=rows(), data_collator=stack).train()  # fmt: skip


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="temperature=0"):
        config(tmp_path, temperature=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        config(tmp_path, soft_loss_weight=-1)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        config(tmp_path, soft_loss_weight=0, label_loss_weight=0)


# ---- feature and attention distillation ----


def tiny_cnn_student() -> CompactCNNForImageClassification:
    torch.manual_seed(0)
    config = CompactCNNConfig(hidden_sizes=[4, 8, 8], depths=[1, 1, 1], id2label=LABELS, label2id=LABEL_IDS)
    return CompactCNNForImageClassification(config)


def deeper_teacher_vit() -> VisionTransformerForImageClassification:
    torch.manual_seed(1)
    config = VisionTransformerConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=32,
                                     id2label=LABELS, label2id=LABEL_IDS)  # fmt: skip
    return VisionTransformerForImageClassification(config)


@pytest.mark.slow
def test_vit_to_cnn_with_attention_and_features(tmp_path):
    args = config(tmp_path, attention_loss_weight=0.7, feature_loss_weight=0.5, soft_loss_weight=0.3,
                  label_loss_weight=0.0, max_steps=3, save_strategy="steps", save_steps=3)  # fmt: skip
    student = tiny_cnn_student()
    trainer = DistillationTrainer(model=student, teacher=deeper_teacher_vit(), args=args,
                                  train_dataset=rows(), data_collator=stack)  # fmt: skip
    adapters = trainer.adapters
    assert trainer.student is student and trainer.model.student is student
    # CNN last stage (8 channels, 4x4) onto the teacher's 16-wide 4x4 token grid; attention onto the 4x4 grid.
    assert adapters["feature_0"].projection.in_channels == 8 and adapters["feature_0"].projection.out_channels == 16
    assert adapters["attention_projection"].teacher_size == (4, 4)
    before = {name: value.clone() for name, value in adapters.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(value, before[name]) for name, value in adapters.state_dict().items())

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss_soft", "loss_feature", "loss_attention"} <= set(logs[0])
    weights = [logs[0][f"attention_layer_weight_{layer}"] for layer in range(3)]
    assert sum(weights) == pytest.approx(1.0) and all(weight > 0 for weight in weights)

    # Checkpoints keep the adapters in their own file; the exported student does not, and loads cleanly.
    checkpoint_adapters = load_file(str(tmp_path / "checkpoint-3" / "distillation_adapters.safetensors"))
    assert checkpoint_adapters.keys() == adapters.state_dict().keys()
    trainer.save_model(str(tmp_path / "export"))
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert exported.keys() == student.state_dict().keys()
    assert not (tmp_path / "export" / "distillation_adapters.safetensors").exists()
    reloaded = CompactCNNForImageClassification.from_pretrained(tmp_path / "export")
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, student.state_dict()[name], msg=name)


@pytest.mark.slow
def test_resume_restores_the_adapters(tmp_path):
    common = dict(feature_loss_weight=1.0, max_steps=2, save_strategy="steps", save_steps=2)
    first = DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(),
                                args=config(tmp_path, **common), train_dataset=rows(),
                                data_collator=stack)  # fmt: skip
    first.train()
    # The checkpoint's model file is the student alone (what push_to_hub copies); the adapters sit beside it.
    assert load_file(str(tmp_path / "checkpoint-2" / "model.safetensors")).keys() == first.student.state_dict().keys()
    saved = load_file(str(tmp_path / "checkpoint-2" / "distillation_adapters.safetensors"))
    torch.manual_seed(123)  # a different random start for the new adapters
    student = tiny_cnn_student()
    second = DistillationTrainer(model=student, teacher=deeper_teacher_vit(),
                                 args=config(tmp_path, **common), train_dataset=rows(),
                                 data_collator=stack)  # fmt: skip
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for name, value in second.adapters.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)


@pytest.mark.slow
def test_the_best_checkpoint_brings_its_adapters(tmp_path):
    # Two checkpoints, the first the best (a score that falls): its student and its adapters must come back, not
    # the last step's.
    scores = iter([1.0, 0.0])
    args = config(tmp_path, feature_loss_weight=1.0, max_steps=4, save_strategy="steps", save_steps=2,
                  eval_strategy="steps", eval_steps=2, load_best_model_at_end=True, metric_for_best_model="score",
                  greater_is_better=True)  # fmt: skip
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(), args=args,
                                  train_dataset=rows(), eval_dataset=rows(4), data_collator=stack,
                                  compute_metrics=lambda _: {"score": next(scores)})  # fmt: skip
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert Path(best).name == "checkpoint-2"
    last = load_file(str(tmp_path / "checkpoint-4" / "distillation_adapters.safetensors"))
    assert any(not torch.equal(value, last[name]) for name, value in trainer.adapters.state_dict().items())
    saved = load_file(str(Path(best) / "distillation_adapters.safetensors"))
    for name, value in trainer.adapters.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)
    student = load_file(str(Path(best) / "model.safetensors"))
    for name, value in trainer.student.state_dict().items():
        torch.testing.assert_close(value, student[name], msg=name)


@pytest.mark.slow
def test_energy_maps_need_no_adapter_and_uniform_weighting(tmp_path):
    args = config(tmp_path, attention_loss_weight=1.0, student_attention="energy", layer_weighting="uniform",
                  attention_teacher_layers=[0, 2], attention_student_layer=1)  # fmt: skip
    student = tiny_cnn_student()
    trainer = DistillationTrainer(model=student, teacher=deeper_teacher_vit(), args=args,
                                  train_dataset=rows(), data_collator=stack)  # fmt: skip
    assert trainer.adapters is None and trainer.model is student
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[0]["attention_layer_weight_0"] == pytest.approx(0.5)
    assert logs[0]["attention_layer_weight_2"] == pytest.approx(0.5)
    assert "attention_layer_weight_1" not in logs[0]


@pytest.mark.slow
def test_schedules_change_the_temperature_and_are_logged(tmp_path):
    args = config(tmp_path, max_steps=4, schedules=["temperature=linear:4.0->1.0", "soft_loss_weight=0.25"])
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher_vit(), args=args,
                                  train_dataset=rows(16), data_collator=stack)  # fmt: skip
    trainer.train()
    temperatures = [entry["temperature"] for entry in trainer.state.log_history if "temperature" in entry]
    assert len(temperatures) == 4 and temperatures[0] == pytest.approx(4.0)
    assert temperatures == sorted(temperatures, reverse=True) and temperatures[-1] < 2.0
    assert all(entry["soft_loss_weight"] == 0.25 for entry in trainer.state.log_history if "soft_loss_weight" in entry)


def test_attention_needs_a_teacher_with_maps_and_layers_must_exist(tmp_path):
    cnn_teacher = CompactCNNForImageClassification(
        CompactCNNConfig(hidden_sizes=[4, 8, 8], depths=[1, 1, 1], id2label=LABELS, label2id=LABEL_IDS)
    )
    with pytest.raises(ValueError, match="needs the teacher's attention maps"):
        DistillationTrainer(model=tiny_cnn_student(), teacher=cnn_teacher,
                            args=config(tmp_path, attention_loss_weight=1.0), train_dataset=rows())  # fmt: skip
    with pytest.raises(ValueError, match="teacher attention layer 5 does not exist"):
        DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(),
                            args=config(tmp_path, attention_loss_weight=1.0, attention_teacher_layers=[5]),
                            train_dataset=rows())  # fmt: skip
    with pytest.raises(ValueError, match="'student_index:teacher_index'"):
        config(tmp_path, feature_loss_weight=1.0, feature_layers=["last"])
    with pytest.raises(ValueError, match="name=schedule"):
        config(tmp_path, schedules=["warmup=linear:0->1"])


@pytest.mark.slow
def test_accumulation_equivalence_with_every_loss(tmp_path):
    """ViT student and teacher (no BatchNorm), soft + hard + feature (linear adapter) + attention (own maps)."""

    def one_update(batch_size: int, accumulation: int) -> torch.nn.Module:
        student = student_vit()
        args = config(tmp_path / f"{batch_size}", per_device_train_batch_size=batch_size, max_steps=1,
                      gradient_accumulation_steps=accumulation, optim="sgd", lr_scheduler_type="constant",
                      max_grad_norm=0.0, weight_decay=0.0, hard_loss_weight=0.2, feature_loss_weight=0.5,
                      attention_loss_weight=0.5)  # fmt: skip
        torch.manual_seed(5)  # same adapter initialisation in both runs
        DistillationTrainer(model=student, teacher=teacher_vit(), args=args, train_dataset=rows(),
                            data_collator=stack).train()  # fmt: skip
        return student

    large, accumulated = one_update(8, 1), one_update(4, 2)
    for (name, parameter), expected in zip(accumulated.named_parameters(), large.parameters()):
        torch.testing.assert_close(parameter, expected, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    """Adapters, optimizer, data order and the temperature schedule all continue where they stopped."""

    def run(output_dir, max_steps: int, resume: bool = False) -> tuple[torch.nn.Module, list[float]]:
        student = student_vit()
        args = config(output_dir, max_steps=max_steps, feature_loss_weight=0.5, save_strategy="steps", save_steps=2,
                      schedules=["temperature=linear:4.0->1.0"], num_train_epochs=2)  # fmt: skip
        args = dataclasses.replace(args, max_steps=4)  # the schedule spans 4 steps in both runs
        trainer = DistillationTrainer(model=student, teacher=teacher_vit(), args=args, train_dataset=rows(16),
                                      data_collator=stack)  # fmt: skip
        if resume:
            trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-2"))
        else:
            trainer.train()
        return student, [entry["temperature"] for entry in trainer.state.log_history if "temperature" in entry]

    straight, straight_temperatures = run(tmp_path / "straight", 4)
    interrupted = tmp_path / "interrupted"
    first = DistillationTrainer(
        model=student_vit(), teacher=teacher_vit(), train_dataset=rows(16), data_collator=stack,
        args=dataclasses.replace(config(interrupted, feature_loss_weight=0.5, save_strategy="steps", save_steps=2,
                                        schedules=["temperature=linear:4.0->1.0"]), max_steps=4),
    )  # fmt: skip
    first.train()  # writes checkpoint-2 (and -4); resume from step 2 below
    resumed, resumed_temperatures = run(interrupted, 4, resume=True)
    for (name, parameter), expected in zip(resumed.named_parameters(), straight.parameters()):
        torch.testing.assert_close(parameter, expected, atol=1e-6, rtol=1e-5, msg=name)
    assert resumed_temperatures == pytest.approx(straight_temperatures)


def test_predictions_keep_only_logits_and_full_bf16_eval_works(tmp_path):
    args = config(tmp_path, attention_loss_weight=0.5, feature_loss_weight=0.5, bf16_full_eval=True)
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(), args=args,
                                  train_dataset=rows(), eval_dataset=rows(4), data_collator=stack)  # fmt: skip
    predictions = trainer.predict(rows(4)).predictions
    # Logits only: no hidden states or attention maps gathered over the evaluation set.
    assert not isinstance(predictions, tuple) and predictions.shape == (4, 3)
    metrics = trainer.evaluate()  # the student and its adapters in bf16
    assert trainer.student.classifier.weight.dtype == torch.bfloat16
    assert math.isfinite(metrics["eval_loss"])
    logged = trainer.state.log_history[-1]
    assert {"eval_loss_attention", "eval_loss_feature"} <= set(logged)


def test_evaluation_before_training_runs_the_student_under_mixed_precision(tmp_path):
    student = student_vit()
    autocast_seen = []
    student.classifier.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    trainer = DistillationTrainer(model=student, teacher=teacher_vit(), args=config(tmp_path, bf16=True),
                                  eval_dataset=rows(4), data_collator=stack)  # fmt: skip
    metrics = trainer.evaluate()
    assert autocast_seen == [True]
    assert math.isfinite(metrics["eval_loss_soft"])


def test_schedules_must_stay_in_range(tmp_path):
    with pytest.raises(ValueError, match="temperature must stay above 0"):
        config(tmp_path, schedules=["temperature=linear:2.0->0.0"])
    with pytest.raises(ValueError, match="soft_loss_weight must stay at or above 0"):
        config(tmp_path, schedules=["soft_loss_weight=cosine:0.5->-0.1"])


@pytest.mark.slow
def test_a_transformers_vit_teacher_switches_to_eager_attention(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(1)
    teacher = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=32, id2label=LABELS,
                                                  label2id=LABEL_IDS))  # fmt: skip
    assert teacher.config._attn_implementation == "sdpa"
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=teacher, train_dataset=rows(),
                                  args=config(tmp_path, attention_loss_weight=1.0), data_collator=stack)  # fmt: skip
    assert trainer.teacher.model.config._attn_implementation == "eager"
    trainer.train()
    assert any("loss_attention" in entry for entry in trainer.state.log_history)


@pytest.mark.slow
def test_our_vit_teacher_and_vit_student_switch_to_eager_attention_for_attention_maps(tmp_path):
    # Our ViT dispatches through transformers' attention interface, so the trainer treats it like transformers' ViT:
    # SDPA computes no attention probabilities, and both models whose maps are supervised switch to eager.
    teacher, student = teacher_vit(), student_vit()
    assert teacher.config._attn_implementation == student.config._attn_implementation == "sdpa"
    trainer = DistillationTrainer(model=student, teacher=teacher, train_dataset=rows(),
                                  args=config(tmp_path, attention_loss_weight=1.0), data_collator=stack)  # fmt: skip
    assert trainer.teacher.model.config._attn_implementation == "eager"
    assert student.config._attn_implementation == "eager"
    trainer.train()
    assert any("loss_attention" in entry for entry in trainer.state.log_history)
    trainer.save_model(str(tmp_path / "student"))  # the implementation is the run's choice, not the checkpoint's
    reloaded = VisionTransformerForImageClassification.from_pretrained(tmp_path / "student")
    assert reloaded.config._attn_implementation == "sdpa"
    # Without an attention term nothing switches.
    plain_teacher, plain_student = teacher_vit(), student_vit()
    DistillationTrainer(model=plain_student, teacher=plain_teacher, train_dataset=rows(),
                        args=config(tmp_path / "plain"), data_collator=stack)  # fmt: skip
    assert plain_teacher.config._attn_implementation == plain_student.config._attn_implementation == "sdpa"


# ---- soft loss types, logit standardisation, teacher-student agreement ----


def expected_soft_loss(fields: dict, student_logits, teacher_logits, labels, temperature: float) -> torch.Tensor:
    """The soft term written with the pure losses, from the fields alone."""
    if fields.get("logit_standardization"):
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    loss_type = fields.get("soft_loss_type", "kd")
    if loss_type == "dkd":
        alpha, beta = fields.get("dkd_alpha", 1.0), fields.get("dkd_beta", 8.0)
        return decoupled_distillation_loss(student_logits, teacher_logits, labels, alpha, beta, temperature)
    if loss_type == "reverse_kl":
        return reverse_distillation_loss(student_logits, teacher_logits, temperature)
    if loss_type == "jsd":
        return generalized_jsd_loss(student_logits, teacher_logits, fields["jsd_beta"], temperature)
    return soft_distillation_loss(student_logits, teacher_logits, temperature)


@pytest.mark.parametrize("soft_loss", list(SOFT_LOSSES))
def test_each_soft_loss_type_is_its_pure_loss_in_the_total(tmp_path, soft_loss):
    fields = SOFT_LOSSES[soft_loss]
    teacher, student = teacher_vit(), student_vit()
    args = config(tmp_path, temperature=2.0, label_loss_weight=0.3, soft_loss_weight=0.7, **fields)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, data_collator=stack)
    batch = stack(rows(4))
    student.eval()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        student_logits, teacher_logits = student(batch["pixel_values"]).logits, teacher(batch["pixel_values"]).logits
    soft = expected_soft_loss(fields, student_logits, teacher_logits, batch["labels"], 2.0)
    torch.testing.assert_close(loss, 0.3 * classification_loss(student_logits, batch["labels"]) + 0.7 * soft)
    logged = trainer.logged_terms["eval"]
    torch.testing.assert_close(logged["loss_soft"][-1], soft)
    if fields.get("soft_loss_type") == "dkd":
        if fields.get("logit_standardization"):
            student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
        target_class_kl, non_target_class_kl = decoupled_distillation_terms(
            student_logits, teacher_logits, batch["labels"], 2.0
        )
        torch.testing.assert_close(logged["loss_soft_tckd"][-1], target_class_kl)
        torch.testing.assert_close(logged["loss_soft_nckd"][-1], non_target_class_kl)
    else:
        assert "loss_soft_tckd" not in logged


def test_dkd_takes_the_dominant_class_of_mixed_labels_and_needs_labels(tmp_path):
    teacher, student = teacher_vit(), student_vit()
    args = config(tmp_path, soft_loss_type="dkd", label_loss_weight=0.0, soft_loss_weight=1.0)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, data_collator=stack)
    batch = stack(rows(4))
    mixed = 0.7 * torch.nn.functional.one_hot(batch["labels"], 3).float() + 0.1
    student.eval()
    torch.testing.assert_close(
        trainer.compute_loss(student, {**batch, "labels": mixed}), trainer.compute_loss(student, batch)
    )
    with pytest.raises(ValueError, match="soft_loss_type='dkd' needs 'labels'"):
        trainer.compute_loss(student, {"pixel_values": batch["pixel_values"]})


@pytest.mark.parametrize("soft_loss", ["kd_standardized", "dkd", "dkd_standardized", "reverse_kl", "jsd"])
@pytest.mark.slow
def test_each_soft_loss_trains_the_student_towards_the_teacher(tmp_path, soft_loss):
    """End to end: the term is logged and finite at every step, and training on it alone lowers it on the data."""
    args = config(tmp_path, max_steps=8, label_loss_weight=0.0, soft_loss_weight=1.0, learning_rate=0.01,
                  **SOFT_LOSSES[soft_loss])  # fmt: skip
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher_vit(), args=args, train_dataset=rows(8),
                                  eval_dataset=rows(8), data_collator=stack)  # fmt: skip
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == 8 and all(math.isfinite(entry["loss_soft"]) for entry in train_logs)
    if SOFT_LOSSES[soft_loss].get("soft_loss_type") == "dkd":
        assert all({"loss_soft_tckd", "loss_soft_nckd"} <= set(entry) for entry in train_logs)
        assert {"eval_loss_soft_tckd", "eval_loss_soft_nckd"} <= set(after)
    assert after["eval_loss_soft"] < before["eval_loss_soft"]
    assert after["eval_agreement"] > before["eval_agreement"]  # the student now predicts the teacher's classes


def test_dkd_warm_up_is_a_soft_loss_weight_schedule(tmp_path):
    """The paper ramps the DKD term in over its first 20 epochs; here over the first 2 (2 steps per epoch)."""
    args = config(tmp_path, soft_loss_type="dkd", max_steps=4, schedules=["soft_loss_weight=0-2:0.0->1.0"])
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher_vit(), args=args, train_dataset=rows(8),
                                  data_collator=stack)  # fmt: skip
    trainer.train()
    weights = [entry["soft_loss_weight"] for entry in trainer.state.log_history if "soft_loss_weight" in entry]
    assert weights == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_evaluation_reports_agreement_and_kl_over_the_whole_split(tmp_path):
    teacher, student = teacher_vit(), student_vit()
    args = config(tmp_path, per_device_eval_batch_size=3)  # batches of 3 and 2: a mean of batch means would differ
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, eval_dataset=rows(5),
                                  data_collator=stack)  # fmt: skip
    metrics = trainer.evaluate()
    batch = stack(rows(5))
    with torch.no_grad():
        student_logits, teacher_logits = student(batch["pixel_values"]).logits, teacher(batch["pixel_values"]).logits
    agreement = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()
    kl = soft_distillation_loss(student_logits, teacher_logits, 1.0).item()
    assert metrics["eval_agreement"] == pytest.approx(agreement)
    assert metrics["eval_teacher_student_kl"] == pytest.approx(kl, rel=1e-5)
    assert trainer.state.log_history[-1]["eval_teacher_student_kl"] == metrics["eval_teacher_student_kl"]
    # Other splits carry their prefix; a predict() in between does not leak into the next evaluation.
    test_metrics = trainer.evaluate(rows(5)[:4], metric_key_prefix="test")
    assert {"test_agreement", "test_teacher_student_kl"} <= set(test_metrics)
    assert test_metrics["test_teacher_student_kl"] != pytest.approx(kl)
    trainer.predict(rows(2))
    assert trainer.evaluate()["eval_teacher_student_kl"] == pytest.approx(kl, rel=1e-5)


def test_agreement_with_a_teacher_no_term_uses_with_cached_logits_and_without_teacher(tmp_path):
    teacher = teacher_vit()
    labels_only = config(tmp_path, soft_loss_weight=0.0, label_loss_weight=1.0)
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher, args=labels_only, eval_dataset=rows(4),
                                  data_collator=stack)  # fmt: skip
    live = trainer.evaluate()
    assert 0.0 <= live["eval_agreement"] <= 1.0 and live["eval_teacher_student_kl"] > 0
    no_teacher = DistillationTrainer(model=student_vit(), args=labels_only, eval_dataset=rows(4), data_collator=stack)
    assert "eval_agreement" not in no_teacher.evaluate()

    # Offline: the teacher's cached logits in the batches give the same numbers as the live teacher.
    with torch.no_grad():
        cached = teacher(stack(rows(4))["pixel_values"]).logits

    def with_cached_logits(batch: list[dict]) -> dict[str, torch.Tensor]:
        return {**stack(batch), "teacher_logits": torch.stack([row["teacher_logits"] for row in batch])}

    offline_rows = [{**row, "teacher_logits": logits} for row, logits in zip(rows(4), cached)]
    offline = DistillationTrainer(model=student_vit(), args=config(tmp_path, offline_teacher=True),
                                  eval_dataset=offline_rows, data_collator=with_cached_logits)  # fmt: skip
    offline_metrics = offline.evaluate()
    assert offline_metrics["eval_agreement"] == pytest.approx(live["eval_agreement"])
    assert offline_metrics["eval_teacher_student_kl"] == pytest.approx(live["eval_teacher_student_kl"], rel=1e-5)


def test_soft_loss_flags_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"soft_loss_type='dkl' is not one of \['kd', 'dkd', 'reverse_kl', 'jsd'\]"):
        config(tmp_path, soft_loss_type="dkl")
    with pytest.raises(ValueError, match="dkd_alpha=-1.0 and dkd_beta=8.0 must be >= 0"):
        config(tmp_path, soft_loss_type="dkd", dkd_alpha=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        config(tmp_path, soft_loss_type="dkd", dkd_alpha=0.0, dkd_beta=0.0)
    with pytest.raises(ValueError, match=r"jsd_beta=1.5 must be in \[0, 1\]"):
        config(tmp_path, soft_loss_type="jsd", jsd_beta=1.5)
    with pytest.raises(ValueError, match=r"ignores dkd_alpha=1.0, dkd_beta=4.0 \(used with soft_loss_type='dkd'\)"):
        config(tmp_path, dkd_beta=4.0)
    with pytest.raises(ValueError, match=r"soft_loss_type='dkd' ignores jsd_beta=0.2"):
        config(tmp_path, soft_loss_type="dkd", jsd_beta=0.2)
    with pytest.raises(ValueError, match="has no effect: soft_loss_weight is 0"):
        config(tmp_path, logit_standardization=True, soft_loss_weight=0.0)
    # A scheduled soft weight counts as used; the defaults stay classic KD.
    config(tmp_path, soft_loss_type="reverse_kl", soft_loss_weight=0.0, schedules=["soft_loss_weight=linear:0->1"])
    defaults = config(tmp_path)
    assert (defaults.soft_loss_type, defaults.logit_standardization) == ("kd", False)
