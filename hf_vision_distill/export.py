"""Deploying a trained image classifier: ONNX export, static int8 quantisation through ONNX Runtime, and the checks
that the exported model gives the trained model's answers.

    exported = export_classifier("outputs/train", "outputs/onnx")              # model.onnx + config + processor
    calibration = calibration_set_from_dataset(data.dataset["train"], exported.specification)
    quantize_int8(exported.onnx_path, exported.output_dir / INT8_FILE_NAME, calibration, exported.specification)

Which exporter, and why. The Hugging Face ecosystem exports with Optimum (`optimum-onnx`, which provides
`ORTModelForImageClassification` and the export configs per `model_type`). It does not work with transformers 5, which
this library requires: the newest release, optimum-onnx 0.1.0, pins `transformers<4.58.0` and `optimum~=2.1.0`, so
`pip install optimum-onnx` (or `optimum[onnxruntime]`) would downgrade transformers 5.24 to 4.57.6 and huggingface_hub
2.4 to 0.36; installed beside transformers 5 without its pins it fails on import (`cannot import name
'is_offline_mode' from 'transformers.utils'`). So the export goes through `torch.onnx.export` directly, and no
Optimum export config is registered.

Of `torch.onnx.export`'s two exporters, the dynamo one (`dynamo=True`, `torch.export` then onnxscript) is used: it
exports every family of this library, transformers' and timm's models with a symbolic batch dimension, and ONNX
Runtime reproduces PyTorch's logits to about 1e-7. The TorchScript exporter (`dynamo=False`) refuses SimpleCNN's
adaptive average pooling to a size that does not divide the input and the hybrid ResNet's `unfold`, and for our ViT
and CompactCNN it exports graphs whose logits differ from PyTorch's by 1e-2 to 0.25.

The exported folder holds `model.onnx` (input `pixel_values`, `(batch_size, channels, height, width)`, output
`logits`, `(batch_size, num_labels)`: Optimum's names and layout), `config.json`, the image processor, and a model
card whose "Deployment" section says what was exported, how, and the measured parity and accuracy drop.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.layers import set_layer_config
from transformers import PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

from .data.images import _decode_image
from .models.input_specification import InputSpecification, rounded
from .models.loading import load_image_classifier
from .profiling import cpu_flags

if TYPE_CHECKING:
    import datasets
    import onnxruntime

logger = logging.getLogger(__name__)

ONNX_FILE_NAME = "model.onnx"
INT8_FILE_NAME = "model_int8.onnx"
CARD_SECTION = "## Deployment (ONNX)"
# protobuf cannot serialise a message over 2 GiB: models with more than half of that in weights keep them in an
# external data file (model.onnx.data), leaving room for the graph.
_PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Normalised pixel values may leave [(0 - mean) / std, (1 - mean) / std] by this much (float rounding, resampling
# overshoot of bicubic interpolation) and still count as normalised with that mean and std.
_NORMALISATION_SLACK = 0.05


@dataclass
class ExportedClassifier:
    """The result of [`export_classifier`]."""

    output_dir: Path
    onnx_path: Path
    specification: InputSpecification
    opset: int
    id2label: dict[int, str]
    # The largest |ONNX Runtime - PyTorch| over the logits of the post-export check.
    max_abs_difference: float


class OnnxExportError(RuntimeError):
    """A model that `torch.onnx.export` cannot export; `operator` names the ATen or custom operator at fault, when
    one is."""

    def __init__(self, message: str, operator: str | None = None):
        super().__init__(message)
        self.operator = operator


class _LogitsOnly(torch.nn.Module):
    """`pixel_values -> logits`: the exported graph's one input and one output, whatever output class (or tuple) the
    wrapped classifier returns."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values)
        if isinstance(outputs, torch.Tensor):
            return outputs
        return outputs.logits if hasattr(outputs, "logits") else outputs[0]


# Export


def export_to_onnx(
    model: torch.nn.Module,
    onnx_path: str | Path,
    *,
    image_size: tuple[int, int],
    num_channels: int = 3,
    opset: int | None = None,
    atol: float = 1e-4,
    custom_translation_table: dict[Callable, Callable] | None = None,
) -> tuple[int, float]:
    """Exports an image classifier to one ONNX file with a dynamic batch dimension, then checks it in ONNX Runtime.

    Args:
        model (`torch.nn.Module`):
            A classifier taking `pixel_values` and returning logits (a tensor, or an output with `.logits`): our
            models, transformers' `*ForImageClassification`, `TimmWrapperForImageClassification`.
        onnx_path (`str` or `Path`):
            The file to write.
        image_size (`tuple[int, int]`):
            `(height, width)` of the input; fixed in the graph (the batch dimension is not).
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        opset (`int`, *optional*):
            The ONNX opset; torch's default (20 with torch 2.14) when `None`.
        atol (`float`, *optional*, defaults to 1e-4):
            The largest |ONNX Runtime - PyTorch| logit difference the check accepts (on random inputs of batch sizes
            1 and 3, which also shows that the batch dimension is dynamic).
        custom_translation_table (`dict`, *optional*):
            onnxscript functions for operators the exporter cannot translate (`torch.onnx.export`'s argument).

    Returns:
        `tuple[int, float]`: the opset written and the largest logit difference of the check.

    Raises:
        [`OnnxExportError`]: the model cannot be exported; the message names the operator or the line that failed and
        what to do.
    """
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _LogitsOnly(model).eval()
    height, width = image_size
    # A batch of 2 to trace with: torch.export specialises sizes 0 and 1.
    example = torch.randn(2, num_channels, height, width, generator=torch.Generator().manual_seed(0))
    model_name = type(model).__name__
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapped,
                (example,),
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch_size")}},
                opset_version=opset,
                custom_translation_table=custom_translation_table,
                dynamo=True,
                verbose=False,
            )
    except Exception as error:  # torch.onnx raises its own error types, and torch.export's, for any failure
        raise _explain_export_failure(error, model_name, opset) from error
    size = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    program.save(str(onnx_path), external_data=size > _PROTOBUF_LIMIT_BYTES // 2)
    written_opset = _default_domain_opset(onnx_path)

    session = onnx_session(onnx_path)
    generator = torch.Generator().manual_seed(1)
    max_difference = 0.0
    for batch_size in (1, 3):
        pixel_values = torch.randn(batch_size, num_channels, height, width, generator=generator)
        with torch.no_grad():
            expected = wrapped(pixel_values).float().numpy()
        actual = session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]
        if actual.shape != expected.shape:
            raise OnnxExportError(
                f"{onnx_path} returns logits of shape {actual.shape} for a batch of {batch_size}, PyTorch "
                f"{expected.shape}; the batch dimension was not exported as dynamic. Report this with the model's "
                "class and torch's version."
            )
        max_difference = max(max_difference, float(np.abs(actual - expected).max()))
    if max_difference > atol:
        raise OnnxExportError(
            f"ONNX Runtime's logits for {onnx_path} differ from PyTorch's by up to {max_difference:.2e} (> atol="
            f"{atol}); an operator is translated inexactly at opset {written_opset}. Try another opset (--opset), "
            "or pass a larger atol if this difference is acceptable."
        )
    logger.info("Exported %s to %s (opset %d); ONNX Runtime matches PyTorch to %.1e", model_name, onnx_path,
                written_opset, max_difference)  # fmt: skip
    return written_opset, max_difference


def export_classifier(
    model_path: str | Path,
    output_dir: str | Path,
    *,
    opset: int | None = None,
    image_size: int | None = None,
    trust_remote_code: bool = False,
    atol: float = 1e-4,
) -> ExportedClassifier:
    """Exports a saved image classifier (a `save_pretrained` folder with its image processor) to
    `output_dir/model.onnx`, beside a copy of its config and image processor, and notes the export in the folder's
    model card (README.md, copied from the model's folder when it has one).

    Args:
        model_path (`str` or `Path`):
            What [`load_image_classifier`] loads as a checkpoint: our models, transformers' and timm's (the recipes'
            output folders).
        output_dir (`str` or `Path`):
            Where the ONNX model, config, image processor and card go.
        opset (`int`, *optional*):
            The ONNX opset (torch's default when `None`).
        image_size (`int`, *optional*):
            Export at another input size. Our ViT resamples its position embeddings for good (the resampled ones are
            baked into the graph); our CNNs take any size; other models refuse. The saved image processor resizes to
            this size.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        atol (`float`, *optional*, defaults to 1e-4):
            The parity the post-export check demands (see [`export_to_onnx`]).
    """
    model_path, output_dir = Path(model_path), Path(output_dir)
    if not (model_path / "config.json").is_file():
        raise ValueError(
            f"{model_path} has no config.json; pass a folder written by save_pretrained (a recipe's --output_dir)."
        )
    # timm's layers pick their export-friendly variants while the model is built, as timm's onnx_export.py does.
    with set_layer_config(exportable=True):
        loaded = load_image_classifier(
            str(model_path), id2label=None, image_size=image_size, trust_remote_code=trust_remote_code
        )
    model = loaded.model.float().eval()
    specification = loaded.input_specification
    onnx_path = output_dir / ONNX_FILE_NAME
    num_channels = int(getattr(model.config, "num_channels", None) or 3)
    written_opset, max_difference = export_to_onnx(
        model, onnx_path, image_size=specification.image_size, num_channels=num_channels, opset=opset, atol=atol
    )
    _save_metadata(model, loaded.image_processor, model_path, output_dir, keep_processor=image_size is None)
    stale_int8 = output_dir / INT8_FILE_NAME
    if stale_int8.is_file():  # quantised from the model.onnx just replaced
        stale_int8.unlink()
        logger.info("Removed %s: it was quantised from the previous export.", stale_int8)
    exported = ExportedClassifier(
        output_dir=output_dir,
        onnx_path=onnx_path,
        specification=specification,
        opset=written_opset,
        id2label={int(index): str(label) for index, label in model.config.id2label.items()},
        max_abs_difference=max_difference,
    )
    height, width = specification.image_size
    write_card_line(
        output_dir,
        f"`{ONNX_FILE_NAME}`: {type(model).__name__} from `{model_path}` at {height}x{width}, exported with "
        f"`torch.onnx.export(dynamo=True)` (opset {written_opset}, dynamic batch dimension; input `pixel_values`, "
        f"output `logits`). ONNX Runtime's float32 logits match PyTorch's to {max_difference:.1e} (required: "
        f"{atol}).",
    )
    return exported


def _save_metadata(
    model: PreTrainedModel,
    image_processor: BaseImageProcessor,
    model_path: Path,
    output_dir: Path,
    keep_processor: bool,
) -> None:
    """config.json (with the code files its `auto_map` names, for `trust_remote_code` readers), the image processor
    and the model card beside the ONNX file."""
    model.config.save_pretrained(output_dir)
    auto_map = getattr(model.config, "auto_map", None) or {}
    for reference in auto_map.values():
        module_file = model_path / f"{str(reference).split('--')[-1].split('.')[0]}.py"
        if module_file.is_file():
            shutil.copy2(module_file, output_dir / module_file.name)
    if keep_processor and (model_path / "preprocessor_config.json").is_file():
        # The checkpoint's own processor, byte for byte: what its pipeline already uses.
        shutil.copy2(model_path / "preprocessor_config.json", output_dir / "preprocessor_config.json")
    else:
        image_processor.save_pretrained(output_dir)
    card = model_path / "README.md"
    if card.is_file() and card.resolve() != (output_dir / "README.md").resolve():
        shutil.copy2(card, output_dir / "README.md")


def _default_domain_opset(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _error_chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return chain


def _explain_export_failure(error: Exception, model_name: str, opset: int | None) -> OnnxExportError:
    """An `OnnxExportError` that says which operator (or which line of the model) stopped the export, and what to do
    about it."""
    text = "\n".join(str(link) for link in _error_chain(error))
    opset_text = f"opset {opset}" if opset else "the default opset"
    operator = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
    if operator:
        name, overload = operator.groups()
        return OnnxExportError(
            f"{model_name} cannot be exported to ONNX: the operator '{name}' (torch.ops.{name}.{overload}) has no "
            f"ONNX translation at {opset_text}. Write that part of the model's forward with standard torch "
            "operations, or pass export_to_onnx(..., custom_translation_table={torch.ops."
            f"{name}.{overload}: an onnxscript function}}); another --opset may also have it.",
            operator=name,
        )
    summary = _exception_summary(text)
    call = re.search(r"The following call raised this error:\s*\n\s*(File [^\n]+)\n\s*([^\n]+)", text)
    where = f" at {call.group(1).strip()}: `{call.group(2).strip()}`" if call else ""
    if "torch.export" in text and ("step 1/3" in text or "TorchExportError" in type(error).__name__):
        return OnnxExportError(
            f"{model_name} cannot be traced by torch.export, the first step of the ONNX export{where}: {summary}. "
            "Make the forward traceable: no Python branches on tensor values (use torch.where or torch.cond), no "
            "data-dependent shapes; for a timm model, check timm.layers.set_exportable(True) variants exist for its "
            "layers, or export another architecture."
        )
    return OnnxExportError(
        f"{model_name} failed to export to ONNX at {opset_text}{where}: {summary}. Try another --opset, or run "
        "torch.onnx.export(..., dynamo=True, report=True) on the model for a full report."
    )


def _exception_summary(text: str) -> str:
    """The innermost exception line of torch.onnx's "## Exception summary", or the first line of the error."""
    found = re.findall(r"<class '[^']+'>: ([^\n]+)", text)
    if found:
        return found[0].strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")


# ONNX Runtime


def onnx_session(onnx_path: str | Path, num_threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session; `num_threads` caps its intra-op threads (all cores when `None`)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: onnxruntime.InferenceSession, pixel_values: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The logits `(N, num_labels)` of normalised `pixel_values` `(N, C, H, W)`, `batch_size` images at a time."""
    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
    batches = [
        session.run(["logits"], {"pixel_values": pixel_values[start : start + batch_size]})[0]
        for start in range(0, len(pixel_values), batch_size)
    ]
    return np.concatenate(batches)


def preprocess_images(images: Sequence[Any], specification: InputSpecification) -> np.ndarray:
    """PIL images (or `datasets.Image` values) -> normalised `(N, C, H, W)` float32 through the eval transform."""
    transform = specification.eval_transform()
    return torch.stack([transform(_decode_image(image)) for image in images]).numpy()


# Quantisation


@dataclass
class CalibrationSet:
    """Normalised images to calibrate activation ranges on, and the input specification they were prepared with.

    Args:
        pixel_values (`np.ndarray`): `(N, C, H, W)` float32.
        specification ([`InputSpecification`]): the transform that produced them.
        description (`str`): where they come from, for the model card.
    """

    pixel_values: np.ndarray
    specification: InputSpecification
    description: str = "calibration images"


def calibration_set_from_dataset(
    dataset: datasets.Dataset,
    specification: InputSpecification,
    *,
    num_images: int = 300,
    image_column: str = "image",
    seed: int = 0,
    description: str | None = None,
) -> CalibrationSet:
    """`num_images` images drawn at random (seeded) from `dataset` (a training split), through the model's own eval
    transform (`specification`)."""
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be at least 1 (a few hundred calibrate well).")
    if image_column not in dataset.column_names:
        raise ValueError(f"image column {image_column!r} not found; columns are {dataset.column_names}.")
    count = min(num_images, len(dataset))
    indices = np.random.default_rng(seed).choice(len(dataset), size=count, replace=False)
    images = dataset.select(sorted(int(index) for index in indices))[image_column]
    pixel_values = preprocess_images(images, specification)
    return CalibrationSet(pixel_values, specification, description or f"{count} images")


class _CalibrationReader:
    """onnxruntime.quantization's `CalibrationDataReader` over a `CalibrationSet`, a batch at a time."""

    def __init__(self, pixel_values: np.ndarray, batch_size: int):
        self.pixel_values, self.batch_size, self.position = pixel_values, batch_size, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.pixel_values):
            return None
        batch = self.pixel_values[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {"pixel_values": np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def check_calibration_set(calibration: CalibrationSet, specification: InputSpecification) -> None:
    """Refuses a calibration set prepared for another input than the model's: another image size, mean or std
    (declared, or visible in the pixel values' shape and range). Quantisation ranges calibrated on such images do not
    fit the images the model will see."""
    problems = specification.mismatches(calibration.specification)
    pixel_values = calibration.pixel_values
    channels = len(specification.image_mean)
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
        problems.append(f"pixel values of shape {tuple(pixel_values.shape)}, not (N, {channels}, height, width)")
    else:
        if tuple(pixel_values.shape[-2:]) != tuple(specification.image_size):
            problems.append(
                f"images of {pixel_values.shape[-2]}x{pixel_values.shape[-1]} pixels, not "
                f"{specification.image_size[0]}x{specification.image_size[1]}"
            )
        # Images in [0, 1] normalised with (mean, std) lie in [-mean / std, (1 - mean) / std] per channel.
        mean, std = np.asarray(specification.image_mean), np.asarray(specification.image_std)
        lowest, highest = pixel_values.min(axis=(0, 2, 3)), pixel_values.max(axis=(0, 2, 3))
        span = (1.0 / std) * _NORMALISATION_SLACK
        if np.any(lowest < -mean / std - span) or np.any(highest > (1 - mean) / std + span):
            problems.append(
                f"pixel values in [{rounded(lowest)}, {rounded(highest)}] per channel, outside what images "
                f"normalised with mean {rounded(mean)} and std {rounded(std)} can take "
                f"([{rounded(-mean / std)}, {rounded((1 - mean) / std)}])"
            )
    if problems:
        raise ValueError(
            "the calibration set does not match the model's input (its image processor): "
            + "; ".join(problems)
            + ". Build it with calibration_set_from_dataset(dataset, InputSpecification.from_pretrained(model_dir)) "
            "so it goes through the model's own eval transform."
        )


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def quantize_int8(
    onnx_path: str | Path,
    output_path: str | Path,
    calibration: CalibrationSet,
    specification: InputSpecification,
    *,
    calibration_method: str = "minmax",
    op_types_to_quantize: Sequence[str] | None = None,
    batch_size: int = 32,
    reduce_range: bool | None = None,
) -> Path:
    """Post-training static int8 quantisation through ONNX Runtime: QDQ format, per-channel int8 weights, uint8
    activations whose ranges are calibrated on `calibration`.

    The calibration set is checked against the model's input (`specification`, its image processor's) before
    anything is calibrated ([`check_calibration_set`]).

    Args:
        onnx_path (`str` or `Path`): the float32 model ([`export_classifier`]'s `model.onnx`).
        output_path (`str` or `Path`): the int8 model to write.
        calibration ([`CalibrationSet`]): images from the training split through the model's eval transform.
        specification ([`InputSpecification`]): the model's input.
        calibration_method (`str`, *optional*, defaults to `"minmax"`): `"minmax"`, `"entropy"` or `"percentile"`.
        op_types_to_quantize (`Sequence[str]`, *optional*): ONNX operator types to quantise; ONNX Runtime's default
            set when `None`.
        batch_size (`int`, *optional*, defaults to 32): images per calibration batch.
        reduce_range (`bool`, *optional*): 7-bit weights, which x86 CPUs without VNNI need: their uint8 x int8
            kernel (VPMADDUBSW) saturates int16 sums of full-range products. `None` decides from this CPU
            ([`int8_needs_reduced_range`]); pass `True` for a model to deploy on such CPUs.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration_method={calibration_method!r}; choose one of {list(CALIBRATION_METHODS)}.")
    check_calibration_set(calibration, specification)
    onnx_path, output_path = Path(onnx_path), Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration_method]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        # ONNX Runtime's recommended pre-processing: graph optimisations (BatchNorm folded into convolutions, ...) and
        # shape inference, so that more operators quantise and fewer Q/DQ pairs are needed.
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prepared))
        except Exception as error:  # shape inference fails on some graphs; quantisation still works without it
            logger.warning("ONNX Runtime's quantisation pre-processing failed (%s); quantising as is.", error)
            prepared = onnx_path
        quantize_static(
            str(prepared),
            str(output_path),
            _CalibrationReader(calibration.pixel_values, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=int8_needs_reduced_range() if reduce_range is None else reduce_range,
            op_types_to_quantize=list(op_types_to_quantize) if op_types_to_quantize else None,
            calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"],
        )
    logger.info("Quantised %s to int8 (%s calibration on %s): %s", onnx_path, calibration_method,
                calibration.description, output_path)  # fmt: skip
    return output_path


# Accuracy


def onnx_accuracy(
    onnx_path: str | Path,
    dataset: datasets.Dataset,
    specification: InputSpecification,
    *,
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 64,
    num_threads: int | None = None,
) -> float:
    """Top-1 accuracy of an ONNX classifier on a labelled split, images through the model's eval transform."""
    session = onnx_session(onnx_path, num_threads=num_threads)
    correct = 0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        pixel_values = preprocess_images(rows[image_column], specification)
        predictions = onnx_logits(session, pixel_values, batch_size).argmax(axis=-1)
        correct += int((predictions == np.asarray(rows[label_column])).sum())
    return correct / max(len(dataset), 1)


def measure_int8_drop(
    fp32_path: str | Path,
    int8_path: str | Path,
    dataset: datasets.Dataset,
    specification: InputSpecification,
    **accuracy_kwargs: Any,
) -> dict[str, float]:
    """Accuracy of the float32 and the int8 model on `dataset` and the drop in points (fp32 - int8, x100)."""
    fp32 = onnx_accuracy(fp32_path, dataset, specification, **accuracy_kwargs)
    int8 = onnx_accuracy(int8_path, dataset, specification, **accuracy_kwargs)
    return {"fp32_accuracy": fp32, "int8_accuracy": int8, "accuracy_drop_points": 100 * (fp32 - int8)}


def int8_needs_reduced_range() -> bool:
    """Whether this CPU is x86 without an int8 dot-product instruction (AVX2 without AVX512-VNNI, AVX-VNNI or AMX):
    ONNX Runtime's uint8 x int8 kernels there saturate on full-range weights (up to 0.3 of the logits' spread on a
    small CNN, benchmarks/RESULTS.md), and its documentation recommends 7-bit weights (`reduce_range`)."""
    flags = cpu_flags()
    return flags is not None and "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def quantize_exported(
    exported: ExportedClassifier,
    calibration: CalibrationSet,
    *,
    test_dataset: datasets.Dataset | None = None,
    test_description: str = "the test split",
    calibration_method: str = "minmax",
    reduce_range: bool | None = None,
) -> dict[str, float]:
    """Quantises an exported classifier to `model_int8.onnx` beside its `model.onnx` ([`quantize_int8`]), measures
    the accuracy drop on `test_dataset` when one is given ([`measure_int8_drop`]), and writes both into the folder's
    model card. `reduce_range`: as for [`quantize_int8`] (`None`: decided from this CPU).

    Returns:
        `dict[str, float]`: `fp32_accuracy`, `int8_accuracy` and `accuracy_drop_points` (empty without a test set).
    """
    reduce_range = int8_needs_reduced_range() if reduce_range is None else reduce_range
    int8_path = quantize_int8(
        exported.onnx_path,
        exported.output_dir / INT8_FILE_NAME,
        calibration,
        exported.specification,
        calibration_method=calibration_method,
        reduce_range=reduce_range,
    )
    metrics = {}
    weights = "per-channel 7-bit weights (reduce_range, for CPUs without VNNI)" if reduce_range else (
        "per-channel int8 weights"
    )  # fmt: skip
    line = (
        f"`{INT8_FILE_NAME}`: `{ONNX_FILE_NAME}` quantised to int8 after training with ONNX Runtime's "
        f"`quantize_static` (QDQ format, {weights}, uint8 activations, {calibration_method} "
        f"calibration on {calibration.description} through the model's eval transform)."
    )
    if test_dataset is not None:
        metrics = measure_int8_drop(exported.onnx_path, int8_path, test_dataset, exported.specification)
        line += (
            f" Top-1 accuracy on {test_description} ({len(test_dataset)} images): float32 "
            f"{100 * metrics['fp32_accuracy']:.2f}%, int8 {100 * metrics['int8_accuracy']:.2f}%: accuracy drop "
            f"(float32 - int8) {metrics['accuracy_drop_points']:.2f} points."
        )
    else:
        line += " Accuracy drop not measured (no test set given)."
    write_card_line(exported.output_dir, line)
    return metrics


# Model card


def write_card_line(output_dir: str | Path, line: str) -> Path:
    """Adds `line` as a bullet to the "Deployment (ONNX)" section of `output_dir/README.md` (created when missing); a
    bullet about the same file (its first `code` span) replaces the earlier one, so exporting again does not pile
    lines up."""
    card_path = Path(output_dir) / "README.md"
    text = card_path.read_text() if card_path.is_file() else ""
    head, _, section = text.partition(CARD_SECTION)
    # The section ends where the next "## " heading starts.
    body, next_heading, rest = section.partition("\n## ")
    bullets = [bullet for bullet in body.strip().splitlines() if bullet.startswith("- ")]
    key = _first_code_span(line)
    bullets = [bullet for bullet in bullets if key is None or _first_code_span(bullet[2:]) != key]
    bullets.append(f"- {line}")
    section_text = f"{CARD_SECTION}\n\n" + "\n".join(bullets) + "\n"
    tail = f"\n## {rest}" if next_heading else ""
    head = head.rstrip("\n") + "\n\n" if head.strip() else ""
    card_path.write_text(head + section_text + tail)
    return card_path


def _first_code_span(text: str) -> str | None:
    found = re.match(r"\s*`([^`]+)`", text)
    return found.group(1) if found else None


__all__ = [
    "CALIBRATION_METHODS",
    "INT8_FILE_NAME",
    "ONNX_FILE_NAME",
    "CalibrationSet",
    "ExportedClassifier",
    "InputSpecification",
    "OnnxExportError",
    "calibration_set_from_dataset",
    "check_calibration_set",
    "export_classifier",
    "export_to_onnx",
    "measure_int8_drop",
    "onnx_accuracy",
    "onnx_logits",
    "onnx_session",
    "preprocess_images",
    "quantize_exported",
    "int8_needs_reduced_range",
    "quantize_int8",
    "write_card_line",
]
