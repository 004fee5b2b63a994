"""The hybrid TransformerConv-ResNet: the model, its conversion from ResNets (ours, timm, torchvision, transformers),
stage 1 (LayerwiseDistillationTrainer) and the two-step recipe (layerwise_distill.py, then finetune.py)."""

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from conftest import load_example
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification, TrainingArguments

from hf_vision_distill.distillation import LayerwiseDistillationTrainer, block_names
from hf_vision_distill.models.hybrid_resnet import HybridResNetConfig, HybridResNetForImageClassification
from hf_vision_distill.models.hybrid_resnet.convert_hybrid_resnet import (
    hybrid_from_resnet,
    resnet_as_hybrid,
    split_convolution,
)
from hf_vision_distill.models.hybrid_resnet.modeling_hybrid_resnet import LocalSelfAttention

TINY = {"embedding_size": 8, "hidden_sizes": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "key_dim": 4}
LABELS = {index: name for index, name in enumerate(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                     "horse", "ship", "truck"])}  # fmt: skip


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics and affine terms, as after training (timm zero-initialises the last BN of each
    block, which would hide the convolutions behind it)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def block_relative_errors(cnn, hybrid, pixel_values) -> list[float]:
    with torch.no_grad():
        hidden_states = cnn(pixel_values, output_hidden_states=True).hidden_states
        outputs = hybrid(block_inputs=list(hidden_states[:-1])).block_outputs
    return [relative(output, target) for output, target in zip(outputs, hidden_states[1:])]


# ---- the model ----


@pytest.mark.parametrize("stem, size, grid", [("cifar", 32, 4), ("imagenet", 64, 2)])
def test_shapes_hidden_states_and_attentions(stem, size, grid):
    config = HybridResNetConfig(**TINY, stem=stem, num_labels=3)
    model = HybridResNetForImageClassification(config).eval()
    outputs = model(torch.randn(2, 3, size, size), output_hidden_states=True, output_attentions=True)
    assert outputs.logits.shape == (2, 3)
    assert len(outputs.hidden_states) == 1 + sum(config.depths)  # stem, then every block
    assert outputs.hidden_states[-1].shape == (2, 32, grid, grid)
    # two attention layers per transformer block (stages 3 and 4), 9 heads over 9 offsets
    assert len(outputs.attentions) == 4
    assert outputs.attentions[-1].shape == (2, 9, 9, grid, grid)
    torch.testing.assert_close(outputs.attentions[-1].sum(dim=2), torch.ones(2, 9, grid, grid))


def test_random_init_every_parameter_learns_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = HybridResNetForImageClassification(HybridResNetConfig(**TINY, num_labels=3))
    attention = model.hybrid_resnet.blocks[-1].attention1
    # locality start: each head on its own offset; content scores start at zero
    assert torch.equal(attention.relative_position_bias, 8.0 * torch.eye(9))
    assert attention.query.weight.abs().max() == 0 and attention.key.weight.abs().max() > 0
    assert model.hybrid_resnet.blocks[-1].mlp.fc2.weight.abs().max() == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pixel_values, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for step in range(2):
        optimizer.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        no_gradient = {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0}
        if step == 0:
            # The zero query and zero fc2 get gradients (from the random keys / fc1); the keys and what feeds fc1
            # get theirs once those have moved.
            assert no_gradient and all(
                name.endswith(
                    ("key.weight", "fc1.weight", "fc1.bias", "mlp.normalization.weight", "mlp.normalization.bias")
                )
                for name in no_gradient
            )
        optimizer.step()
    assert no_gradient == set()  # every parameter learns from the second step on

    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is HybridResNetForImageClassification
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="block_types has \\['mlp'\\]"):
        HybridResNetConfig(block_types=["conv", "conv", "mlp", "transformer"])
    with pytest.raises(ValueError, match="one entry per stage"):
        HybridResNetConfig(block_types=["conv"])
    with pytest.raises(ValueError, match="kernel_size=4 must be odd"):
        HybridResNetConfig(kernel_size=4)


# ---- conversion ----


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_attention_reproduces_a_zero_padded_convolution(stride, size):
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    pixel_values = torch.randn(2, 4, size, size)
    convolution = F.conv2d(pixel_values, weight, padding=1, stride=stride)
    attention = LocalSelfAttention(4, 6, kernel_size=3, value_dim=6, key_dim=2, stride=stride)
    # Full rank and a saturated bias: exact up to float32 rounding, borders included.
    split_convolution(weight, attention, locality_strength=30.0)
    assert relative(attention(pixel_values)[0], convolution) < 1e-6
    # The default strength leaves 1 / (1 + 8 e^-8) = 99.73% on each head's offset; the rest leaks to neighbours.
    split_convolution(weight, attention, locality_strength=8.0)
    assert relative(attention(pixel_values)[0], convolution) < 8 * math.exp(-8) * 3
    # Rank 2 of 4: the truncated SVD is the best rank-2 approximation of each tap.
    low_rank = LocalSelfAttention(4, 6, kernel_size=3, value_dim=2, key_dim=2, stride=stride)
    split_convolution(weight, low_rank, locality_strength=30.0)
    taps = weight.permute(2, 3, 0, 1).reshape(9, 6, 4)
    left, singular, right = torch.linalg.svd(taps, full_matrices=False)
    best = (left[:, :, :2] * singular[:, None, :2]) @ right[:, :2]
    best_weight = best.reshape(3, 3, 6, 4).permute(2, 3, 0, 1)
    expected = F.conv2d(pixel_values, best_weight, padding=1, stride=stride)
    assert relative(low_rank(pixel_values)[0], expected) < 1e-5


def timm_resnet18(cifar: bool):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    if cifar:  # the CIFAR variant: 3x3 stride-1 stem, no max-pool
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    return trained_like(model)


def transformers_resnet18():
    torch.manual_seed(0)
    config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                          embedding_size=64, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})  # fmt: skip
    return trained_like(ResNetForImageClassification(config))


def ours_resnet18():
    torch.manual_seed(0)
    config = HybridResNetConfig.from_preset("resnet18-cifar", id2label=LABELS)
    return trained_like(HybridResNetForImageClassification(config))


SOURCES = {
    "ours": (ours_resnet18, "cifar"),
    "timm": (lambda: timm_resnet18(cifar=False), "imagenet"),
    "timm-cifar": (lambda: timm_resnet18(cifar=True), "cifar"),
    "torchvision": (lambda: trained_like(torchvision.models.resnet18(num_classes=10)), "imagenet"),
    "transformers": (transformers_resnet18, "imagenet"),
}


@pytest.mark.parametrize("source_name", list(SOURCES))
@pytest.mark.slow
def test_each_resnet18_reads_into_our_layout_exactly(source_name):
    build, stem = SOURCES[source_name]
    source = build()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(pixel_values)
        expected = expected.logits if hasattr(expected, "logits") else expected
    cnn = resnet_as_hybrid(source)
    assert cnn.config.stem == stem and cnn.config.hidden_sizes == [64, 128, 256, 512]
    assert cnn.config.depths == [2, 2, 2, 2] and cnn.num_parameters() == sum(p.numel() for p in source.parameters())
    with torch.no_grad():
        torch.testing.assert_close(cnn(pixel_values).logits, expected, atol=1e-5, rtol=1e-5)


def test_hybrid_parameters_are_at_most_65_percent_of_resnet18():
    resnet18 = HybridResNetForImageClassification(HybridResNetConfig.from_preset("resnet18-cifar", num_labels=10))
    hybrid = HybridResNetForImageClassification(HybridResNetConfig.from_preset("hybrid-resnet18", num_labels=10))
    assert resnet18.num_parameters() == 11_173_962  # torchvision's resnet18 with a 10-class head and the CIFAR stem
    assert hybrid.num_parameters() / resnet18.num_parameters() == pytest.approx(0.636, abs=0.001)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.slow
def test_conversion_reproduces_each_block(stem):
    torch.manual_seed(0)
    config = HybridResNetConfig(**{**TINY, "depths": [2, 2, 2, 2]}, stem=stem, block_types=["conv"] * 4, num_labels=5)
    cnn = trained_like(HybridResNetForImageClassification(config))
    pixel_values = torch.randn(2, 3, 64, 64)
    # Every block a transformer block at full rank: each reproduces its BasicBlock (stated tolerance 1e-5).
    exact = hybrid_from_resnet(cnn, block_types=["transformer"] * 4, value_dim_ratio=1.0, locality_strength=30.0)
    assert max(block_relative_errors(cnn, exact, pixel_values)) < 1e-5
    with torch.no_grad():
        assert relative(exact(pixel_values).logits, cnn(pixel_values).logits) < 1e-5
    # The default hybrid: stages 1-2 copied exactly, stages 3-4 at rank C/4 approximate.
    hybrid = hybrid_from_resnet(cnn)
    errors = block_relative_errors(cnn, hybrid, pixel_values)
    assert errors[:4] == [0.0] * 4 and all(0 < error < 1 for error in errors[4:])


def test_conversion_refuses_what_it_cannot_copy():
    with pytest.raises(ValueError, match="not a BasicBlock"):
        resnet_as_hybrid(timm.create_model("resnet26", num_classes=10))
    with pytest.raises(ValueError, match="deep stem"):
        resnet_as_hybrid(timm.create_model("resnet18d", num_classes=10))
    with pytest.raises(ValueError, match="come from the CNN"):
        hybrid_from_resnet(ours_resnet18(), hidden_sizes=[8, 8, 8, 8])
    with pytest.raises(ValueError, match="cannot read a ResNet"):
        resnet_as_hybrid(torch.nn.Linear(3, 3))


# ---- stage 1 ----


def tiny_teacher() -> HybridResNetForImageClassification:
    torch.manual_seed(0)
    return trained_like(HybridResNetForImageClassification(
        HybridResNetConfig(**TINY, block_types=["conv"] * 4, id2label={0: "a", 1: "b"})))  # fmt: skip


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, count: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, 16, 16, generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


@pytest.mark.slow
def test_stage1_trains_only_the_transformer_blocks_and_reduces_their_error(tmp_path):
    teacher = tiny_teacher()
    student = hybrid_from_resnet(teacher, value_dim_ratio=0.25)
    before = {name: tensor.clone() for name, tensor in student.state_dict().items()}
    teacher_before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    images = RandomImages(64)
    errors_before = block_relative_errors(teacher, student, images.images)
    args = TrainingArguments(output_dir=str(tmp_path / "stage1"), per_device_train_batch_size=16, num_train_epochs=6,
                             learning_rate=3e-3, logging_steps=1, report_to=[], save_strategy="no",
                             use_cpu=True, dataloader_num_workers=0)  # fmt: skip
    trainer = LayerwiseDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=images)
    names = block_names(student)
    assert [names[index] for index in trainer.blocks] == ["stage3.block0", "stage4.block0"]
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"mse_stage3.block0", "mse_stage4.block0"} <= set(logged[0])
    after = student.state_dict()
    changed = {name.split(".")[2] + "." + name.split(".")[3] for name in after
               if name.startswith("hybrid_resnet.stages") and not torch.equal(after[name], before[name])}  # fmt: skip
    assert changed == {"2.0", "3.0"}  # stages 3 and 4 only
    for name in after:
        if not name.startswith(("hybrid_resnet.stages.2", "hybrid_resnet.stages.3")):
            assert torch.equal(after[name], before[name]), name
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    errors_after = block_relative_errors(teacher, student, images.images)
    assert errors_after[2] < errors_before[2] and errors_after[3] < errors_before[3]

    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images.images[:4]).logits, student.eval()(images.images[:4]).logits)


def test_stage1_evaluates_under_mixed_precision_before_training(tmp_path):
    """The recipe's "converted" accuracy comes from an evaluation before training: it must run under the same bf16
    autocast as the evaluations after it (a prepared teacher once made the Trainer skip preparing the student)."""
    student = hybrid_from_resnet(tiny_teacher())
    autocast_seen = []
    student.classifier.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True,
                             bf16=True, dataloader_num_workers=0)  # fmt: skip
    trainer = LayerwiseDistillationTrainer(model=student, teacher=tiny_teacher(), args=args)
    metrics = trainer.evaluate(RandomImages(8))
    assert autocast_seen == [True]
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_mse_stage3.block0"] > 0


def test_stage1_refuses_a_teacher_of_another_layout(tmp_path):
    student = hybrid_from_resnet(tiny_teacher())
    other = HybridResNetForImageClassification(HybridResNetConfig(block_types=["conv"] * 4, num_labels=2))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="differ in embedding_size"):
        LayerwiseDistillationTrainer(model=student, teacher=other, args=args, train_dataset=RandomImages(4))


# ---- the recipes: train a CNN, layer-wise distill it, fine-tune the hybrid ----


@pytest.mark.slow
def test_two_step_recipe(tmp_path, cifar10_sample_path):
    common = ["--dataset_name", str(cifar10_sample_path), "--max_train_samples", "64", "--max_eval_samples", "32",
              "--per_device_train_batch_size", "16", "--dataloader_num_workers", "0", "--report_to", "none",
              "--logging_steps", "1"]  # fmt: skip
    tiny = json.dumps({**TINY, "depths": [1, 1, 1, 1]})
    train = [
        "--model_name_or_path",
        "resnet18-cifar",
        "--config_overrides",
        tiny,
        "--output_dir",
        str(tmp_path / "cnn"),
    ]
    load_example("train").main([*train, "--num_train_epochs", "1", *common])

    config = tmp_path / "stage1.yaml"
    config.write_text("\n".join([
        f"teacher_model_name_or_path: {tmp_path / 'cnn'}", f"output_dir: {tmp_path / 'stage1'}",
        f"dataset_name: {cifar10_sample_path}", "max_train_samples: 64", "max_eval_samples: 32",
        "per_device_train_batch_size: 16", "num_train_epochs: 1", "dataloader_num_workers: 0", "report_to: none",
        "logging_steps: 1", "block_types: [conv, transformer, transformer, transformer]",
    ]))  # fmt: skip
    report = load_example("layerwise_distill").main([str(config)])
    assert report["block_types"] == ["conv", "transformer", "transformer", "transformer"]
    assert set(report["block_relative_error"]["converted"]) == {"stage2.block0", "stage3.block0", "stage4.block0"}
    # stage 1 stays convolutional (at these tiny widths attention is not smaller; see the 65% test for ResNet-18)
    assert report["parameters"]["hybrid_per_stage"][0] == report["parameters"]["teacher_per_stage"][0]
    assert report["parameters"]["hybrid_per_stage"][1:] != report["parameters"]["teacher_per_stage"][1:]
    card = (tmp_path / "stage1" / "README.md").read_text()
    assert "eval_accuracy" in card or "accuracy" in card.lower()
    for key, value in report["accuracy"].items():
        assert 0 <= value <= 1, key
    for name in ("layerwise_report.md", "layerwise_report.json", "README.md", "model.safetensors",
                 "preprocessor_config.json", "block_errors.png"):  # fmt: skip
        assert (tmp_path / "stage1" / name).exists(), name
    assert "Relative error of each trained block" in (tmp_path / "stage1" / "layerwise_report.md").read_text()

    finetune = ["--model_path", str(tmp_path / "stage1"), "--output_dir", str(tmp_path / "stage2")]
    metrics = load_example("finetune").main([*finetune, "--num_train_epochs", "1", *common])
    assert metrics["trainable_share"] == 1.0 and 0 <= metrics["test_accuracy"] <= 1
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "stage2")
    assert loaded.config.block_types == ["conv", "transformer", "transformer", "transformer"]

    # stage 2 with logit distillation from the CNN as well
    distill = ["--model_name_or_path", str(tmp_path / "stage1"), "--teacher_model_name_or_path", str(tmp_path / "cnn"),
               "--attention_loss_weight", "0", "--feature_loss_weight", "0",
               "--output_dir", str(tmp_path / "stage2-kd")]  # fmt: skip
    summary = load_example("distill").main([*distill, "--num_train_epochs", "1", *common])
    assert (tmp_path / "stage2-kd" / "model.safetensors").exists() and summary


class _CountOperators(TorchDispatchMode):
    """Counts the operators that compute (views and layout changes are free)."""

    FREE = ("view", "permute", "expand", "unfold", "slice", "select", "t.default", "detach", "alias", "unsqueeze",
            "squeeze", "transpose", "reshape", "as_strided", "split")  # fmt: skip

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not any(name in str(func) for name in self.FREE)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stride", [1, 2])
def test_local_attention_runs_as_a_few_kernels_whatever_the_window(stride):
    counts = {}
    for kernel_size in (3, 5):
        attention = LocalSelfAttention(16, 16, kernel_size, value_dim=4, key_dim=4, stride=stride)
        hidden_states = torch.randn(2, 16, 7, 7, requires_grad=True)
        with _CountOperators() as forward:
            output, _ = attention(hidden_states)
        loss = output.square().sum()
        with _CountOperators() as backward:
            loss.backward()
        counts[kernel_size] = (forward.count, backward.count)
    # A loop over the k*k offsets took about 50 forward and 100 backward at k=3, and grew with the window.
    assert counts[3] == counts[5]
    assert counts[3][0] <= 20 and counts[3][1] <= 30, counts
