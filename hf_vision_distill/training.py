"""Trainer pieces shared by the recipes: evaluation without train-time batch mixing, and safe resumption."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch.utils.data import DataLoader, Dataset
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class ImageClassificationTrainer(Trainer):
    """A `Trainer` that collates evaluation and test batches with `eval_data_collator`.

    The Trainer has one `data_collator` for every dataloader, but mixup, cutmix and label smoothing belong to training
    batches only: evaluating on mixed images or smoothed targets would misreport accuracy.

    Args:
        eval_data_collator (`Callable`, *optional*):
            Collator for evaluation and prediction; defaults to `data_collator`.
        args, kwargs:
            As for `transformers.Trainer`.
    """

    def __init__(self, *args, eval_data_collator: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    @contextmanager
    def _collating_for_evaluation(self) -> Iterator[None]:
        train_data_collator = self.data_collator
        if self.eval_data_collator is not None:
            self.data_collator = self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = train_data_collator

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        with self._collating_for_evaluation():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        with self._collating_for_evaluation():
            return super().get_test_dataloader(test_dataset)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir` that was written to the end, or `None`.

    The Trainer writes `trainer_state.json` last; a run killed while saving leaves a folder without it, and resuming
    from that folder would fail or restart with a half-written model. Such folders are skipped.
    """
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        if os.path.isfile(os.path.join(output_dir, name, TRAINER_STATE_NAME)):
            return os.path.join(output_dir, name)
    return None


__all__ = ["ImageClassificationTrainer", "last_complete_checkpoint"]
