"""The offline teacher: logits cached once per source row, then distillation without a live teacher."""

import contextlib
import types

import datasets
import numpy as np
import pytest
import torch
from conftest import load_example
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification
from hf_vision_distill.data import (
    ImageClassificationCollator,
    build_transforms,
    load_image_classification_dataset,
    with_image_transform,
)
from hf_vision_distill.distillation import (
    DistillationConfig,
    DistillationTrainer,
    Teacher,
    cache_teacher_logits,
    teacher_outputs_by_row,
)
from hf_vision_distill.models import InputSpecification
from hf_vision_distill.recipes import DataArguments


@pytest.fixture(scope="module")
def data(cifar10_sample_path):
    return load_image_classification_dataset(str(cifar10_sample_path), max_train_samples=24, max_eval_samples=8)


def tiny_vit(seed: int, data) -> VisionTransformerForImageClassification:
    torch.manual_seed(seed)
    config = VisionTransformerConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, id2label=data.id2label,
                                     label2id=data.label2id)  # fmt: skip
    return VisionTransformerForImageClassification(config).eval()


def test_cache_matches_the_live_teacher_row_by_row(data):
    teacher = tiny_vit(1, data)
    transform = build_transforms(16, train=False)
    cache = cache_teacher_logits(teacher, data.dataset["train"], transform, batch_size=5)
    assert cache.column_names == ["row_index", "teacher_logits"] and len(cache) == 24
    assert cache["row_index"] == data.dataset["train"]["row_index"]  # keyed by source row, not position
    prepared = with_image_transform(data.dataset["train"], transform)
    with torch.no_grad():
        live = torch.cat([teacher(batch["pixel_values"]).logits for batch in
                          DataLoader(prepared, batch_size=7, collate_fn=ImageClassificationCollator())])  # fmt: skip
    torch.testing.assert_close(torch.tensor(cache["teacher_logits"]), live, atol=1e-5, rtol=1e-5)
    # Round trip through disk, as a datasets dataset.
    assert isinstance(cache, datasets.Dataset)


def test_random_transforms_are_refused(data):
    with pytest.raises(ValueError, match="the transform is random"):
        cache_teacher_logits(tiny_vit(1, data), data.dataset["train"], build_transforms(16, train=True))
    # A random step that rarely fires is refused by its type, even when a few passes happen to agree.
    rarely_random = v2.Compose([*build_transforms(16, train=False).transforms, v2.RandomErasing(p=0.001)])
    with pytest.raises(ValueError, match="the transform is random"):
        cache_teacher_logits(tiny_vit(1, data), data.dataset["train"], rarely_random)


def test_batches_carry_the_cached_logits_and_missing_rows_fail(data):
    transform = build_transforms(16, train=False)
    cache = cache_teacher_logits(tiny_vit(1, data), data.dataset["train"], transform)
    prepared = with_image_transform(data.dataset["train"], transform, extra_columns=teacher_outputs_by_row(cache))
    batch = ImageClassificationCollator()([prepared[index] for index in range(4)])
    assert batch["teacher_logits"].shape == (4, 10)
    torch.testing.assert_close(batch["teacher_logits"], torch.tensor(cache["teacher_logits"][:4]))
    # The validation rows were never cached.
    validation = with_image_transform(data.dataset["validation"], transform,
                                      extra_columns=teacher_outputs_by_row(cache))  # fmt: skip
    with pytest.raises(ValueError, match="no precomputed 'teacher_logits' for rows"):
        validation[0]
    with pytest.raises(ValueError, match="turn mixup/cutmix off"):
        ImageClassificationCollator(num_labels=10, mixup_alpha=0.2)([prepared[0], prepared[1]])


@pytest.mark.slow
def test_training_from_the_cache_equals_training_with_the_live_teacher(data, tmp_path):
    transform = build_transforms(16, train=False)
    teacher = tiny_vit(1, data)
    cache = cache_teacher_logits(teacher, data.dataset["train"], transform)

    def one_update(offline: bool) -> torch.nn.Module:
        student = tiny_vit(0, data).train()
        args = DistillationConfig(output_dir=str(tmp_path / str(offline)), per_device_train_batch_size=8, max_steps=2,
                                  optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
                                  report_to="none", save_strategy="no", use_cpu=True, seed=3, hard_loss_weight=0.3,
                                  offline_teacher=offline)  # fmt: skip
        extra_columns = teacher_outputs_by_row(cache) if offline else None
        train = with_image_transform(data.dataset["train"], transform, extra_columns=extra_columns)
        DistillationTrainer(model=student, teacher=None if offline else teacher, args=args, train_dataset=train,
                            data_collator=ImageClassificationCollator()).train()  # fmt: skip
        return student

    live, offline = one_update(False), one_update(True)
    for (name, parameter), expected in zip(offline.named_parameters(), live.parameters()):
        torch.testing.assert_close(parameter, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_offline_teacher_is_logits_only(tmp_path):
    with pytest.raises(ValueError, match="caches logits only"):
        DistillationConfig(output_dir=str(tmp_path), offline_teacher=True, attention_loss_weight=0.5)


class NeverRun(torch.nn.Module):
    """A teacher that fails if run: the processes that do not save must read the cache, not compute it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("a process that does not save computed the teacher's logits")


def test_the_recipe_caches_once_and_the_other_processes_read_it(data, tmp_path):
    recipe = load_example("distill")
    entered = []

    @contextlib.contextmanager
    def main_process_first(local: bool = True, desc: str = "work"):
        entered.append(local)
        yield

    def arguments(should_save: bool) -> types.SimpleNamespace:
        return types.SimpleNamespace(should_save=should_save, save_on_each_node=False, per_device_eval_batch_size=8,
                                     device=torch.device("cpu"), main_process_first=main_process_first)  # fmt: skip

    student = types.SimpleNamespace(input_specification=InputSpecification(16, (0.5,) * 3, (0.5,) * 3))
    data_args = DataArguments(crop="none", horizontal_flip=False)
    saving = recipe.cache_teacher(Teacher(tiny_vit(1, data)), data, data_args, student, arguments(should_save=True),
                                  tmp_path)  # fmt: skip
    reading = recipe.cache_teacher(Teacher(NeverRun()), data, data_args, student, arguments(should_save=False),
                                   tmp_path)  # fmt: skip
    assert entered == [False, False]  # both inside main_process_first: the saving process first, globally
    assert set(reading) == set(saving) == set(data.dataset)
    for split in saving:
        np.testing.assert_array_equal(reading[split]["teacher_logits"], saving[split]["teacher_logits"])
