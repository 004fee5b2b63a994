"""Presets built from scratch by name: the ImageNet-stem ResNet-18; one list for `--help`, errors and the README."""

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_vision_distill.models import (
    MODEL_PRESETS,
    HybridResNetConfig,
    VisionTransformerConfig,
    config_from_preset,
    describe_model_presets,
    load_image_classifier,
)
from hf_vision_distill.models.hybrid_resnet import HYBRID_RESNET_PRESETS
from hf_vision_distill.models.vit import VIT_PRESETS

LABELS = {0: "cat", 1: "dog", 2: "ship"}
README = Path(__file__).resolve().parents[1] / "README.md"


def test_imagenet_stem_resnet18_quarters_the_resolution_before_stage_one():
    tiny = {"embedding_size": 8, "hidden_sizes": [8, 8, 8, 8]}
    imagenet = load_image_classifier("resnet18-imagenet-stem", id2label=LABELS, image_size=64, config_overrides=tiny)
    cifar = load_image_classifier("resnet18-cifar", id2label=LABELS, image_size=64, config_overrides=tiny)
    assert imagenet.input_specification.image_size == (64, 64) and imagenet.model.config.stem == "imagenet"
    assert load_image_classifier("resnet18-imagenet-stem", id2label=LABELS).input_specification.image_size == (
        224,
        224,
    )
    pixel_values = torch.randn(2, 3, 64, 64)
    imagenet_outputs = imagenet.model(pixel_values, output_hidden_states=True)
    cifar_outputs = cifar.model(pixel_values, output_hidden_states=True)
    assert imagenet_outputs.logits.shape == (2, 3)
    # The stem's output: 16x16 against the CIFAR stem's 64x64, and so on down every stage.
    assert imagenet_outputs.hidden_states[0].shape[-2:] == (16, 16)
    assert cifar_outputs.hidden_states[0].shape[-2:] == (64, 64)
    assert imagenet_outputs.hidden_states[-1].shape[-2:] == (2, 2)
    # Same blocks and head; only the stem's kernel differs (7x7 against 3x3).
    count = sum(parameter.numel() for parameter in imagenet.model.parameters())
    assert count - sum(parameter.numel() for parameter in cifar.model.parameters()) == 3 * 8 * (49 - 9)


def test_every_family_preset_can_be_built_by_name():
    families = {VisionTransformerConfig: VIT_PRESETS, HybridResNetConfig: HYBRID_RESNET_PRESETS}
    for config_class, family_presets in families.items():
        for name, fields in family_presets.items():
            assert MODEL_PRESETS[name].config_class is config_class and MODEL_PRESETS[name].fields == fields


def test_every_preset_is_described_in_help_and_in_errors():
    description = describe_model_presets()
    for name, preset in MODEL_PRESETS.items():
        assert f"{name}: {preset.description}" in description
        assert ";" not in preset.description  # the separator between presets
    with pytest.raises(ValueError, match="Did you mean 'resnet18-cifar'") as error:
        load_image_classifier("resnet18-cifra", id2label=LABELS)
    assert all(name in str(error.value) for name in MODEL_PRESETS)
    with pytest.raises(ValueError, match="unknown model preset 'resnet-9000'") as error:
        config_from_preset("resnet-9000")
    assert description in str(error.value)


def _readme_model_zoo() -> dict[str, str]:
    """The README's preset table: each name with its parameters column."""
    section = README.read_text().split("## Model zoo", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", section, re.MULTILINE)
    return dict(rows)


def test_readme_lists_every_preset_with_its_parameter_count():
    table = _readme_model_zoo()
    assert list(table) == list(MODEL_PRESETS)
    for name, written in table.items():
        with torch.device("meta"):  # shapes only: counting vit-base's parameters costs no memory
            model = AutoModelForImageClassification.from_config(config_from_preset(name, num_labels=10))
        count = sum(parameter.numel() for parameter in model.parameters())
        value = written.strip().removesuffix("M")
        decimals = len(value.partition(".")[2])
        assert round(count / 1e6, decimals) == float(value), f"README says {written.strip()} for {name}: {count:,}"
