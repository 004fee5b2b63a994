"""The offline teacher with augmentation: the teacher's top-k logits on K cached views of every training image, each
view replayed pixel for pixel in training, one per row and epoch."""

import functools
import json
import math
import types
from pathlib import Path

import datasets
import pytest
import torch
from conftest import load_example
from transformers import TrainerCallback

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification
from hf_vision_distill.distillation import (
    DistillationConfig,
    DistillationTrainer,
    Teacher,
    TeacherInputTransform,
    TeacherViewCache,
    TeacherViewDataset,
    TeacherViewEpochCallback,
    cache_teacher_views,
    dense_teacher_logits,
)
from hf_vision_distill.distillation.teacher_cache import teacher_views_cache_path, top_k_with_tail
from hf_vision_distill.losses import generalized_jsd_loss, reverse_distillation_loss, standardize_logits
from hf_vision_distill.models import InputSpecification
from hf_vision_distill.tensor_data import (
    SAMPLE_INDICES_KEY,
    VIEW_BOXES_KEY,
    VIEW_FLIPS_KEY,
    DecodedImages,
    DeviceImageTransform,
)

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)
NUM_LABELS = 10


def tiny_vit(seed: int, image_size: int = 16) -> VisionTransformerForImageClassification:
    torch.manual_seed(seed)
    id2label = {index: f"class_{index}" for index in range(NUM_LABELS)}
    config = VisionTransformerConfig(image_size=image_size, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, id2label=id2label,
                                     label2id={name: index for index, name in id2label.items()})  # fmt: skip
    return VisionTransformerForImageClassification(config).eval()


def decoded_images(rows: int = 12, size: int = 32, seed: int = 0) -> DecodedImages:
    generator = torch.Generator().manual_seed(seed)
    return DecodedImages(
        images=torch.randint(0, 256, (rows, 3, size, size), generator=generator, dtype=torch.uint8),
        labels=torch.randint(0, NUM_LABELS, (rows,), generator=generator),
        row_index=torch.arange(rows) * 3 + 1,  # source rows, not positions
    )


def train_transform(crop: str, **kwargs) -> DeviceImageTransform:
    return DeviceImageTransform(16, train=True, mean=MEAN, std=STD, crop=crop, seed=7, **kwargs)


class RecordingTeacher(torch.nn.Module):
    """A teacher that keeps every batch it was given."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.teacher = teacher
        self.inputs = []

    def forward(self, pixel_values: torch.Tensor):
        self.inputs.append(pixel_values.clone())
        return self.teacher(pixel_values=pixel_values)


@pytest.mark.parametrize("crop", ["pad", "random_resized"])
def test_a_replayed_view_is_the_view_the_teacher_saw_and_carries_its_logits(crop, tmp_path):
    decoded = decoded_images()
    transform = train_transform(crop)
    # The teacher takes its own size and normalisation (24 pixels): it sees its view of each student view.
    teacher_view = TeacherInputTransform(
        InputSpecification(16, MEAN, STD), InputSpecification(24, (0.5,) * 3, (0.5,) * 3)
    )
    teacher = RecordingTeacher(tiny_vit(1, image_size=24))
    cache = cache_teacher_views(Teacher(teacher, teacher_view), decoded, transform, num_views=3, top_k=4,
                                batch_size=len(decoded), cache_dir=tmp_path)  # fmt: skip
    assert cache.boxes.shape == (12, 3, 4) and cache.top_logits.shape == (12, 3, 4) and cache.num_labels == 10
    assert cache.top_logits.dtype == torch.float16 and cache.top_indices.dtype == torch.int16
    seen_by_teacher = teacher.inputs  # one batch of every row per view
    assert len(seen_by_teacher) == 3
    # The views differ: crops and flips were drawn, not one image three times.
    assert not torch.equal(seen_by_teacher[0], seen_by_teacher[1])

    dataset = TeacherViewDataset(decoded, cache, seed=5)
    collator = transform.with_replayed_views()
    positions = [4, 0, 11, 7, 2]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        batch = collator(dataset.__getitems__(positions))
        assert set(batch) == {"pixel_values", "labels", "teacher_logits"}
        views = dataset.views(torch.tensor(positions))
        student_pixels = batch["pixel_values"]
        teacher_pixels = teacher_view(student_pixels)
        with torch.no_grad():
            live = teacher.teacher(pixel_values=teacher_pixels).logits
        for row, (position, view) in enumerate(zip(positions, views.tolist())):
            # Pixel-exact on the same device: the same view of the same image, drawn at caching, replayed now.
            assert torch.equal(teacher_pixels[row], seen_by_teacher[view][position])
            top_logits, top_indices = live[row].topk(4)
            assert torch.equal(cache.top_indices[position, view].long(), top_indices)
            torch.testing.assert_close(cache.top_logits[position, view].float(), top_logits, atol=2e-3, rtol=1e-3)
            torch.testing.assert_close(batch["teacher_logits"][row, top_indices], top_logits, atol=2e-3, rtol=1e-3)


def test_the_top_k_come_back_with_the_rest_of_the_probability_spread_evenly():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, NUM_LABELS, generator=generator) * 3
    probabilities = logits.softmax(-1)
    top_logits, top_indices, tail_logits = top_k_with_tail(logits, 3)
    dense = dense_teacher_logits(top_logits, top_indices, tail_logits, NUM_LABELS)
    assert dense.shape == (6, NUM_LABELS)
    given_back = dense.softmax(-1)
    # At temperature 1: the teacher's probability on each top class, the remaining mass shared by the other 7.
    torch.testing.assert_close(given_back.gather(-1, top_indices), probabilities.gather(-1, top_indices))
    others = given_back.scatter(-1, top_indices, 0.0)
    remaining = 1 - probabilities.gather(-1, top_indices).sum(-1, keepdim=True)
    expected_others = (remaining / 7).expand(6, NUM_LABELS).scatter(-1, top_indices, 0.0)
    torch.testing.assert_close(others, expected_others)
    # Every soft loss stays finite on them (a renormalised top-k, with -inf elsewhere, would not).
    student = torch.randn(6, NUM_LABELS, generator=generator)
    assert torch.isfinite(standardize_logits(dense)).all()
    assert torch.isfinite(reverse_distillation_loss(student, dense, 4.0))
    assert torch.isfinite(generalized_jsd_loss(student, dense, 0.5, 4.0))
    # All the classes kept: the logits themselves.
    top_logits, top_indices, tail_logits = top_k_with_tail(logits, NUM_LABELS)
    assert torch.isinf(tail_logits).all()
    torch.testing.assert_close(dense_teacher_logits(top_logits, top_indices, tail_logits, NUM_LABELS), logits)


def count_forward_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_computing_the_cache_shows_progress_unless_told_not_to(tmp_path, capsys):
    decoded, transform, teacher = decoded_images(), train_transform("pad"), tiny_vit(1)
    cache_teacher_views(teacher, decoded, transform, num_views=2, top_k=3, batch_size=8, cache_dir=tmp_path / "a")
    assert "Teacher on 2 views" in capsys.readouterr().err
    cache_teacher_views(teacher, decoded, transform, num_views=2, top_k=3, batch_size=8, cache_dir=tmp_path / "b",
                        progress=False)  # fmt: skip
    assert "Teacher on" not in capsys.readouterr().err


BF16_AUTOCAST = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)


def test_the_cache_is_reused_and_recomputed_when_its_inputs_change(tmp_path):
    decoded, transform, teacher = decoded_images(), train_transform("pad"), tiny_vit(1)
    calls = count_forward_calls(teacher)
    settings = {"num_views": 2, "top_k": 3, "batch_size": 8, "cache_dir": tmp_path}
    first = cache_teacher_views(teacher, decoded, transform, **settings)
    files = lambda: sorted((tmp_path / "teacher_views").glob("*.safetensors"))  # noqa: E731
    assert len(files()) == 1 and len(calls) == 2 * 2  # 2 batches x 2 views

    calls.clear()
    again = cache_teacher_views(teacher, decoded, transform, **settings)
    assert calls == []  # read from the file
    for name in ("row_index", "boxes", "flips", "top_logits", "top_indices", "tail_logits"):
        assert torch.equal(getattr(again, name), getattr(first, name)), name

    other_weights = tiny_vit(1)
    with torch.no_grad():
        other_weights.classifier.bias[0] += 1
    other_pixels = decoded_images()
    other_pixels.images[3, 0, 0, 0] ^= 1
    changes = [
        (teacher, decoded, transform, {"num_views": 3}),
        (teacher, decoded, transform, {"top_k": 5}),
        (other_weights, decoded, transform, {}),
        (teacher, other_pixels, transform, {}),
        (teacher, decoded, train_transform("pad", horizontal_flip=False), {}),
        (teacher, decoded, train_transform("random_resized"), {}),
        # The same weights run under bf16 autocast give other logits.
        (Teacher(teacher).place("cpu", BF16_AUTOCAST), decoded, transform, {}),
    ]
    for number, (changed_teacher, changed_decoded, changed_transform, changed_settings) in enumerate(changes, 2):
        computed = count_forward_calls(getattr(changed_teacher, "model", changed_teacher))
        cache_teacher_views(changed_teacher, changed_decoded, changed_transform, **{**settings, **changed_settings})
        assert len(files()) == number and computed, changed_settings
    assert teacher_views_cache_path("key", tmp_path).parent == tmp_path / "teacher_views"


def test_each_row_replays_every_view_once_in_any_k_epochs():
    decoded = decoded_images(rows=40)
    cache = cache_like(decoded, num_views=4)
    dataset, same_seed = TeacherViewDataset(decoded, cache, seed=3), TeacherViewDataset(decoded, cache, seed=3)
    positions = torch.arange(40)
    by_epoch = torch.stack([dataset.views(positions, epoch) for epoch in range(2, 6)])
    assert all(sorted(column.tolist()) == [0, 1, 2, 3] for column in by_epoch.T)
    assert torch.equal(by_epoch, torch.stack([same_seed.views(positions, epoch) for epoch in range(2, 6)]))
    assert len(set(by_epoch[0].tolist())) > 1  # rows replay different views in one epoch
    # The callback sets the epoch from the Trainer's state, a resumed run's (mid-epoch) included.
    callback = TeacherViewEpochCallback(dataset)
    for state_epoch, epoch in ((0.0, 0), (2.0, 2), (1.5, 1)):
        callback.on_epoch_begin(None, types.SimpleNamespace(epoch=state_epoch), None)
        assert dataset.epoch == epoch
    with pytest.raises(ValueError, match="compute the cache on this split"):
        TeacherViewDataset(decoded_images(rows=39), cache)


def cache_like(decoded: DecodedImages, num_views: int):
    """A cache of the right shape without a teacher, for tests of the view choice."""
    rows = len(decoded)
    return TeacherViewCache(
        row_index=decoded.row_index,
        boxes=torch.zeros(rows, num_views, 4, dtype=torch.int16),
        flips=torch.zeros(rows, num_views, dtype=torch.bool),
        top_logits=torch.zeros(rows, num_views, 2).half(),
        top_indices=torch.zeros(rows, num_views, 2, dtype=torch.int16),
        tail_logits=torch.zeros(rows, num_views).half(),
        num_labels=NUM_LABELS,
    )


@pytest.mark.slow
def test_training_replays_a_new_view_of_every_row_each_epoch(tmp_path):
    decoded, transform = decoded_images(), train_transform("random_resized")
    cache = cache_teacher_views(tiny_vit(1), decoded, transform, num_views=3, top_k=10, cache_dir=tmp_path)
    dataset = TeacherViewDataset(decoded, cache, seed=3)
    collator = transform.with_replayed_views()
    seen = []

    def recording_collator(batch):
        seen.append((batch[SAMPLE_INDICES_KEY].clone(), batch[VIEW_BOXES_KEY].clone()))
        return collator(batch)

    args = DistillationConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=12, num_train_epochs=3,
                              report_to="none", save_strategy="no", use_cpu=True, offline_teacher=True,
                              remove_unused_columns=False, dataloader_num_workers=0)  # fmt: skip
    student = tiny_vit(0)
    before = [parameter.clone() for parameter in student.parameters()]
    callbacks = [TeacherViewEpochCallback(dataset)]
    trainer = DistillationTrainer(model=student.train(), teacher=None, args=args, train_dataset=dataset,
                                  data_collator=recording_collator, callbacks=callbacks)  # fmt: skip
    trainer.train()
    assert len(seen) == 3
    for epoch, (positions, boxes) in enumerate(seen):
        expected = cache.boxes[positions, dataset.views(positions, epoch)].float()
        assert torch.equal(boxes, expected), epoch
    # Every row saw its three cached views, one per epoch.
    for position in range(12):
        replayed = {tuple(boxes[(positions == position).nonzero()[0, 0]].tolist()) for positions, boxes in seen}
        assert replayed == {tuple(box) for box in cache.boxes[position].float().tolist()}
    assert any(not torch.equal(after, initial) for after, initial in zip(student.parameters(), before))


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step == self.step


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_replays_the_views_of_the_uninterrupted_run(tmp_path):
    decoded, transform = decoded_images(), train_transform("pad")
    cache = cache_teacher_views(tiny_vit(1), decoded, transform, num_views=3, top_k=3, cache_dir=tmp_path)

    def run(output_dir: Path, stop_at: int | None = None, resume: bool = False) -> list[tuple[torch.Tensor, ...]]:
        dataset = TeacherViewDataset(decoded, cache, seed=3)  # a new process: epoch 0 until told
        collator, seen = transform.with_replayed_views(), []

        def recording_collator(batch):
            seen.append((batch[SAMPLE_INDICES_KEY].clone(), batch[VIEW_BOXES_KEY].clone()))
            return collator(batch)

        callbacks = [TeacherViewEpochCallback(dataset)] + ([StopAt(stop_at)] if stop_at else [])
        args = DistillationConfig(output_dir=str(output_dir), per_device_train_batch_size=6, num_train_epochs=3,
                                  report_to="none", save_strategy="steps", save_steps=3, use_cpu=True, seed=5,
                                  offline_teacher=True, remove_unused_columns=False)  # fmt: skip
        trainer = DistillationTrainer(model=tiny_vit(0).train(), teacher=None, args=args, train_dataset=dataset,
                                      data_collator=recording_collator, callbacks=callbacks)  # fmt: skip
        trainer.train(resume_from_checkpoint=True if resume else None)
        return seen

    uninterrupted = run(tmp_path / "full")
    assert len(uninterrupted) == 6  # 2 steps per epoch, 3 epochs
    # Stopped halfway through epoch 1 (checkpoint-3; the dataloader had fetched the next batch already).
    assert len(run(tmp_path / "cut", stop_at=3)) >= 3
    resumed = run(tmp_path / "cut", resume=True)
    assert len(resumed) == 3
    for (positions, boxes), (expected_positions, expected_boxes) in zip(resumed, uninterrupted[3:]):
        assert torch.equal(positions, expected_positions) and torch.equal(boxes, expected_boxes)


def test_mixing_and_batches_without_views_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--mixup_alpha 0 --cutmix_alpha 0"):
        train_transform("pad", replay_views=True, num_labels=NUM_LABELS, mixup_alpha=0.2)
    mixing = train_transform("pad", num_labels=NUM_LABELS, cutmix_alpha=1.0)
    with pytest.raises(ValueError, match="mixing blends two images"):
        mixing.with_replayed_views()
    with pytest.raises(ValueError, match="mixing blends two images"):
        cache_teacher_views(tiny_vit(1), decoded_images(), mixing, num_views=2, top_k=3, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="evaluation transform"):
        DeviceImageTransform(16, train=False, mean=MEAN, std=STD, replay_views=True)
    batch = {"pixel_values": decoded_images().images[:2], "labels": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match="no 'view_boxes'"):
        train_transform("pad").with_replayed_views()(dict(batch))
    views = {VIEW_BOXES_KEY: torch.zeros(2, 4), VIEW_FLIPS_KEY: torch.zeros(2, dtype=torch.bool)}
    with pytest.raises(ValueError, match="replay_views=True to apply them"):
        train_transform("pad")({**batch, **views})


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    id2label = dict(enumerate(CIFAR_NAMES))
    config = VisionTransformerConfig(image_size=48, patch_size=12, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, id2label=id2label,
                                     label2id={name: index for index, name in id2label.items()})  # fmt: skip
    VisionTransformerForImageClassification(config).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def recipe_arguments(teacher_dir: Path, output_dir: Path) -> list[str]:
    return [
        "--teacher_model_name_or_path", str(teacher_dir), "--output_dir", str(output_dir),
        "--config_overrides", json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]}),
        "--max_train_samples", "32", "--max_eval_samples", "16", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "16", "--report_to", "none", "--offline_teacher",
        "--attention_loss_weight", "0", "--logging_steps", "1",
    ]  # fmt: skip


@pytest.mark.slow
def test_distill_recipe_replays_cached_views(tmp_path, teacher_dir, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    arguments = recipe_arguments(teacher_dir, tmp_path / "views")
    summary = load_example("distill").main(arguments + [
        "--offline_teacher_views", "2", "--offline_teacher_top_k", "3", "--input_pipeline", "tensors",
    ])  # fmt: skip
    teacher_row, student_row = summary["models"][:2]
    assert "test_accuracy" in student_row and "test_agreement" in student_row and "test_accuracy" in teacher_row
    history = json.loads((tmp_path / "views" / "trainer_state.json").read_text())["log_history"]
    assert sum("loss_soft" in entry for entry in history) == 4 and all(
        math.isfinite(entry["loss_soft"]) for entry in history if "loss_soft" in entry
    )
    # The views of the training split in the cache, the evaluation splits' logits as for --offline_teacher.
    (cache_file,) = (tmp_path / "hf_cache" / "hf_vision_distill" / "teacher_views").glob("*.safetensors")
    cache = TeacherViewCache.load(cache_file)
    assert len(cache) == 32 and cache.num_views == 2 and cache.top_k == 3
    assert not (tmp_path / "views" / "_teacher_cache" / "train").exists()
    assert (tmp_path / "views" / "_teacher_cache" / "test").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("views", ["0", "2"])
def test_distill_recipe_caches_the_teacher_under_the_runs_autocast(tmp_path, teacher_dir, monkeypatch, views):
    # A --bf16 run's cached teacher computes as its live teacher would: under bf16 autocast (it ran in float32).
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    recipe, seen = load_example("distill"), []

    def recording(cache_function):
        def cache(teacher, *args, **kwargs):
            teacher.model.register_forward_hook(
                lambda *_: seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
            )
            return cache_function(teacher, *args, **kwargs)

        return cache

    for name in ("cache_teacher_logits", "cache_teacher_views"):
        monkeypatch.setattr(recipe, name, recording(getattr(recipe, name)))
    arguments = recipe_arguments(teacher_dir, tmp_path / "bf16") + ["--bf16", "--use_cpu", "--num_train_epochs", "1"]
    views_arguments = (["--offline_teacher_views", views, "--input_pipeline", "tensors"] if views != "0"
                       else ["--crop", "none", "--horizontal_flip", "false"])  # fmt: skip
    recipe.main(arguments + views_arguments)
    assert seen and all(dtype == torch.bfloat16 for dtype in seen), seen


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--offline_teacher_views", "2", "--input_pipeline", "workers"], "pass --input_pipeline tensors"),
        (["--offline_teacher_views", "2", "--mixup_alpha", "0.2"], "--mixup_alpha 0 --cutmix_alpha 0"),
        (["--offline_teacher_top_k", "3"], "pass --offline_teacher_views K with it"),
        (["--offline_teacher_views", "-1"], "a number of views >= 1"),
    ],
)
def test_distill_recipe_refuses_views_it_cannot_replay(tmp_path, teacher_dir, extra, message):
    with pytest.raises(ValueError, match=message):
        load_example("distill").main(recipe_arguments(teacher_dir, tmp_path / "refused") + extra)


def test_distill_recipe_needs_the_offline_teacher_for_views(tmp_path, teacher_dir):
    arguments = [argument for argument in recipe_arguments(teacher_dir, tmp_path / "live")
                 if argument != "--offline_teacher"]  # fmt: skip
    with pytest.raises(ValueError, match="pass --offline_teacher with it"):
        load_example("distill").main(arguments + ["--offline_teacher_views", "2"])
