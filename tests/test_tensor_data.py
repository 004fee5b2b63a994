"""The tensor-resident input pipeline: decoding once, the disk cache, per-sample augmentation on the batch, the
pipeline choice, and the recipes on it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_example
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainingArguments

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification, tensor_data
from hf_vision_distill.data import (
    ImageClassificationCollator,
    build_transforms,
    load_image_classification_dataset,
    with_image_transform,
)
from hf_vision_distill.distillation import DistillationConfig, DistillationTrainer
from hf_vision_distill.evaluation import build_compute_metrics
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.recipes import (
    DataArguments,
    build_inputs,
    choose_input_pipeline,
    final_training_arguments,
)
from hf_vision_distill.tensor_data import (
    DeviceImageTransform,
    MixedImageSizesError,
    TensorImageDataset,
    decode_images,
    decoded_cache_path,
)
from hf_vision_distill.training import ImageClassificationTrainer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "data" / "cifar10-sample")
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def sample():
    return load_image_classification_dataset(SAMPLE, max_train_samples=96, max_eval_samples=64)


def test_decoded_split_equals_the_worker_pipeline_and_is_cached(sample, tmp_path, monkeypatch):
    split = sample.dataset["validation"]
    decoded = decode_images(split, cache_dir=tmp_path, num_workers=0)
    assert decoded.images.shape == (64, 3, 32, 32) and decoded.images.dtype == torch.uint8
    assert decoded.row_index.tolist() == split["row_index"]
    assert decoded.labels.tolist() == split["label"]

    # Evaluation batches: exactly what the per-image transform and the collator give.
    reference = with_image_transform(split, build_transforms(32, train=False, mean=MEAN, std=STD))
    expected = ImageClassificationCollator()([reference[index] for index in range(8)])
    batch = DeviceImageTransform(32, train=False, mean=MEAN, std=STD)(
        TensorImageDataset(decoded).__getitems__(range(8))
    )
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)
    assert torch.equal(batch["labels"], expected["labels"])

    # The second call reads the file and decodes nothing.
    assert decoded_cache_path(split, "error", tmp_path).is_file()
    monkeypatch.setattr(tensor_data, "with_image_transform", lambda *args, **kwargs: pytest.fail("decoded again"))
    again = decode_images(split, cache_dir=tmp_path)
    assert torch.equal(again.images, decoded.images) and torch.equal(again.row_index, decoded.row_index)


def test_grayscale_becomes_rgb_and_resizes_like_the_worker_pipeline(tmp_path):
    images = [Image.fromarray(np.random.default_rng(index).integers(0, 256, (28, 28), dtype=np.uint8), "L")
              for index in range(4)]  # fmt: skip
    split = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 0, 1], "row_index": [0, 1, 2, 3]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["a", "b"]),
                "row_index": datasets.Value("int64"),
            }
        ),  # fmt: skip
    )
    decoded = decode_images(split, cache_dir=tmp_path, num_workers=0)
    assert decoded.images.shape == (4, 3, 28, 28)
    assert torch.equal(decoded.images[:, 0], decoded.images[:, 1])
    batch = DeviceImageTransform(32, train=False, mean=MEAN, std=STD)(
        TensorImageDataset(decoded).__getitems__(range(4))
    )
    reference = with_image_transform(split, build_transforms(32, train=False, mean=MEAN, std=STD))
    expected = torch.stack([reference[index]["pixel_values"] for index in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    # PIL's and torch's bilinear upsampling round differently: within a few grey levels (1/255 is 0.016 here).
    assert (batch["pixel_values"] - expected).abs().max() < 0.1


def test_images_of_different_sizes_are_refused(tmp_path):
    images = [Image.new("RGB", (32, 32)), Image.new("RGB", (40, 32))]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1], "row_index": [0, 1]})
    split = split.cast_column("image", datasets.Image())
    with pytest.raises(MixedImageSizesError, match=r"row 1 is 32x40.*--input_pipeline workers"):
        decode_images(split, cache_dir=tmp_path, num_workers=0)


# Decodes the split saved at argv[1] with 2 workers under an open-file limit 200 above what the process holds.
DECODE_UNDER_A_FILE_LIMIT = """
import os, resource, sys
import datasets
from hf_vision_distill.tensor_data import decode_images
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, len(os.listdir("/proc/self/fd")) + 200), hard))
decoded = decode_images(datasets.load_from_disk(sys.argv[1]), cache_dir=sys.argv[2], num_workers=2)
print(decoded.images[:, 0, 0, 0].tolist() == [index % 256 for index in range(600)],
      decoded.row_index.tolist() == list(range(600)), decoded.labels.tolist() == [0, 1] * 300)
"""


@pytest.mark.slow
def test_decoding_workers_do_not_hold_a_file_per_image(tmp_path):
    # Each tensor a worker sends is a shared-memory file in the main process; one per image, kept until the split was
    # stacked, ran out of the open-file limit on CIFAR-10's 48,000 training images (limit 20,000 here). The old code
    # then waited for the failed batch forever: a subprocess with a time limit turns that into a failure.
    images = [Image.new("RGB", (8, 8), (index % 256, 0, 0)) for index in range(600)]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 300, "row_index": list(range(600))})
    split.cast_column("image", datasets.Image()).save_to_disk(tmp_path / "split")
    command = [sys.executable, "-c", DECODE_UNDER_A_FILE_LIMIT, str(tmp_path / "split"), str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True", "True"]


@pytest.mark.slow
def test_pad_and_crop_draws_a_crop_and_a_flip_for_every_image():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    batch = {"pixel_values": image.expand(64, -1, -1, -1).clone(), "labels": torch.zeros(64, dtype=torch.long)}
    transform = DeviceImageTransform(32, train=True, mean=(0, 0, 0), std=(1, 1, 1), crop="pad")
    out = transform(batch)["pixel_values"] * 255
    padded = F.pad(image.float(), (4, 4, 4, 4), mode="reflect")[0]
    # Every output is one of the 9 x 9 crops of the reflect-padded image, flipped or not (as RandomCrop + flip).
    candidates = {}
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 32, left : left + 32]
            candidates[(top, left, False)] = crop
            candidates[(top, left, True)] = crop.flip(-1)
    drawn = []
    for output in out:
        matches = [key for key, crop in candidates.items() if torch.allclose(output, crop, atol=1e-3)]
        assert matches, "an output is not a crop of the padded image"
        drawn.append(matches[0])
    assert len({key[:2] for key in drawn}) > 20  # offsets differ per image
    assert 10 < sum(key[2] for key in drawn) < 54  # about half flipped


def test_random_resized_crop_reads_a_box_of_each_image_at_the_model_size():
    torch.manual_seed(0)
    # Pixel value = column index: a crop resampled without flip increases along each row, a flipped one decreases.
    columns = torch.arange(64, dtype=torch.uint8).expand(3, 48, 64)
    batch = {"pixel_values": columns.expand(128, -1, -1, -1).clone(), "labels": torch.zeros(128, dtype=torch.long)}
    transform = DeviceImageTransform((40, 40), train=True, mean=(0, 0, 0), std=(1, 1, 1), crop="random_resized")
    out = transform(batch)["pixel_values"] * 255
    assert out.shape == (128, 3, 40, 40)
    steps = out[:, 0, 20, 1:] - out[:, 0, 20, :-1]
    increasing, decreasing = (steps >= -1e-3).all(1), (steps <= 1e-3).all(1)
    assert bool((increasing | decreasing).all())
    assert 20 < int(increasing.sum()) < 108
    widths = out[:, 0, 20, :].amax(1) - out[:, 0, 20, :].amin(1)
    assert widths.std() > 3  # the boxes differ per image
    assert out.min() >= -1e-3 and out.max() <= 63 + 1e-3


def test_teacher_outputs_travel_by_row(sample, tmp_path):
    decoded = decode_images(sample.dataset["train"], cache_dir=tmp_path, num_workers=0)
    table = np.full((5000, 10), np.nan, dtype=np.float32)
    table[decoded.row_index.numpy()] = decoded.row_index.numpy()[:, None]
    batch = TensorImageDataset(decoded, {"teacher_logits": table}).__getitems__([3, 1])
    assert batch["teacher_logits"][:, 0].tolist() == decoded.row_index[[3, 1]].float().tolist()
    table[decoded.row_index[0]] = np.nan
    with pytest.raises(ValueError, match="cache_teacher_logits"):
        TensorImageDataset(decoded, {"teacher_logits": table})


def test_the_choice_of_pipeline(sample):
    assert choose_input_pipeline(sample, DataArguments()) == "tensors"
    assert choose_input_pipeline(sample, DataArguments(input_pipeline="workers")) == "workers"
    assert choose_input_pipeline(sample, DataArguments(auto_augment="trivialaugment")) == "workers"
    with pytest.raises(ValueError, match="--input_pipeline workers"):
        choose_input_pipeline(sample, DataArguments(input_pipeline="tensors", auto_augment="randaugment"))
    assert choose_input_pipeline(sample, DataArguments(), memory_budget=1000) == "workers"
    with pytest.raises(ValueError, match="over the tensor pipeline's budget"):
        choose_input_pipeline(sample, DataArguments(input_pipeline="tensors"), memory_budget=1000)
    with pytest.raises(ValueError, match="--input_pipeline 'gpu' is not supported"):
        choose_input_pipeline(sample, DataArguments(input_pipeline="gpu"))


def tiny_arguments(output_dir, *extra: str) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--model_name_or_path", "compact-cnn", "--config_overrides",
        json.dumps({"hidden_sizes": [8, 16, 16]}), "--max_train_samples", "64", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "16", "--report_to", "none", "--logging_steps", "1",
        "--eval_strategy", "no", "--load_best_model_at_end", "false", "--save_strategy", "steps", "--save_steps", "2",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_an_interrupted_run_on_tensors_resumes_to_the_same_weights(tmp_path, caplog):
    recipe = load_example("train")
    caplog.set_level("INFO")
    run = tmp_path / "run"
    arguments = tiny_arguments(run, "--max_steps", "4", "--input_pipeline", "tensors", "--save_total_limit", "3")
    recipe.main(arguments)
    assert "Input pipeline: tensors" in caplog.text
    finished = load_file(run / "model.safetensors")
    # As if killed after the step-2 checkpoint: the rerun resumes there, and the augmentation draws what it drew.
    shutil.rmtree(run / "checkpoint-4")
    (run / "model.safetensors").unlink()
    recipe.main(arguments)
    assert "Resuming from" in caplog.text
    resumed = load_file(run / "model.safetensors")
    assert finished.keys() == resumed.keys()
    for name in finished:
        assert torch.equal(finished[name], resumed[name]), name


def test_both_pipelines_evaluate_a_model_alike(sample, tmp_path):
    torch.manual_seed(0)
    loaded = load_image_classifier("compact-cnn", id2label=sample.id2label,
                                   config_overrides={"hidden_sizes": [8, 16, 16]})  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=32, report_to=[],
                             remove_unused_columns=False, dataloader_num_workers=0)  # fmt: skip
    metrics = {}
    for pipeline in ("tensors", "workers"):
        inputs = build_inputs(sample, DataArguments(input_pipeline=pipeline), args, loaded.input_specification)
        assert inputs.pipeline == pipeline
        final_args = final_training_arguments(args, data=sample, inputs=inputs, argv=[])
        evaluator = ImageClassificationTrainer(model=loaded.model, args=final_args,
                                               data_collator=inputs.eval_collator,
                                               compute_metrics=build_compute_metrics())  # fmt: skip
        metrics[pipeline] = evaluator.evaluate(inputs.eval_datasets["test"], metric_key_prefix="test")
    assert metrics["tensors"]["test_accuracy"] == metrics["workers"]["test_accuracy"]
    assert metrics["tensors"]["test_loss"] == pytest.approx(metrics["workers"]["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_distillation_sizes_its_adapters_on_collated_batches(sample, tmp_path):
    """The tensor pipeline stores uint8 images at their source size (32 here); the models see them resized (48)."""
    decoded = decode_images(sample.dataset["train"], cache_dir=tmp_path, num_workers=0)
    labels = {"id2label": sample.id2label, "label2id": sample.label2id}
    vit = {"image_size": 48, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 32}  # fmt: skip
    torch.manual_seed(0)
    student = VisionTransformerForImageClassification(VisionTransformerConfig(**vit, **labels))
    teacher = VisionTransformerForImageClassification(VisionTransformerConfig(**vit, **labels))
    collators = {train: DeviceImageTransform(48, train=train, mean=MEAN, std=STD) for train in (True, False)}
    args = DistillationConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=1,
                              report_to="none", save_strategy="no", use_cpu=True, remove_unused_columns=False,
                              attention_loss_weight=0.1, feature_loss_weight=0.1,
                              feature_layers=["-1:-1"])  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args,
                                  train_dataset=TensorImageDataset(decoded), data_collator=collators[True],
                                  eval_data_collator=collators[False])  # fmt: skip
    assert trainer.train().training_loss > 0


def test_predict_decoded_scores_every_image_in_order_through_the_evaluation_transform():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8, generator=generator)
    decoded = tensor_data.DecodedImages(images=images, labels=torch.arange(7) % 3, row_index=torch.arange(7))
    transform = DeviceImageTransform(8, train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    class MeanChannel(torch.nn.Module):  # "predicts" the channel with the highest mean normalised value
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values):
            return type("Output", (), {"logits": pixel_values.mean(dim=(2, 3))})()

    predictions = tensor_data.predict_decoded(MeanChannel(), decoded, transform, batch_size=3)  # 3 + 3 + 1
    expected = ((images.float() / 255 - 0.5) / 0.25).mean(dim=(2, 3)).argmax(-1)
    torch.testing.assert_close(predictions, expected)
