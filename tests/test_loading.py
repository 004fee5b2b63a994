"""load_image_classifier: presets, saved checkpoints (ours and transformers'), timm architectures."""

import pytest
import timm.data
import torch
from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_vision_distill import VisionTransformerForImageClassification
from hf_vision_distill.models import load_image_classifier

LABELS = {0: "cat", 1: "dog", 2: "ship"}


def test_preset_gets_labels_size_and_processor():
    loaded = load_image_classifier("compact-cnn", id2label=LABELS, image_size=48)
    assert loaded.from_scratch
    assert loaded.model.config.id2label == LABELS and loaded.model.config.label2id == {"cat": 0, "dog": 1, "ship": 2}
    assert loaded.input_specification.image_size == (48, 48)
    assert loaded.image_processor.size == {"height": 48, "width": 48}
    assert loaded.model(torch.randn(1, 3, 48, 48)).logits.shape == (1, 3)


def test_config_overrides_apply_to_presets_only(tmp_path):
    loaded = load_image_classifier("vit-cifar", id2label=LABELS, config_overrides={"num_hidden_layers": 2})
    assert len(loaded.model.vit.layers) == 2
    loaded.model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="architecture is fixed by its weights"):
        load_image_classifier(str(tmp_path), id2label=LABELS, config_overrides={"num_hidden_layers": 3})


def test_transformers_checkpoint_with_its_processor(tmp_path):
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, num_labels=5)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        load_image_classifier(str(tmp_path), id2label=LABELS)
    loaded = load_image_classifier(str(tmp_path), id2label=LABELS, ignore_mismatched_sizes=True)
    assert not loaded.from_scratch
    assert loaded.model.classifier.out_features == 3 and loaded.model.config.id2label == LABELS
    assert loaded.input_specification.image_size == (64, 64) and loaded.input_specification.image_mean == (0.5,) * 3


def test_our_vit_checkpoint_resized_keeps_mean_and_std(tmp_path):
    loaded = load_image_classifier("vit-cifar", id2label=LABELS, config_overrides={"num_hidden_layers": 1})
    loaded.model.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1] * 3, image_std=[0.2] * 3).save_pretrained(
        tmp_path
    )
    resized = load_image_classifier(str(tmp_path), id2label=LABELS, image_size=48)
    assert isinstance(resized.model, VisionTransformerForImageClassification)
    assert resized.model.config.image_size == 48 and resized.input_specification.image_size == (48, 48)
    assert resized.input_specification.image_mean == pytest.approx(
        [0.1] * 3
    ) and resized.input_specification.image_std == pytest.approx([0.2] * 3)
    assert resized.model(torch.randn(1, 3, 48, 48)).logits.shape == (1, 3)


def test_timm_architecture_by_name(tmp_path):
    loaded = load_image_classifier("resnet10t", id2label=LABELS)
    assert type(loaded.model).__name__ == "TimmWrapperForImageClassification"
    # The input size and normalisation come from timm's own data config for the architecture.
    data_config = timm.data.resolve_data_config({}, model=loaded.model.timm_model)
    assert loaded.from_scratch and loaded.input_specification.image_size == tuple(data_config["input_size"][1:])
    assert loaded.input_specification.image_mean == tuple(data_config["mean"])
    pixel_values = torch.randn(2, 3, 64, 64)
    outputs = loaded.model(pixel_values, labels=torch.tensor([0, 2]))
    assert outputs.logits.shape == (2, 3) and outputs.loss is not None
    loaded.model.save_pretrained(tmp_path)
    loaded.image_processor.save_pretrained(tmp_path)
    reloaded = load_image_classifier(str(tmp_path), id2label=LABELS)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), ViTImageProcessor)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.model.eval()(pixel_values).logits, loaded.model.eval()(pixel_values).logits
        )


def test_timm_architecture_rejects_unknown_arguments():
    with pytest.raises(ValueError, match="does not accept"):
        load_image_classifier("resnet10t", id2label=LABELS, config_overrides={"no_such_argument": 1})


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not a model preset"):
        load_image_classifier("definitely-not-a-model-xyz", id2label=LABELS)


def test_timm_checkpoint_uses_its_own_data_config(tmp_path):
    loaded = load_image_classifier("resnet10t", id2label=LABELS)
    # As in a timm Hub checkpoint's config.json: the data settings under pretrained_cfg.
    loaded.model.config.pretrained_cfg = {
        **loaded.model.timm_model.pretrained_cfg, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "input_size": [3, 160, 160],
    }  # fmt: skip
    loaded.model.save_pretrained(tmp_path)
    reloaded = load_image_classifier(str(tmp_path), id2label=LABELS)
    assert reloaded.input_specification.image_size == (160, 160)
    assert (
        reloaded.input_specification.image_mean == (0.5,) * 3 and reloaded.input_specification.image_std == (0.5,) * 3
    )
    # The processor saved beside a trained model mirrors those settings.
    assert reloaded.image_processor.size == {"height": 160, "width": 160}
    assert list(reloaded.image_processor.image_mean) == [0.5] * 3


def test_tagged_timm_name_means_pretrained_weights_from_the_hub():
    # Offline, the Hub lookup fails, which shows the tagged name went to timm/<name> rather than a random init.
    with pytest.raises(ValueError, match="timm/resnet18.a1_in1k"):
        load_image_classifier("resnet18.a1_in1k", id2label=LABELS)
    with pytest.raises(ValueError, match="'timm/resnet18.a1_in1k' is not a model preset"):  # timm's hf-hub: spelling
        load_image_classifier("hf-hub:timm/resnet18.a1_in1k", id2label=LABELS)


def test_image_size_for_checkpoints(tmp_path):
    loaded = load_image_classifier("compact-cnn", id2label=LABELS, config_overrides={"hidden_sizes": [4, 8, 8]})
    loaded.model.save_pretrained(tmp_path / "cnn")
    resized = load_image_classifier(str(tmp_path / "cnn"), id2label=LABELS, image_size=64)
    assert resized.input_specification.image_size == (64, 64) and resized.model.config.image_size == 64
    assert resized.image_processor.size == {"height": 64, "width": 64}
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, num_labels=3)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="image_size=96 is not supported"):
        load_image_classifier(str(tmp_path / "vit"), id2label=LABELS, image_size=96)
    assert load_image_classifier(
        str(tmp_path / "vit"), id2label=LABELS, image_size=64
    ).input_specification.image_size == (64, 64)


def test_attention_implementation_and_float32_weights(tmp_path):
    loaded = load_image_classifier(
        "vit-cifar", id2label=LABELS, config_overrides={"num_hidden_layers": 1}, attn_implementation="eager"
    )
    assert loaded.model.config._attn_implementation == "eager"
    loaded.model.to(torch.bfloat16).save_pretrained(tmp_path)  # a half-size checkpoint, as one might ship
    reloaded = load_image_classifier(str(tmp_path), id2label=None)
    assert reloaded.model.config._attn_implementation == "sdpa"  # the choice is a run's, not the checkpoint's
    assert {parameter.dtype for parameter in reloaded.model.parameters()} == {torch.float32}
    assert (
        load_image_classifier(
            str(tmp_path), id2label=None, attn_implementation="eager"
        ).model.config._attn_implementation
        == "eager"
    )


def test_interpolation_follows_the_pretrained_configuration(tmp_path):
    assert load_image_classifier("compact-cnn", id2label=LABELS).input_specification.interpolation == "bilinear"
    timm_model = load_image_classifier("resnet10t", id2label=LABELS)
    assert (
        timm_model.input_specification.interpolation
        == timm_model.model.timm_model.pretrained_cfg["interpolation"]
        == "bicubic"
    )
    assert timm_model.image_processor.resample == 3  # the processor saved beside the model resizes the same way
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, num_labels=3)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 64, "width": 64}, resample=0).save_pretrained(tmp_path)
    assert load_image_classifier(str(tmp_path), id2label=LABELS).input_specification.interpolation == "nearest"


def test_timm_cnn_by_name_takes_any_image_size(tmp_path):
    # A CNN has no img_size argument: it is built as it is and given the resized images.
    loaded = load_image_classifier("resnet10t", id2label=LABELS, image_size=64)
    assert "img_size" not in (loaded.model.config.model_args or {})
    assert loaded.input_specification.image_size == (64, 64) and loaded.image_processor.size == {
        "height": 64,
        "width": 64,
    }
    assert loaded.input_specification.interpolation == "bicubic" and loaded.input_specification.image_mean == tuple(
        timm.data.IMAGENET_DEFAULT_MEAN
    )
    assert loaded.model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3)
    # Saved as the recipes save it, with its processor: it reloads at the size it trained at, or at another.
    loaded.model.save_pretrained(tmp_path / "by_name")
    loaded.image_processor.save_pretrained(tmp_path / "by_name")
    assert load_image_classifier(str(tmp_path / "by_name"), id2label=LABELS).input_specification.image_size == (64, 64)
    assert load_image_classifier(
        str(tmp_path / "by_name"), id2label=LABELS, image_size=48
    ).input_specification.image_size == (48, 48)
    # A timm Hub checkpoint's data settings (config.json's pretrained_cfg) follow the new size, so it reloads at it.
    loaded.model.config.pretrained_cfg = {**loaded.model.timm_model.pretrained_cfg, "input_size": [3, 160, 160]}
    loaded.model.save_pretrained(tmp_path / "hub_style")
    resized = load_image_classifier(str(tmp_path / "hub_style"), id2label=LABELS, image_size=96)
    assert resized.input_specification.image_size == (96, 96) and resized.model.config.pretrained_cfg[
        "input_size"
    ] == [3, 96, 96]
    resized.model.save_pretrained(tmp_path / "resized")
    assert load_image_classifier(str(tmp_path / "resized"), id2label=LABELS).input_specification.image_size == (96, 96)


def test_timm_fixed_size_architecture_is_built_for_the_size(tmp_path):
    loaded = load_image_classifier(
        "vit_tiny_patch16_224", id2label=LABELS, image_size=32, config_overrides={"depth": 1}
    )
    assert loaded.model.config.model_args["img_size"] == 32
    # The data follows the size the model was built for, not the architecture's default 224.
    assert loaded.input_specification.image_size == (32, 32)
    assert loaded.model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)
    loaded.model.save_pretrained(tmp_path)
    loaded.image_processor.save_pretrained(tmp_path)
    assert load_image_classifier(str(tmp_path), id2label=LABELS).input_specification.image_size == (32, 32)
    with pytest.raises(ValueError, match="image_size=48 is not supported"):
        load_image_classifier(str(tmp_path), id2label=LABELS, image_size=48)


def test_saved_resnet_preset_takes_another_size(tmp_path):
    tiny = {"embedding_size": 8, "hidden_sizes": [8, 8, 8, 8]}
    load_image_classifier("resnet18-cifar", id2label=LABELS, config_overrides=tiny).model.save_pretrained(tmp_path)
    resized = load_image_classifier(str(tmp_path), id2label=LABELS, image_size=64)
    assert resized.input_specification.image_size == (64, 64) and resized.model.config.image_size == 64
    assert resized.model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3)
