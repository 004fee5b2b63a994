"""The decode-on-device input pipeline: encoded bytes through the workers, decoding, EXIF orientation and per-image
crops on the device, undecodable and non-JPEG images, and the recipes on it (here the device is the CPU)."""

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import load_example
from PIL import Image
from transformers import TrainingArguments

from hf_vision_distill.data import (
    ImageClassificationCollator,
    build_transforms,
    load_image_classification_dataset,
    with_image_transform,
)
from hf_vision_distill.device_decode import (
    DeviceJpegTransform,
    EncodedImageDataset,
    EncodedImages,
    decode_on_device,
)
from hf_vision_distill.evaluation import build_compute_metrics
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.recipes import DataArguments, build_inputs, choose_input_pipeline, final_training_arguments
from hf_vision_distill.tensor_data import random_resized_crop_boxes
from hf_vision_distill.training import ImageClassificationTrainer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "data" / "cifar10-sample")
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)
FEATURES = datasets.Features(
    {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"]), "row_index": datasets.Value("int64")}
)


@pytest.fixture(scope="module")
def sample():
    return load_image_classification_dataset(SAMPLE, max_train_samples=96, max_eval_samples=64)


def encode(image: Image.Image, image_format: str = "JPEG", **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=95, **save_options)
    return buffer.getvalue()


def photograph(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth, asymmetric image (JPEG keeps it well): a flip or a rotation changes it a lot."""
    rows, columns = np.mgrid[0:height, 0:width]
    offset = np.random.default_rng(seed).integers(0, 60)
    pixels = np.stack([rows * 200 // height, columns * 200 // width, (rows + 2 * columns + offset) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def split_of(images: list[bytes], labels: list[int]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in images], "label": labels,
         "row_index": list(range(len(images)))},
        features=FEATURES,
    )  # fmt: skip


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_datasets_applies_it(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photograph(24, 40), exif=exif.tobytes())
    expected = torch.from_numpy(np.array(datasets.Image().decode_example({"bytes": data, "path": None})))
    dataset = EncodedImageDataset(split_of([data], [0]))
    decoded = decode_on_device(dataset.__getitems__([0])["encoded_images"], torch.device("cpu"))[0]
    assert decoded.shape == expected.permute(2, 0, 1).shape
    # Both decode with libjpeg: the same pixels up to the decoders' rounding.
    assert (decoded.float() - expected.permute(2, 0, 1).float()).abs().mean() < 2


def test_evaluation_batches_match_the_worker_pipeline():
    sizes = [(40, 40), (60, 30), (33, 71), (24, 24)]
    split = split_of([encode(photograph(*size, seed=index)) for index, size in enumerate(sizes)], [0, 1, 0, 1])
    reference = with_image_transform(split, build_transforms(32, train=False, mean=MEAN, std=STD))
    expected = ImageClassificationCollator()([reference[index] for index in range(4)])
    collator = DeviceJpegTransform(32, train=False, mean=MEAN, std=STD)
    batch = collator.on_device(collator(EncodedImageDataset(split).__getitems__([0, 1, 2, 3])))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert torch.equal(batch["labels"], expected["labels"])
    # PIL's antialiased resampling and torch's round differently: within a few grey levels (1/255 is about 0.016).
    assert (batch["pixel_values"] - expected["pixel_values"]).abs().mean() < 0.05


def test_random_resized_crop_boxes_fit_each_image():
    sizes = torch.tensor([[40.0, 40.0], [300.0, 20.0], [20.0, 300.0], [64.0, 128.0]]).repeat(50, 1)
    top, left, height, width = random_resized_crop_boxes(sizes, torch.Generator().manual_seed(0))
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (width >= 1).all()
    assert (top + height <= sizes[:, 0]).all() and (left + width <= sizes[:, 1]).all()
    ratio = width / height
    assert ((ratio > 3 / 4 - 0.1) & (ratio < 4 / 3 + 0.1)).all()  # drawn ratios, or the clamped fallback's
    # Every image its own box (the 300x20 and 20x300 images mostly fall back to their centred crop).
    square = sizes[:, 0] == 40
    assert len(set(zip(top[square].tolist(), left[square].tolist(), height[square].tolist()))) > 40


def test_training_crops_are_per_image_and_keyed_by_the_batch():
    sizes = [(64, 48), (50, 90), (32, 32), (120, 100)]
    split = split_of([encode(photograph(*size, seed=index)) for index, size in enumerate(sizes)], [0, 1, 0, 1])
    dataset = EncodedImageDataset(split)
    collator = DeviceJpegTransform(24, train=True, mean=MEAN, std=STD, crop="random_resized", seed=7)
    first = collator.on_device(collator(dataset.__getitems__([0, 1, 2, 3])))["pixel_values"]
    again = collator.on_device(collator(dataset.__getitems__([0, 1, 2, 3])))["pixel_values"]
    other_order = collator.on_device(collator(dataset.__getitems__([3, 2, 1, 0])))["pixel_values"]
    assert first.shape == (4, 3, 24, 24)
    assert torch.equal(first, again)  # the same indices draw the same boxes and flips (resumable)
    assert not torch.equal(first, other_order.flip(0))  # another batch, other draws
    # A batch fetched example by example (dataset[i]) is the same batch.
    merged = collator([dataset[index] for index in (0, 1, 2, 3)])
    assert torch.equal(collator.on_device(merged)["pixel_values"], first)


def test_png_images_and_undecodable_ones(caplog):
    good = encode(photograph(20, 20))
    png = encode(photograph(20, 20), image_format="PNG")
    broken = good[:40]
    split = split_of([good, png, broken], [0, 1, 1])
    collator = DeviceJpegTransform(16, train=False, mean=MEAN, std=STD, source_split="train")
    batch = EncodedImageDataset(split).__getitems__([0, 1, 2])
    with pytest.raises(ValueError, match=r"row 2 of source split 'train'.*--on_bad_image skip.*--check_images"):
        collator.on_device(batch)
    skipping = DeviceJpegTransform(16, train=False, mean=MEAN, std=STD, on_bad_image="skip")
    out = skipping.on_device(EncodedImageDataset(split).__getitems__([0, 1, 2]))
    assert out["pixel_values"].shape == (2, 3, 16, 16) and out["labels"].tolist() == [0, 1]
    # The PNG went through PIL: the same picture as the JPEG within JPEG's loss.
    assert (out["pixel_values"][0] - out["pixel_values"][1]).abs().mean() < 0.1
    assert "Skipped 1 undecodable image(s): row 2" in caplog.text


def test_the_encoded_batch_stays_on_the_host():
    """Device placement (Accelerate's, the Trainer's) and the Trainer's batch-size detection pass over the holder."""
    from accelerate.utils import send_to_device
    from transformers.trainer_pt_utils import find_batch_size

    batch = {"labels": torch.tensor([0, 1]), "encoded_images": EncodedImages([b"x", b"yy"], [1, 1], [0, 1], [5, 6])}
    assert send_to_device(batch, "cpu")["encoded_images"] is batch["encoded_images"]
    assert find_batch_size(batch) == 2


def test_the_choice_of_pipeline_for_decoding_on_the_device(sample):
    assert choose_input_pipeline(sample, DataArguments(input_pipeline="decode_on_device")) == "decode_on_device"
    with pytest.raises(ValueError, match="cannot apply.*--input_pipeline workers"):
        choose_input_pipeline(sample, DataArguments(input_pipeline="decode_on_device", color_jitter=0.2))
    png = split_of([encode(photograph(8, 8), image_format="PNG")] * 2, [0, 1])
    png_data = type(sample)(datasets.DatasetDict({"train": png}), sample.id2label, sample.label2id)
    with pytest.raises(ValueError, match="decodes JPEG images, and split 'train' stores others.*workers"):
        choose_input_pipeline(png_data, DataArguments(input_pipeline="decode_on_device"))


def test_decoding_on_the_device_evaluates_a_model_as_the_workers_do(sample, tmp_path):
    torch.manual_seed(0)
    loaded = load_image_classifier("compact-cnn", id2label=sample.id2label,
                                   config_overrides={"hidden_sizes": [8, 16, 16]})  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=24, report_to=[],
                             remove_unused_columns=False, dataloader_num_workers=0)  # fmt: skip
    metrics = {}
    for pipeline in ("decode_on_device", "workers"):
        inputs = build_inputs(sample, DataArguments(input_pipeline=pipeline), args, loaded.input_specification)
        assert inputs.pipeline == pipeline
        final_args = final_training_arguments(args, data=sample, inputs=inputs, argv=[])
        evaluator = ImageClassificationTrainer(model=loaded.model, args=final_args,
                                               data_collator=inputs.eval_collator,
                                               compute_metrics=build_compute_metrics())  # fmt: skip
        prediction = evaluator.predict(inputs.eval_datasets["test"], metric_key_prefix="test")
        assert prediction.predictions.shape == (64, sample.num_labels)  # every batch counted at its true size
        metrics[pipeline] = prediction.metrics
    # Same images at the model's size (32, no resizing): the same decoder output, so the same predictions.
    assert metrics["decode_on_device"]["test_accuracy"] == metrics["workers"]["test_accuracy"]
    assert metrics["decode_on_device"]["test_loss"] == pytest.approx(metrics["workers"]["test_loss"], rel=1e-3)


@pytest.mark.slow
def test_the_training_recipe_decodes_on_the_device(tmp_path, caplog):
    caplog.set_level("INFO")
    run = tmp_path / "run"
    load_example("train").main([
        "--output_dir", str(run), "--model_name_or_path", "compact-cnn", "--config_overrides",
        json.dumps({"hidden_sizes": [8, 16, 16]}), "--max_train_samples", "48", "--max_eval_samples", "16",
        "--per_device_train_batch_size", "16", "--report_to", "none", "--max_steps", "3", "--image_size", "40",
        "--input_pipeline", "decode_on_device", "--dataloader_num_workers", "1", "--save_strategy", "no",
        "--load_best_model_at_end", "false",
    ])  # fmt: skip
    assert "Input pipeline: decode_on_device" in caplog.text
    results = json.loads((run / "all_results.json").read_text())
    assert results["total_flos"] > 0 and 0 <= results["eval_accuracy"] <= 1


def test_the_decoder_is_looked_up_once(monkeypatch):
    """Looking the decoder up imports TorchCodec (or fails to): once per process, not once per batch."""
    from hf_vision_distill import device_decode

    device_decode._jpeg_decoder.cache_clear()
    data = encode(photograph(16, 16))
    for _ in range(3):
        decode_on_device(EncodedImages([data], [1], [0], [0]), torch.device("cpu"))
    assert device_decode._jpeg_decoder.cache_info().misses == 1
