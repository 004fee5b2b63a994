"""Loading like any transformers model: Auto classes, remote code in a process without this package, pipelines."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, ViTImageProcessor, pipeline

from hf_vision_distill import MODEL_PRESETS, config_from_preset

TINY_OVERRIDES = {
    "vit-cifar": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "simple-cnn": {"hidden_sizes": [8, 16, 32], "classifier_hidden_size": 32},
    "compact-cnn": {"hidden_sizes": [8, 16, 32], "depths": [1, 1, 1]},
    "hybrid-resnet18": {"embedding_size": 8, "hidden_sizes": [8, 8, 16, 16], "depths": [1, 1, 1, 1], "key_dim": 4},
}
LABELS = {0: "cat", 1: "dog", 2: "ship"}


def save_tiny(name: str, directory) -> torch.nn.Module:
    torch.manual_seed(0)
    config = config_from_preset(
        name, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **TINY_OVERRIDES[name]
    )
    model = AutoModelForImageClassification.from_config(config).eval()
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return model


def test_every_preset_builds():
    for name in MODEL_PRESETS:
        config = config_from_preset(name, num_labels=3)
        with torch.device("meta"):
            model = AutoModelForImageClassification.from_config(config)
        assert model.config.num_labels == 3
    with pytest.raises(ValueError, match="unknown model preset"):
        config_from_preset("resnet-9000")


@pytest.mark.parametrize("name", sorted(TINY_OVERRIDES))
def test_auto_classes_with_package(tmp_path, name):
    model = save_tiny(name, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"].startswith("hvd-")
    assert "AutoModelForImageClassification" in saved["auto_map"]
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == saved["model_type"]
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)
    backbone = AutoModel.from_pretrained(tmp_path)
    assert type(backbone).__name__.endswith("Model")


@pytest.mark.parametrize("name", sorted(TINY_OVERRIDES))
@pytest.mark.slow
def test_remote_code_without_package(tmp_path, name):
    model = save_tiny(name, tmp_path / "model")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from PIL import Image
        from transformers import AutoModelForImageClassification, pipeline
        model_dir = {str(tmp_path / "model")!r}
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(expected["pixel_values"]).logits, expected["logits"])
        classifier = pipeline("image-classification", model=model_dir, trust_remote_code=True)
        predictions = classifier(Image.new("RGB", (50, 40), "red"))
        assert {{p["label"] for p in predictions}} <= {{"cat", "dog", "ship"}}, predictions
        assert "hf_vision_distill" not in sys.modules, "the package was imported"
        print("REMOTE-OK", type(model).__module__)
        """
    )
    # A fresh interpreter whose working directory and path cannot see the package source.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK transformers_modules" in result.stdout


def test_pipeline_with_package(tmp_path):
    save_tiny("compact-cnn", tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = classifier(Image.new("L", (28, 28), 128), top_k=3)
    assert sorted(p["label"] for p in predictions) == ["cat", "dog", "ship"]
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


def test_mismatched_head_points_to_ignore_mismatched_sizes(tmp_path):
    save_tiny("compact-cnn", tmp_path)
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=7)
    model = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 7
