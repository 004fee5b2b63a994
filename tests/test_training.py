"""ImageClassificationTrainer: the loss, gradient accumulation, and soft targets for models of any origin."""

import numpy as np
import pytest
import torch
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification
from hf_vision_distill.data import (
    ImageClassificationCollator,
    build_transforms,
    load_image_classification_dataset,
    with_image_transform,
)
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.profiling import training_flops_per_image
from hf_vision_distill.training import ImageClassificationTrainer, classification_loss


def tiny_vit() -> VisionTransformerForImageClassification:
    torch.manual_seed(0)
    config = VisionTransformerConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, num_labels=3)  # fmt: skip
    return VisionTransformerForImageClassification(config)


def tiny_transformers_vit() -> ViTForImageClassification:
    """transformers' ViT: its forward takes **kwargs, so the Trainer would otherwise treat its loss as GA-scaled."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=3)  # fmt: skip
    return ViTForImageClassification(config)


MODEL_FACTORIES = {"ours": tiny_vit, "transformers": tiny_transformers_vit}


def examples(soft: bool) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for index in range(8):
        label = torch.softmax(torch.randn(3, generator=generator), -1) if soft else index % 3
        rows.append({"pixel_values": torch.randn(3, 16, 16, generator=generator), "labels": label})
    return rows


def stack(rows: list[dict]) -> dict[str, torch.Tensor]:
    labels = [row["labels"] for row in rows]
    return {
        "pixel_values": torch.stack([row["pixel_values"] for row in rows]),
        "labels": torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels),
    }


def train_one_update(
    tmp_path, batch_size: int, accumulation: int, soft: bool, label_smoothing: float = 0.0, factory=tiny_vit
):
    model = factory()
    args = TrainingArguments(
        output_dir=str(tmp_path / f"{factory.__name__}-{batch_size}x{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to="none", save_strategy="no",
        seed=3, use_cpu=True, dataloader_num_workers=0, label_smoothing_factor=label_smoothing,
    )  # fmt: skip
    ImageClassificationTrainer(model=model, args=args, train_dataset=examples(soft), data_collator=stack).train()
    return model


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.slow
def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(tmp_path, soft, model_name):
    factory = MODEL_FACTORIES[model_name]
    large = train_one_update(tmp_path, 8, 1, soft=soft, label_smoothing=0.1, factory=factory)
    accumulated = train_one_update(tmp_path, 4, 2, soft=soft, label_smoothing=0.1, factory=factory)
    untouched = factory()
    for (name, parameter), expected, initial in zip(
        accumulated.named_parameters(), large.parameters(), untouched.parameters()
    ):
        assert not torch.equal(expected, initial), f"{name} did not move"
        torch.testing.assert_close(parameter, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_classification_loss_closed_forms():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    log_probabilities = logits.log_softmax(-1)
    hard = torch.tensor([0, 2])
    torch.testing.assert_close(classification_loss(logits, hard), -log_probabilities[[0, 1], [0, 2]].mean())
    smoothed_targets = torch.full((2, 3), 0.1 / 3) + 0.9 * torch.nn.functional.one_hot(hard, 3)
    torch.testing.assert_close(
        classification_loss(logits, hard, label_smoothing=0.1), -(smoothed_targets * log_probabilities).sum(-1).mean()
    )
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])
    torch.testing.assert_close(classification_loss(logits, soft), -(soft * log_probabilities).sum(-1).mean())


@pytest.mark.slow
def test_soft_targets_train_a_timm_model_as_single_label(tmp_path):
    loaded = load_image_classifier("resnet10t", id2label={0: "a", 1: "b", 2: "c"})
    model = loaded.model
    collator = ImageClassificationCollator(num_labels=3, mixup_alpha=0.4)
    rows = [{"pixel_values": torch.randn(3, 32, 32), "labels": index % 3} for index in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                             report_to="none", save_strategy="no", use_cpu=True)  # fmt: skip
    trainer = ImageClassificationTrainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    # transformers' own loss would have switched this to multi-label (BCE) on the first float batch.
    assert model.config.problem_type is None


def test_missing_labels_is_a_clear_error(tmp_path):
    model = tiny_vit()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = ImageClassificationTrainer(model=model, args=args)
    with pytest.raises(ValueError, match="needs 'labels'"):
        trainer.compute_loss(model, {"pixel_values": torch.randn(2, 3, 16, 16)})


@pytest.mark.slow
def test_total_flos_counts_three_forward_passes_per_trained_image(tmp_path):
    model = tiny_vit()
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model.eval()(pixel_values=torch.randn(1, 3, 16, 16))
    per_image = training_flops_per_image(model, (16, 16))
    # The backward pass costs up to twice the forward: gradients of the weights, and of the activations except the
    # input's (the patch embedding, a large part of this tiny model, needs none).
    assert 2 * counter.get_total_flops() < per_image <= 3 * counter.get_total_flops()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to="none",
                             save_strategy="no", use_cpu=True, dataloader_num_workers=0)  # fmt: skip
    trainer = ImageClassificationTrainer(model=model, args=args, train_dataset=examples(False), data_collator=stack)
    trainer.train()
    # transformers' own estimate, 6 x parameters x pixel values, would be about 1,000 times larger here.
    assert trainer.state.total_flos == per_image * 8


@pytest.mark.slow
def test_torch_compile_does_not_recompile_for_the_last_smaller_batch(tmp_path):
    model = load_image_classifier("compact-cnn", id2label={0: "a", 1: "b", 2: "c"},
                                  config_overrides={"hidden_sizes": [4, 4, 4]}).model  # fmt: skip
    # 8 examples in batches of 3: 3, 3, then 2. The eager backend traces and guards like inductor, without codegen.
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, num_train_epochs=2,
                             report_to="none", save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                             torch_compile_backend="eager")  # fmt: skip
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        ImageClassificationTrainer(model=model, args=args, train_dataset=examples(False), data_collator=stack).train()


class PlainClassifier(torch.nn.Module):
    """A classifier that, unlike ours, does not cast its input to its weights' dtype."""

    def __init__(self):
        super().__init__()
        self.convolution = torch.nn.Conv2d(3, 4, kernel_size=3)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, pixel_values):
        return ImageClassifierOutput(logits=self.head(self.convolution(pixel_values).mean(dim=(2, 3))))


@pytest.mark.slow
def test_total_flos_with_uint8_batches_normalised_on_the_device(tmp_path):
    model = PlainClassifier()
    per_image = training_flops_per_image(model, (16, 16))
    generator = torch.Generator().manual_seed(0)
    rows = [{"pixel_values": torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=generator),
             "labels": index % 3} for index in range(8)]  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to="none",
                             save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                             remove_unused_columns=False)  # fmt: skip
    collator = ImageClassificationCollator(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    trainer = ImageClassificationTrainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    trainer.train()
    assert trainer.state.total_flos == per_image * 8


def test_each_explicit_evaluation_dataset_gets_its_own_loader_with_persistent_workers(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, dataloader_num_workers=1,
                             dataloader_persistent_workers=True)  # fmt: skip
    validation, test = examples(False)[:4], examples(False)[4:7]
    trainer = ImageClassificationTrainer(model=tiny_vit(), args=args, eval_dataset=validation, data_collator=stack)
    assert trainer.get_eval_dataloader().dataset is validation
    # transformers keeps the first loader under "eval" and would hand it back for the test split.
    assert trainer.get_eval_dataloader(test).dataset is test
    assert trainer.get_eval_dataloader(validation).dataset is validation


def test_flops_are_counted_on_the_models_device_not_the_batchs(tmp_path):
    """The worker pipeline's batch is still uint8 on the host when the Trainer counts its FLOPs, while the model sits
    on the accelerator (here `meta` stands in for it): the count runs on the model's device."""
    model = PlainClassifier()
    per_image = training_flops_per_image(model, (16, 16))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = ImageClassificationTrainer(model=model, args=args)
    trainer.model.to("meta")
    host_batch = {"pixel_values": torch.zeros(4, 3, 16, 16, dtype=torch.uint8), "labels": torch.zeros(4)}
    assert per_image > 0 and trainer.floating_point_ops(host_batch) == per_image * 4


@pytest.mark.slow
def test_the_last_epoch_is_evaluated_beside_the_kept_best_checkpoint_and_the_kept_weights_stay(tmp_path):
    from hf_vision_distill.evaluation import build_compute_metrics

    model = tiny_vit()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=3,
                             learning_rate=0.5, optim="sgd", eval_strategy="epoch", save_strategy="epoch",
                             load_best_model_at_end=True, metric_for_best_model="accuracy", report_to="none",
                             use_cpu=True, dataloader_num_workers=0, seed=3)  # fmt: skip
    trainer = ImageClassificationTrainer(model=model, args=args, train_dataset=examples(False),
                                         eval_dataset=examples(False), data_collator=stack,
                                         compute_metrics=build_compute_metrics())  # fmt: skip
    trainer.train()
    last = tmp_path / "checkpoint-6"
    if trainer.state.best_model_checkpoint == str(last):
        assert trainer.evaluate_last_epoch(examples(False), "test") is None  # the kept model is the last epoch's
        trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-2")  # as if epoch 1 had been the best
        trainer._load_best_model()
    kept = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    expected = trainer.evaluate(examples(False), metric_key_prefix="test")

    metrics = trainer.evaluate_last_epoch(examples(False), "test")

    last_model = VisionTransformerForImageClassification.from_pretrained(last)
    last_trainer = ImageClassificationTrainer(model=last_model, args=args, eval_dataset=examples(False),
                                              data_collator=stack,
                                              compute_metrics=build_compute_metrics())  # fmt: skip
    reference = last_trainer.evaluate(examples(False), metric_key_prefix="test")
    assert metrics["last_epoch_test_loss"] == pytest.approx(reference["test_loss"], abs=1e-6)
    assert metrics["last_epoch_test_accuracy"] == reference["test_accuracy"]
    assert metrics["last_epoch_test_loss"] != pytest.approx(expected["test_loss"], abs=1e-6)  # another model
    for name, tensor in model.state_dict().items():  # the kept (best) weights are back
        torch.testing.assert_close(tensor, kept[name], atol=0, rtol=0)


def test_extra_columns_ride_with_the_batch_and_never_reach_the_model(tmp_path, cifar10_sample_path):
    # Any per-row array a caller attaches (a distillation's cached teacher logits are one) is stacked by the generic
    # collator under its own name; the generic trainer gives the model its pixels only.
    data = load_image_classification_dataset(str(cifar10_sample_path), max_train_samples=8, max_eval_samples=4)
    rows = max(data.dataset["train"]["row_index"]) + 1  # the table is indexed by source row
    scores = np.arange(rows * 2, dtype=np.float32).reshape(-1, 2)
    train = with_image_transform(data.dataset["train"], build_transforms(16, train=False),
                                 extra_columns={"difficulty": scores})  # fmt: skip
    collator = ImageClassificationCollator()
    batch = collator([train[index] for index in range(4)])
    assert set(batch) == {"pixel_values", "labels", "difficulty"} and batch["difficulty"].shape == (4, 2)
    with pytest.raises(ValueError, match="turn mixup/cutmix off"):
        ImageClassificationCollator(num_labels=10, mixup_alpha=0.2)([train[0], train[1]])
    torch.manual_seed(0)
    config = VisionTransformerConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, id2label=data.id2label,
                                     label2id=data.label2id)  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to="none",
                             save_strategy="no", use_cpu=True, remove_unused_columns=False)  # fmt: skip
    trainer = ImageClassificationTrainer(model=VisionTransformerForImageClassification(config), args=args,
                                         train_dataset=train, data_collator=collator)  # fmt: skip
    assert trainer.train().training_loss > 0
