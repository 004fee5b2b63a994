"""ONNX export of every model family, ONNX Runtime parity on real CIFAR-10 images, static int8 quantisation, the
refusals (unexportable models, mismatched calibration sets) and examples/export.py, on tiny models built here."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import load_example
from transformers import (
    AutoImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_vision_distill import export
from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.export import (
    INT8_FILE_NAME,
    CalibrationSet,
    OnnxExportError,
    calibration_set_from_dataset,
    export_classifier,
    export_to_onnx,
    onnx_logits,
    onnx_session,
    quantize_exported,
    quantize_int8,
    write_card_line,
)
from hf_vision_distill.models import InputSpecification, load_image_classifier

# Our presets (and a timm architecture, as the recipes build one by name), shrunk.
PRESETS = {
    "vit": ("vit-cifar", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 64}),
    "simple-cnn": ("simple-cnn", {"hidden_sizes": [8, 16, 32]}),
    "compact-cnn": ("compact-cnn", {"hidden_sizes": [8, 16, 32]}),
    "hybrid-resnet": ("hybrid-resnet18", {"embedding_size": 16, "hidden_sizes": [16, 16, 32, 32],
                                          "depths": [1, 1, 1, 1]}),
    "timm-resnet": ("test_resnet", {}),
}  # fmt: skip
NUM_TEST_IMAGES = 8


@pytest.fixture(scope="module")
def cifar10(cifar10_path):
    return load_image_classification_dataset(
        str(cifar10_path), validation_size=0, max_train_samples=200, max_eval_samples=NUM_TEST_IMAGES
    )


def _perturb(model: torch.nn.Module) -> None:
    """Moves every parameter off its initialisation (zero heads, unit norms), so that logits depend on the input and
    parity is not met by constant outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def save_classifier(family: str, directory, id2label: dict[int, str]):
    """A tiny classifier of `family` saved with its image processor, as the recipes save theirs."""
    if family in PRESETS or family == "vit-48":
        name, overrides = PRESETS["vit" if family == "vit-48" else family]
        loaded = load_image_classifier(name, id2label=id2label, config_overrides=overrides)
        model, processor = loaded.model, loaded.image_processor
    else:
        label_kwargs = {"id2label": id2label, "label2id": {label: index for index, label in id2label.items()}}
        if family == "transformers-vit":
            config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, **label_kwargs)  # fmt: skip
            model = ViTForImageClassification(config)
        else:
            config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], **label_kwargs)
            model = ResNetForImageClassification(config)
        processor = InputSpecification(32, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).image_processor()
    _perturb(model)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


FAMILIES = [*PRESETS, "vit-48", "transformers-vit", "transformers-resnet"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_onnx_runtime_logits_equal_pytorch_on_real_images(family, tmp_path, cifar10):
    model_dir = save_classifier(family, tmp_path / "model", cifar10.id2label)
    image_size = 48 if family == "vit-48" else None  # our ViT at an interpolated resolution
    exported = export_classifier(model_dir, tmp_path / "onnx", image_size=image_size)

    # Real images through the exported folder's image processor: the model's own.
    processor = AutoImageProcessor.from_pretrained(tmp_path / "onnx")
    images = cifar10.dataset["test"]["image"][:NUM_TEST_IMAGES]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].float().numpy()
    reference = load_image_classifier(str(model_dir), id2label=None, image_size=image_size).model.eval()
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(pixel_values)).logits.numpy()
    assert expected.std(axis=0).max() > 1e-2, "the logits do not depend on the image; parity would prove nothing"

    session = onnx_session(exported.onnx_path)
    np.testing.assert_allclose(onnx_logits(session, pixel_values, batch_size=NUM_TEST_IMAGES), expected, rtol=0,
                               atol=1e-4)  # fmt: skip
    # The batch dimension is dynamic: one image and an odd batch of three run through the same graph.
    np.testing.assert_allclose(onnx_logits(session, pixel_values[:3], batch_size=1), expected[:3], rtol=0, atol=1e-4)
    graph_input = onnx.load(str(exported.onnx_path)).graph.input[0]
    assert graph_input.name == "pixel_values"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch_size"
    assert tuple(pixel_values.shape[-2:]) == exported.specification.image_size
    assert InputSpecification.from_pretrained(tmp_path / "onnx") == exported.specification
    if family == "vit-48":
        assert exported.specification.image_size == (48, 48)
        assert [dim.dim_value for dim in graph_input.type.tensor_type.shape.dim[2:]] == [48, 48]


@pytest.mark.slow
def test_the_exported_folder_carries_config_processor_and_card(tmp_path, cifar10):
    model_dir = save_classifier("compact-cnn", tmp_path / "model", cifar10.id2label)
    (model_dir / "README.md").write_text("# my model\n\nTrained on CIFAR-10.\n\n## Training\n\nten epochs\n")
    exported = export_classifier(model_dir, tmp_path / "onnx")
    (tmp_path / "onnx" / INT8_FILE_NAME).write_bytes(b"quantised from the first export")
    exported_again = export_classifier(model_dir, tmp_path / "onnx")
    assert not (tmp_path / "onnx" / INT8_FILE_NAME).exists(), "an int8 model of the replaced export was kept"

    names = {path.name for path in exported.output_dir.iterdir()}
    assert {"model.onnx", "config.json", "preprocessor_config.json", "README.md"} <= names
    assert json.loads((exported.output_dir / "config.json").read_text())["id2label"]["3"] == cifar10.id2label[3]
    card = (exported.output_dir / "README.md").read_text()
    assert card.startswith("# my model") and "## Training\n\nten epochs" in card
    # One line per file, however often it is exported; it says how and how close.
    assert card.count("- `model.onnx`:") == 1
    assert "torch.onnx.export(dynamo=True)" in card and f"opset {exported_again.opset}" in card


def test_card_lines_replace_their_own_file_only(tmp_path):
    write_card_line(tmp_path, "`model.onnx`: first export")
    write_card_line(tmp_path, "`model_int8.onnx`: quantised")
    write_card_line(tmp_path, "`model.onnx`: second export")
    card = (tmp_path / "README.md").read_text()
    assert "first export" not in card and card.count("second export") == 1 and card.count("quantised") == 1


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory, cifar10):
    root = tmp_path_factory.mktemp("quantised")
    # A fixed start: full-range int8 weights of this one put its logits 0.32 of their spread away on a CPU without
    # VNNI (ONNX Runtime's uint8 x int8 kernel saturates), 0.04 with the reduced range chosen there.
    torch.manual_seed(0)
    model_dir = save_classifier("compact-cnn", root / "model", cifar10.id2label)
    return export_classifier(model_dir, root / "onnx")


@pytest.mark.parametrize(
    "flags, reduced",
    [({"avx2"}, True), ({"avx2", "avx512_vnni"}, False), ({"avx2", "avx_vnni"}, False), ({"asimd"}, False),
     (None, False)],
)  # fmt: skip
def test_int8_weights_keep_a_bit_back_on_x86_without_vnni(monkeypatch, flags, reduced):
    monkeypatch.setattr(export, "cpu_flags", lambda: flags)
    assert export.int8_needs_reduced_range() is reduced


@pytest.mark.slow
def test_int8_quantisation_is_per_channel_qdq_close_to_float32_and_carded(exported_cnn, cifar10):
    calibration = calibration_set_from_dataset(cifar10.dataset["train"], exported_cnn.specification, num_images=64)
    assert calibration.pixel_values.shape == (64, 3, 32, 32)
    metrics = quantize_exported(exported_cnn, calibration, test_dataset=cifar10.dataset["test"],
                                test_description="CIFAR-10 test")  # fmt: skip

    int8_path = exported_cnn.output_dir / INT8_FILE_NAME
    graph = onnx.load(str(int8_path)).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    weight_scales = [
        onnx.numpy_helper.to_array(initializers[node.input[1]])
        for node in graph.node
        if node.op_type == "DequantizeLinear" and initializers.get(node.input[0]) is not None
        and initializers[node.input[0]].data_type == onnx.TensorProto.INT8
    ]  # fmt: skip
    assert weight_scales and any(scale.size > 1 for scale in weight_scales), "weights are not quantised per channel"
    assert int8_path.stat().st_size < 0.5 * exported_cnn.onnx_path.stat().st_size

    pixel_values = calibration.pixel_values[:16]
    fp32 = onnx_logits(onnx_session(exported_cnn.onnx_path), pixel_values)
    int8 = onnx_logits(onnx_session(int8_path), pixel_values)
    relative_error = np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32 - fp32.mean(axis=0))
    assert relative_error < 0.25, f"int8 logits are {relative_error:.2f} of the float32 logits' spread away"

    assert set(metrics) == {"fp32_accuracy", "int8_accuracy", "accuracy_drop_points"}
    assert metrics["accuracy_drop_points"] == pytest.approx(
        100 * (metrics["fp32_accuracy"] - metrics["int8_accuracy"])
    )
    card = (exported_cnn.output_dir / "README.md").read_text()
    assert f"`{INT8_FILE_NAME}`" in card and "per-channel" in card and "64 images" in card
    assert f"(float32 - int8) {metrics['accuracy_drop_points']:.2f} points" in card


@pytest.mark.parametrize(
    "mismatch, message",
    [
        ("image_size", "image size (24, 24) instead of (32, 32)"),
        ("normalisation", "mean [0.5, 0.5, 0.5] instead of [0.485, 0.456, 0.406]"),
        ("unnormalised_pixels", "outside what images normalised with"),
        ("wrong_shape_claimed_right_spec", "images of 24x24 pixels, not 32x32"),
    ],
)
def test_a_mismatched_calibration_set_is_refused_before_calibrating(
    mismatch, message, exported_cnn, cifar10, tmp_path, monkeypatch
):
    import onnxruntime.quantization

    def calibrating(*args, **kwargs):
        raise AssertionError("calibration started on a mismatched calibration set")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", calibrating)
    specification = exported_cnn.specification
    train = cifar10.dataset["train"]
    if mismatch == "image_size":
        calibration = calibration_set_from_dataset(
            train, InputSpecification((24, 24), specification.image_mean, specification.image_std), num_images=8
        )
    elif mismatch == "normalisation":
        calibration = calibration_set_from_dataset(
            train, InputSpecification((32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), num_images=8
        )
    elif mismatch == "unnormalised_pixels":  # 0..255 values labelled as normalised
        good = calibration_set_from_dataset(train, specification, num_images=8)
        raw = (good.pixel_values * np.asarray(specification.image_std)[:, None, None]
               + np.asarray(specification.image_mean)[:, None, None]) * 255  # fmt: skip
        calibration = CalibrationSet(raw.astype(np.float32), specification)
    else:
        small = calibration_set_from_dataset(
            train, InputSpecification((24, 24), specification.image_mean, specification.image_std), num_images=8
        )
        calibration = CalibrationSet(small.pixel_values, specification)
    with pytest.raises(ValueError, match="does not match the model's input") as error:
        quantize_int8(exported_cnn.onnx_path, tmp_path / "int8.onnx", calibration, specification)
    assert message in str(error.value)
    assert "calibration_set_from_dataset" in str(error.value)
    assert not (tmp_path / "int8.onnx").exists()


@torch.library.custom_op("hvd_export_test::opaque_relu", mutates_args=())
def opaque_relu(values: torch.Tensor) -> torch.Tensor:
    return values.clamp_min(0)


@opaque_relu.register_fake
def _(values):
    return torch.empty_like(values)


class OpaqueOperatorClassifier(torch.nn.Module):
    """A classifier with an operator ONNX has no translation for (as a custom kernel in a model would be)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 4)

    def forward(self, pixel_values):
        return self.head(opaque_relu(pixel_values).mean(dim=(2, 3)))


class DataDependentClassifier(torch.nn.Module):
    """A classifier whose forward branches on a tensor's value: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 4)

    def forward(self, pixel_values):
        if pixel_values.mean() > 0:
            pixel_values = pixel_values * 2
        return self.head(pixel_values.mean(dim=(2, 3)))


@pytest.mark.slow
def test_an_unsupported_operator_is_named_with_what_to_do(tmp_path):
    with pytest.raises(OnnxExportError) as error:
        export_to_onnx(OpaqueOperatorClassifier(), tmp_path / "model.onnx", image_size=(8, 8))
    assert error.value.operator == "hvd_export_test.opaque_relu"
    message = str(error.value)
    assert "OpaqueOperatorClassifier" in message and "'hvd_export_test.opaque_relu'" in message
    assert "custom_translation_table" in message and "standard torch operations" in message


@pytest.mark.slow
def test_an_untraceable_forward_names_its_line(tmp_path):
    with pytest.raises(OnnxExportError, match="cannot be traced by torch.export") as error:
        export_to_onnx(DataDependentClassifier(), tmp_path / "model.onnx", image_size=(8, 8))
    assert "test_export.py" in str(error.value) and "torch.where" in str(error.value)


def test_export_refuses_a_folder_without_a_model_and_a_foreign_model_at_another_size(tmp_path, cifar10):
    with pytest.raises(ValueError, match="has no config.json; pass a folder written by save_pretrained"):
        export_classifier(tmp_path, tmp_path / "onnx")
    model_dir = save_classifier("transformers-vit", tmp_path / "model", cifar10.id2label)
    with pytest.raises(ValueError, match="image_size=48 is not supported"):
        export_classifier(model_dir, tmp_path / "onnx", image_size=48)


@pytest.mark.slow
def test_export_example_writes_both_models_beside_processor_and_card(tmp_path, cifar10_path, cifar10):
    export_recipe = load_example("export")
    model_dir = save_classifier("compact-cnn", tmp_path / "model", cifar10.id2label)
    output_dir = tmp_path / "onnx"
    results = export_recipe.main([
        "--model_path", str(model_dir), "--output_dir", str(output_dir), "--quantize", "int8", "--opset", "18",
        "--dataset_name", str(cifar10_path), "--num_calibration_images", "32", "--max_eval_samples", "16",
        "--int8_reduce_range", "true",
    ])  # fmt: skip
    assert results["opset"] == 18 and results["max_abs_difference"] < 1e-4
    assert 0 <= results["int8_accuracy"] <= 1 and 0 <= results["fp32_accuracy"] <= 1
    for name in ("model.onnx", "model_int8.onnx", "config.json", "preprocessor_config.json", "export_results.json"):
        assert (output_dir / name).is_file(), name
    assert onnx.load(str(output_dir / "model.onnx")).opset_import[0].version == 18
    card = (output_dir / "README.md").read_text()
    assert "- `model.onnx`:" in card and "- `model_int8.onnx`:" in card and "(16 images)" in card
    assert "7-bit weights (reduce_range" in card  # asked for, whatever this CPU is
    assert json.loads((output_dir / "export_results.json").read_text()) == results

    with pytest.raises(ValueError, match="pass --dataset_name"):
        export_recipe.main(["--model_path", str(model_dir), "--output_dir", str(output_dir), "--quantize", "int8"])
    with pytest.raises(ValueError, match="pass auto, true or false"):
        export_recipe.main(["--model_path", str(model_dir), "--output_dir", str(output_dir), "--int8_reduce_range",
                            "maybe"])  # fmt: skip
