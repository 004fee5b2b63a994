"""examples/distill.py end to end: a tiny ViT teacher into a tiny CNN student, with the baseline and every artifact."""

import json
from pathlib import Path

import pytest
import torch
from conftest import load_example
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification

REPO = Path(__file__).resolve().parents[1]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_recipe():
    return load_example("distill")


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    id2label = dict(enumerate(CIFAR_NAMES))
    config = VisionTransformerConfig(image_size=48, patch_size=12, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, id2label=id2label,
                                     label2id={name: index for index, name in id2label.items()})  # fmt: skip
    VisionTransformerForImageClassification(config).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def test_distill_recipe_with_baseline(tmp_path, teacher_dir):
    output_dir = tmp_path / "distill"
    summary = load_recipe().main([
        "--teacher_model_name_or_path", str(teacher_dir), "--output_dir", str(output_dir),
        "--config_overrides", json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]}),
        "--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "16", "--dataloader_num_workers", "0", "--report_to", "none",
        "--logging_steps", "1", "--feature_loss_weight", "0.5", "--baseline",
    ])  # fmt: skip
    names = [row["model"] for row in summary["models"]]
    assert len(names) == 3 and names[0].startswith("teacher") and "baseline" in names[2]
    assert all("test_accuracy" in row and "test_f1_macro" in row for row in summary["models"])
    teacher_row, distilled_row, baseline_row = summary["models"]
    assert teacher_row["parameters"] > distilled_row["parameters"] == baseline_row["parameters"]
    for name in ("summary.md", "summary.json", "loss_components.png", "layer_weights.png", "attention_overlays.png"):
        assert (output_dir / name).is_file(), name
    assert "| distilled student (compact-cnn) |" in (output_dir / "summary.md").read_text()

    # The exported student has neither teacher nor adapter weights, and serves through a pipeline.
    exported = load_file(str(output_dir / "model.safetensors"))
    assert not any(key.startswith(("distillation_adapters.", "teacher")) for key in exported)
    predictions = pipeline("image-classification", model=str(output_dir))(Image.new("RGB", (32, 32)), top_k=10)
    assert sorted(p["label"] for p in predictions) == sorted(CIFAR_NAMES)
    # The teacher saw its own 48-pixel view of the 32-pixel student batches.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any("loss_attention" in entry and "loss_feature" in entry for entry in history)


def test_distill_recipe_needs_a_teacher(tmp_path):
    with pytest.raises(ValueError, match="--teacher_model_name_or_path"):
        load_recipe().main(["--output_dir", str(tmp_path), "--report_to", "none"])
