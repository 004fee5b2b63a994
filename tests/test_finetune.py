"""Fine-tuning strategies and examples/finetune.py, on "pretrained" backbones the tests build and save locally (a
transformers ViT, a timm ResNet, ours): the same loading code paths a Hub id takes."""

import json

import pytest
import torch
from conftest import load_example
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_vision_distill.finetuning import (
    FineTuningArguments,
    FineTuningTrainer,
    GradualUnfreezing,
    add_head_dropout,
    apply_strategy,
    block_groups,
    count_trainable,
)
from hf_vision_distill.models import (
    VisionTransformerConfig,
    VisionTransformerForImageClassification,
    load_image_classifier,
)

PRETRAINED_LABELS = {index: f"pretrained_{index}" for index in range(5)}


def load_recipe():
    return load_example("finetune")


def save_transformers_vit(path, image_size=32, patch_size=8):
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=patch_size, id2label=PRETRAINED_LABELS,
                       label2id={name: index for index, name in PRETRAINED_LABELS.items()})  # fmt: skip
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(path)  # fmt: skip
    return path


def save_timm_resnet(path):
    torch.manual_seed(0)
    model = load_image_classifier("resnet10t", id2label=PRETRAINED_LABELS).model
    # As in a timm Hub checkpoint's config.json: the data settings under pretrained_cfg; small inputs, a fast test.
    model.config.pretrained_cfg = {**model.timm_model.pretrained_cfg, "input_size": [3, 32, 32]}
    model.save_pretrained(path)
    return path


@pytest.fixture
def transformers_vit(tmp_path):
    return save_transformers_vit(tmp_path / "pretrained-vit")


@pytest.fixture
def timm_resnet(tmp_path):
    return save_timm_resnet(tmp_path / "pretrained-resnet")


def run_arguments(model_path, output_dir, *extra):
    return [
        "--model_name_or_path", str(model_path), "--output_dir", str(output_dir), "--max_train_samples", "64",
        "--max_eval_samples", "32", "--per_device_train_batch_size", "16", "--num_train_epochs", "1",
        "--dataloader_num_workers", "0", "--report_to", "none", "--logging_steps", "1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("backbone", ["transformers_vit", "timm_resnet"])
@pytest.mark.slow
def test_linear_probe_trains_only_the_head(request, tmp_path, backbone):
    pretrained = request.getfixturevalue(backbone)
    # Gradients: only the head's parameters get one.
    model = load_image_classifier(str(pretrained), id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True).model
    apply_strategy(model, FineTuningArguments(strategy="linear_probe"))
    model(pixel_values=torch.randn(2, 3, 32, 32)).logits.sum().backward()
    _, _, head = block_groups(model)
    with_gradient = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_gradient == set(head)

    # The recipe: backbone weights leave exactly as they came, the new head has learned.
    metrics = load_recipe().main(run_arguments(pretrained, tmp_path / "probe", "--strategy", "linear_probe",
                                               "--learning_rate", "1e-2"))  # fmt: skip
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(tmp_path / "probe" / "model.safetensors"))
    for name, value in after.items():
        if name in head:
            continue
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    assert after[head[0]].shape[0] == 10  # the sample's 10 classes replaced the 5 pretrained ones
    assert 0 < metrics["trainable_share"] < 0.1 and metrics["trainable_parameters"] == sum(
        after[name].numel() for name in head
    )
    results = json.loads((tmp_path / "probe" / "all_results.json").read_text())
    assert results["trainable_parameters"] == metrics["trainable_parameters"]


def test_last_n_and_full(transformers_vit):
    model = load_image_classifier(str(transformers_vit), id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True).model
    stem, blocks, head = block_groups(model)
    assert len(blocks) == 3 and stem and head
    apply_strategy(model, FineTuningArguments(strategy="last_n", num_unfrozen_blocks=2))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == set(head) | set(blocks[1]) | set(blocks[2])
    assert "vit.layernorm.weight" in blocks[2]  # the final norm trains with the last block
    apply_strategy(model, FineTuningArguments(strategy="full"))
    assert count_trainable(model)[0] == count_trainable(model)[1]


class RecordTrainable(TrainerCallback):
    def __init__(self, model):
        self.model, self.by_epoch = model, []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.by_epoch.append({name for name, p in self.model.named_parameters() if p.requires_grad})


@pytest.mark.slow
def test_gradual_unfreezing_follows_its_schedule(tmp_path, transformers_vit):
    model = load_image_classifier(str(transformers_vit), id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True).model
    finetuning_args = FineTuningArguments(strategy="gradual", unfreeze_every_epochs=1)
    apply_strategy(model, finetuning_args)
    stem, blocks, head = block_groups(model)
    start = {name: value.clone() for name, value in model.state_dict().items()}
    rows = [{"pixel_values": torch.randn(3, 32, 32), "labels": index % 2} for index in range(8)]
    recorder = RecordTrainable(model)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True)  # fmt: skip
    trainer = FineTuningTrainer(model=model, args=args, finetuning_args=finetuning_args, train_dataset=rows,
                                callbacks=[GradualUnfreezing(model, 1), recorder])  # fmt: skip
    trainer.train()
    # Epoch 0: the head; epoch 1: + the last block; epoch 2: + the one below it. The stem never.
    assert recorder.by_epoch == [set(head), set(head) | set(blocks[2]), set(head) | set(blocks[2]) | set(blocks[1])]
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, start[name])}
    assert set(head) <= changed and set(blocks[2]) & changed and set(blocks[1]) & changed
    assert not (set(blocks[0]) | set(stem)) & changed


def test_layer_decay_and_head_learning_rate(tmp_path, transformers_vit):
    model = load_image_classifier(str(transformers_vit), id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True).model
    finetuning_args = FineTuningArguments(strategy="full", layer_decay=0.5, head_learning_rate=1e-2)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to="none",
                             use_cpu=True)  # fmt: skip
    trainer = FineTuningTrainer(model=model, args=args, finetuning_args=finetuning_args)
    optimizer = trainer.create_optimizer()
    stem, blocks, head = block_groups(model)
    learning_rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    parameters = dict(model.named_parameters())
    assert {learning_rate_of[id(parameters[name])] for name in head} == {1e-2}
    for depth, names in enumerate(reversed(blocks), start=1):  # 1e-3 * 0.5, 0.25, 0.125 from the top down
        assert [learning_rate_of[id(parameters[name])] for name in names] == pytest.approx(
            [1e-3 * 0.5**depth] * len(names)
        )
    assert [learning_rate_of[id(parameters[name])] for name in stem] == pytest.approx([1e-3 * 0.5**4] * len(stem))
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(parameters)
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(parameters["classifier.bias"]) in no_decay and id(parameters["classifier.weight"]) not in no_decay


@pytest.mark.slow
def test_sanity_mode_overfits_a_batch(tmp_path):
    tiny = json.dumps({"hidden_sizes": [16, 32, 32], "depths": [1, 1, 1]})
    metrics = load_recipe().main([
        "--model_name_or_path", "compact-cnn", "--config_overrides", tiny, "--output_dir", str(tmp_path),
        "--overfit_batches", "1", "--per_device_train_batch_size", "16", "--num_train_epochs", "50",
        "--learning_rate", "1e-2", "--dataloader_num_workers", "0", "--report_to", "none",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    ])  # fmt: skip
    assert metrics["eval_accuracy"] >= 0.95  # 16 training images, classified as trained


def test_a_sanity_run_is_not_published(tmp_path, monkeypatch):
    """Refused before the Hub is contacted or anything loads (a sanity check's model gets no card, so no push)."""
    recipe = load_recipe()
    monkeypatch.setattr(recipe.Recipe, "load_data", lambda *args: pytest.fail("loaded data"))
    with pytest.raises(ValueError, match="--overfit_batches 1 is a sanity check.*leave out --push_to_hub"):
        recipe.main(["--model_name_or_path", "compact-cnn", "--output_dir", str(tmp_path), "--overfit_batches", "1",
                     "--push_to_hub", "--hub_model_id", "user/sanity"])  # fmt: skip


@pytest.mark.slow
def test_fashion_mnist_linear_probe_upsamples_to_the_backbone(tmp_path, fashion_mnist_path):
    """28x28 grayscale Fashion-MNIST into a (tiny) ViT pretrained at 224: RGB, upsampled to 224, as a ViT-Small
    user would run it."""
    backbone = save_transformers_vit(tmp_path / "vit-224", image_size=224, patch_size=32)
    metrics = load_recipe().main(run_arguments(backbone, tmp_path / "probe", "--dataset_name", str(fashion_mnist_path),
                                               "--strategy", "linear_probe", "--learning_rate", "1e-2",
                                               "--max_eval_samples", "16"))  # fmt: skip
    config = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert config["image_size"] == 224 and config["id2label"]["0"] == "T - shirt / top"
    assert "test_accuracy" in metrics and metrics["trainable_share"] < 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="strategy='partial' is not one of"):
        FineTuningArguments(strategy="partial")
    with pytest.raises(ValueError, match="layer_decay=1.5"):
        FineTuningArguments(layer_decay=1.5)
    with pytest.raises(ValueError, match="--model_name_or_path"):
        load_recipe().main(["--report_to", "none"])


@pytest.mark.slow
def test_compare_writes_every_artifact(tmp_path, cifar10_path):
    """Two models on a small CIFAR-10 subset: a CNN from scratch and a (tiny, local) pretrained ViT linear probe."""
    vit = save_transformers_vit(tmp_path / "pretrained-vit")
    output_dir = tmp_path / "compare"
    rows = load_example("compare").main([
        "--models", "compact-cnn", str(vit), "--strategies", "full", "linear_probe",
        "--dataset_name", str(cifar10_path), "--max_train_samples", "64", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "16", "--num_train_epochs", "1", "--dataloader_num_workers", "0",
        "--logging_steps", "1", "--output_dir", str(output_dir), "--speed_batch_size", "8",
        "--profile_batch_size", "4",
    ])  # fmt: skip
    assert [row["strategy"] for row in rows] == ["full", "linear_probe"]
    assert rows[0]["trainable_parameters"] == rows[0]["parameters"] > rows[1]["trainable_parameters"] > 0
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["gflops_per_image"] > 0 and row["latency_ms"] > 0
        assert row["throughput_images_per_s"] > 0 and row["training_time_s"] > 0
        assert len(row["report"]) == 12 and row["report"][-2]["class"] == "macro avg"
        assert row["report"][-2]["f1"] == pytest.approx(row["f1_macro"])
    for folder in ("compact-cnn", vit.name):
        model_dir = next(output_dir.glob(f"*{folder}"))
        for name in ("classification_report.md", "confusion_matrix.png", "training_curves.png",
                     "profile_trace.json", "profile_operators.txt"):  # fmt: skip
            assert (model_dir / name).is_file(), (folder, name)
        assert json.loads((model_dir / "profile_trace.json").read_text())["traceEvents"]
        assert list((model_dir / "runs").rglob("events.out.tfevents.*"))  # TensorBoard logs
    csv_lines = (output_dir / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("model,strategy,accuracy,f1_macro,parameters")
    comparison = (output_dir / "model_comparison.md").read_text()
    assert "| compact-cnn | full |" in comparison and "confusion_matrix.png" in comparison


def test_head_dropout_reaches_both_heads_of_a_deit_style_vit():
    config = VisionTransformerConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64, num_labels=5,
                                     distillation_token=True)  # fmt: skip
    model = VisionTransformerForImageClassification(config)
    add_head_dropout(model, 0.5)
    pixel_values = torch.randn(2, 3, 32, 32)
    model.train()  # the backbone has no dropout: only the heads' inputs change between two passes
    first, second = model(pixel_values=pixel_values), model(pixel_values=pixel_values)
    assert not torch.equal(first.cls_logits, second.cls_logits)
    assert not torch.equal(first.distillation_logits, second.distillation_logits)
    model.eval()
    assert torch.equal(model(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)
