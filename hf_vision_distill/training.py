"""Trainer pieces shared by the recipes: one classification loss for every model, evaluation without train-time
batch mixing, and safe resumption."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch.nn.functional as F
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction

from .profiling import training_flops_per_image

logger = logging.getLogger(__name__)


def learning_rate_scales(model: nn.Module) -> dict[nn.Parameter, float]:
    """The parameters that models inside `model` (the model itself, or a student inside a training wrapper) declare
    to train at a multiple of the learning rate (`learning_rate_scales()`: parameter name -> multiple)."""
    scales = {}
    for module in model.modules():
        declared = getattr(module, "learning_rate_scales", None)
        if callable(declared):
            parameters = dict(module.named_parameters())
            scales.update({parameters[name]: float(scale) for name, scale in declared().items()})
    return scales


def apply_learning_rate_scales(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """`optimizer` with each group split by the multiples the model declares (`learning_rate_scales`), each part at
    its group's learning rate times its multiple (unchanged when nothing is declared). Called before the first step
    and before the scheduler reads the learning rates."""
    scales = learning_rate_scales(model)
    if not scales or optimizer.state:
        return optimizer
    groups = []
    for group in optimizer.param_groups:
        by_scale = defaultdict(list)
        for parameter in group["params"]:
            by_scale[scales.get(parameter, 1.0)].append(parameter)
        groups += [{**group, "params": params, "lr": group["lr"] * scale} for scale, params in by_scale.items()]
    # Regrouped in place: rebuilding the optimizer from its defaults fails for classes whose defaults hold settings
    # their constructor does not take (AdamW's decoupled_weight_decay).
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
    return optimizer


class ImageClassificationTrainer(Trainer):
    """A `Trainer` for image classifiers of any origin (ours, transformers', timm through `TimmWrapper`).

    - The loss is cross-entropy computed here from the logits, against class indices (with `label_smoothing_factor`
      in training) or soft targets `(batch, num_labels)` from mixup/cutmix. Labels never reach the model:
      transformers' built-in loss reads float labels as multi-label and switches `config.problem_type` for good.
    - The loss is a per-batch mean, and `training_step` divides it by the accumulation steps
      (`loss_is_scaled_for_ga = False`), so accumulating k batches of n gives the update of one batch of k * n.
    - Evaluation and test batches are collated with `eval_data_collator`: the Trainer has one `data_collator` for
      every dataloader, but mixup, cutmix and label smoothing belong to training batches only.
    - A collator with an `on_device` method finishes its batches on the training device (uint8 images from the
      workers normalised and mixed there): training and prediction steps call it on each batch.
    - Subclasses name submodules that stay in eval mode while the model trains (`modules_kept_in_eval`: a frozen
      backbone, norms that must keep their statistics); the Trainer puts every module in train mode before each step.

    Args:
        eval_data_collator (`Callable`, *optional*):
            Collator for evaluation and prediction; defaults to `data_collator`.
        args, kwargs:
            As for `transformers.Trainer`.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, eval_data_collator: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        # A pre-forward hook: training_step calls model.train() just before the forward pass, whatever compute_loss
        # a subclass writes; DDP's wrapper calls this module, so the hook runs there too.
        self.model.register_forward_pre_hook(self._keep_modules_in_eval)

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        return super().training_step(model, on_device(self.data_collator, inputs), num_items_in_batch)

    def prediction_step(self, model: nn.Module, inputs: dict[str, torch.Tensor], *args, **kwargs):
        return super().prediction_step(model, on_device(self.evaluation_collator, inputs), *args, **kwargs)

    @property
    def evaluation_collator(self) -> Callable:
        return self.eval_data_collator if self.eval_data_collator is not None else self.data_collator

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            super().create_optimizer(model)
            self.optimizer = apply_learning_rate_scales(self.optimizer, self.model if model is None else model)
        return self.optimizer

    def modules_kept_in_eval(self) -> list[nn.Module]:
        """Submodules of the model to keep in eval mode during training; none here."""
        return []

    def _keep_modules_in_eval(self, model: nn.Module, inputs: tuple) -> None:
        if model.training:
            for module in self.modules_kept_in_eval():
                module.eval()

    @torch.no_grad()
    def evaluate_forward(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        eval_dataset: Dataset,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluates a function from a batch's pixels to logits (a frozen teacher, `distillation.Teacher`, which runs
        under its own placement and the run's autocast) on this trainer's evaluation batches, never through the
        Trainer's own model preparation, which would cast it for full fp16/bf16 evaluation and wrap its forward for
        good.

        Batches come from `get_eval_dataloader` (the evaluation collator, sharded across processes) and the logits
        are gathered from all processes. Returns the loss and `compute_metrics`' values, prefixed like `evaluate`'s.
        """
        logits, labels = [], []
        for batch in self.get_eval_dataloader(eval_dataset):
            batch = on_device(self.evaluation_collator, batch)
            batch_logits = forward(batch["pixel_values"]).float()
            batch_labels = batch["labels"].to(batch_logits.device)
            batch_logits, batch_labels = self.accelerator.gather_for_metrics((batch_logits, batch_labels))
            logits.append(batch_logits)
            labels.append(batch_labels)
        logits, labels = torch.cat(logits).float().cpu(), torch.cat(labels).cpu()
        metrics = {"loss": classification_loss(logits, labels).item()}
        if self.compute_metrics is not None:
            metrics.update(self.compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy())))
        return {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}

    def evaluate_last_epoch(self, eval_dataset: Dataset, metric_key_prefix: str = "eval") -> dict[str, float] | None:
        """The last epoch's model evaluated on `eval_dataset`, when the run kept another one (`load_best_model_at_end`
        restored an earlier, best-validation checkpoint): the figure a best-checkpoint number is read beside. Keys
        are `last_epoch_<metric_key_prefix>_*`. `None` when the kept model is the last epoch's (nothing to add) or
        the last checkpoint holds no plain `model.safetensors` (sharded, DeepSpeed, FSDP: said in the log).

        The last checkpoint's weights are loaded into the model for the evaluation, then the kept weights put back.
        """
        best, last = self.state.best_model_checkpoint, last_complete_checkpoint(self.args.output_dir)
        if not self.args.load_best_model_at_end or best is None or last is None:
            return None
        if os.path.realpath(best) == os.path.realpath(last):
            return None
        weights = os.path.join(last, "model.safetensors")
        if not os.path.isfile(weights):
            logger.info("No last-epoch figures: %s holds no model.safetensors to read.", last)
            return None
        model = self.accelerator.unwrap_model(self.model)
        kept = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        device = next(model.parameters()).device
        # Modules a checkpoint's model file leaves out (a distillation's adapters) keep their values, as they do when
        # the Trainer loads the best checkpoint from the same kind of file.
        _, unexpected = model.load_state_dict(load_file(weights, device=str(device)), strict=False)
        try:
            if unexpected:
                raise ValueError(f"{weights} does not fit the model: weights it lacks ({unexpected[:5]}).")
            return self.evaluate(eval_dataset, metric_key_prefix=f"last_epoch_{metric_key_prefix}")
        finally:
            model.load_state_dict(kept)

    def mark_batch_dynamic(self, pixel_values: torch.Tensor | None) -> None:
        """Under `--torch_compile`, compiles the batch dimension as dynamic from the first step: otherwise the last,
        smaller batch of an epoch (and evaluation's batch size) recompiles the model. Call before the model."""
        if self.args.torch_compile and isinstance(pixel_values, torch.Tensor):
            torch._dynamo.maybe_mark_dynamic(pixel_values, 0)

    def floating_point_ops(self, inputs: dict[str, torch.Tensor | Any]) -> int:
        """A training step's FLOPs (`total_flos`): the model's forward and backward FLOPs per image
        (`profiling.training_flops_per_image`: about 3 forward passes when everything trains, about 1 for a linear
        probe, whose backward pass reaches only the head), times the batch. transformers' estimate, 6 x parameters x
        "tokens", counts every pixel value as a token (off by orders of magnitude for images). Counted once per image
        size and set of trained parameters (gradual unfreezing changes it), by torch's FlopCounterMode on one image."""
        pixel_values = inputs.get("pixel_values")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
            size, batch_size = tuple(pixel_values.shape[-2:]), pixel_values.shape[0]
        elif isinstance(inputs.get("labels"), torch.Tensor) and hasattr(self.data_collator, "image_size"):
            # Images that become pixels only on the device (decode_on_device): the collator's output size.
            size, batch_size = tuple(self.data_collator.image_size), inputs["labels"].shape[0]
        else:
            return 0
        model = self.accelerator.unwrap_model(self.model)
        key = (size, tuple(parameter.requires_grad for parameter in model.parameters()))
        counted = self.__dict__.setdefault("_training_flops_per_image", {})
        if key not in counted:
            counted[key] = self._count_training_flops(model, size)
        return counted[key] * batch_size

    def _count_training_flops(self, model: nn.Module, size: tuple[int, int]) -> int:
        # On the model's device, in its dtype: the batch itself may still be uint8 on the host (the worker
        # pipeline's), normalised and moved only later.
        try:
            return training_flops_per_image(model, size)
        except Exception as err:  # a sharded or otherwise unusual model: the FLOP count is a statistic, not needed
            logger.warning("Could not count the model's FLOPs (%r); total_flos stays 0.", err)
            return 0

    # The run's own card (`hub.build_model_card`), set by `recipes.write_model_card`; `None`: the Trainer's draft.
    model_card: ModelCard | None = None

    def create_model_card(self, *args, **kwargs) -> None:
        """Writes `model_card` into output_dir/README.md when the run has one, else the Trainer's generic card: so
        `push_to_hub` (and `save_model` with `push_to_hub` set) publishes the recipes' card, not the draft that would
        replace it."""
        if self.model_card is None:
            super().create_model_card(*args, **kwargs)
        elif self.args.should_save:
            self.model_card.save(Path(self.args.output_dir) / "README.md")

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        labels = inputs.get("labels")
        # The model gets the pixels; the labels and whatever else a batch carries (a subclass's columns) are for the
        # loss.
        pixel_values = inputs["pixel_values"]
        self.mark_batch_dynamic(pixel_values)
        outputs = model(pixel_values=pixel_values)
        if labels is None:
            raise ValueError("ImageClassificationTrainer needs 'labels' in every training batch.")
        # Smoothing shapes training only; the evaluation loss is against the true labels.
        label_smoothing = self.args.label_smoothing_factor if model.training else 0.0
        loss = classification_loss(outputs.logits, labels, label_smoothing=label_smoothing)
        return (loss, outputs) if return_outputs else loss

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
        # With persistent workers the Trainer keeps one loader under the key "eval" for every dataset passed as an
        # object, and would serve the validation loader for evaluate(test_dataset): an explicit dataset gets its own.
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            getattr(self, "_eval_dataloaders", {}).pop("eval", None)
        with self._collating_for_evaluation():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        with self._collating_for_evaluation():
            return super().get_test_dataloader(test_dataset)


class LoggedTermsMixin:
    """For Trainers that log each loss term beside the total (TRL's pattern): `compute_loss` appends detached values
    to `self.logged_terms[mode][name]` (mode "train" or "eval"); `log` adds their averages since the last log,
    reduced across processes, with evaluation's metric prefix. Put it before the Trainer class in the bases."""

    def _reset_logged_terms(self) -> None:
        self.logged_terms: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list),
                                                                        "eval": defaultdict(list)}  # fmt: skip

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        self.logged_terms["eval"].clear()
        self._metric_key_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The model is in eval mode exactly while evaluate() logs its metrics.
        mode = "train" if self.model.training else "eval"
        prefix = f"{getattr(self, '_metric_key_prefix', 'eval')}_" if mode == "eval" else ""
        names = sorted(name for name, values in self.logged_terms[mode].items() if values)
        if names:
            # One collective for all values: every process logs at the same steps with the same names.
            means = torch.stack([torch.stack(self.logged_terms[mode][name]).float().mean().to(self.args.device)
                                 for name in names])  # fmt: skip
            means = self.accelerator.reduce(means, reduction="mean").tolist()
            logs.update({f"{prefix}{name}": value for name, value in zip(names, means)})
        self.logged_terms[mode].clear()
        super().log(logs, start_time)


def on_device(collator: Callable | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collator's device step for a batch already on the device (`ImageClassificationCollator.on_device`), or the
    batch itself for collators that finish in the workers."""
    finish = getattr(collator, "on_device", None)
    return finish(batch) if finish is not None else batch


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of `logits` `(batch, num_labels)` against class indices `(batch,)` (smoothed by
    `label_smoothing`) or soft targets `(batch, num_labels)` (used as given: smooth them before mixing)."""
    if labels.ndim == logits.ndim and labels.is_floating_point():
        return F.cross_entropy(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long(), label_smoothing=label_smoothing)


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """What makes a checkpoint folder unusable for resuming, or `None` when every file is whole.

    A run killed while saving, or a full disk, leaves files cut short: `trainer_state.json` (written last) missing,
    empty or truncated; a `.safetensors` file shorter than its header says; a `torch.save` archive (`optimizer.pt`,
    `scheduler.pt`, `rng_state*.pth`, `*.bin`) without its zip directory, which sits at the end. Only headers and
    directories are read, not the tensors.
    """
    folder = Path(checkpoint)
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"it has no {TRAINER_STATE_NAME} (written last: the save was cut off)"
    try:
        if not isinstance(json.loads(state.read_text(encoding="utf-8")).get("global_step"), int):
            return f"its {TRAINER_STATE_NAME} has no global_step"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"its {TRAINER_STATE_NAME} is empty or cut off"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return "it holds no model weights"
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            return f"{path.name} {problem}"
    for pattern in ("*.pt", "*.pth", "*.bin"):
        for path in sorted(folder.glob(pattern)):
            if not zipfile.is_zipfile(path):
                return f"{path.name} is not a whole torch archive (cut off?)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return "is empty or cut off"
        header_size = struct.unpack("<Q", prefix)[0]
        if header_size > size - 8:
            return "is cut off inside its header"
        try:
            header = json.loads(file.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "has an unreadable header"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"is cut off ({size} of {expected} bytes)"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir` whose files are whole (`checkpoint_problem`), or `None`.

    A run killed while saving leaves a folder without `trainer_state.json` (which the Trainer writes last), and a full
    disk can leave any file cut short; resuming from either would fail or restart with a half-written model. Such
    folders are skipped, with a warning naming the folder and what is wrong, for the previous complete one.
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
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Not resuming from %s: %s. Looking for the previous complete checkpoint.", path, problem)
    return None


__all__ = [
    "ImageClassificationTrainer",
    "checkpoint_problem",
    "classification_loss",
    "last_complete_checkpoint",
    "on_device",
]
