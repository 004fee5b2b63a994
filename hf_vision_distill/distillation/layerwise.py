"""Block-by-block distillation: each student block learns to reproduce its teacher block from the teacher's input.

Stage 1 of turning a CNN into a hybrid (`hybrid_from_resnet`): the teacher (the CNN in our all-conv layout,
`resnet_as_hybrid`) runs once per batch and hands every block its input and target; the student's trained blocks run
on those inputs (teacher forcing, `block_inputs`), independently, so all of them train in one pass over the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput

from ..training import ImageClassificationTrainer, LoggedTermsMixin
from .teacher import Teacher


def block_names(model: PreTrainedModel) -> list[str]:
    """`stage{s}.block{b}` (1-based stages, as papers number ResNet stages) for each block of a hybrid ResNet."""
    return [
        f"stage{stage_index + 1}.block{block_index}"
        for stage_index, stage in enumerate(model.base_model.stages)
        for block_index in range(len(stage))
    ]


def transformer_blocks(model: PreTrainedModel) -> list[int]:
    """Indices (in `model.base_model.blocks` order) of the TransformerConv blocks, as the model declares its block
    types (`block_types`)."""
    return [index for index, kind in enumerate(model.base_model.block_types()) if kind == "transformer"]


def relative_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||prediction - target||^2 / ||target||^2 over the batch (float32): an MSE that weighs blocks alike whatever
    the scale of their features."""
    target = target.float()
    return (prediction.float() - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def _check_same_layout(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    student_config, teacher_config = student.config, teacher.config
    for name in ("stem", "embedding_size", "hidden_sizes", "depths"):
        if getattr(student_config, name, None) != getattr(teacher_config, name, None):
            raise ValueError(
                f"student and teacher differ in {name} ({getattr(student_config, name, None)} vs "
                f"{getattr(teacher_config, name, None)}); layer-wise distillation pairs block i with block i. Build "
                "the student with hybrid_from_resnet(teacher) and the teacher with resnet_as_hybrid(cnn)."
            )


class LayerwiseDistillationTrainer(LoggedTermsMixin, ImageClassificationTrainer):
    """A `Trainer` for block-by-block distillation of a hybrid ResNet student from its CNN teacher.

    Only the trained blocks (by default the TransformerConv blocks) have gradients; the stem, the head and the
    convolutional stages stay as converted. The BatchNorms the trained blocks share with the teacher's (after each
    attention) normalise with their running statistics and learn only their scale and shift, as the teacher's blocks
    run in eval mode; the feed-forward's norm trains as usual. Per batch the frozen teacher runs once with hidden
    states; each trained block gets the teacher's input to that block and is scored by `relative_squared_error`
    against the teacher block's output. The loss is the sum over blocks; each block's term is logged
    (`mse_stage3.block0`, ...) in training and evaluation. Evaluation also runs the student end to end, so
    `compute_metrics` sees its logits (accuracy of the hybrid as it stands).

    Args:
        model (`HybridResNetForImageClassification`):
            The student, e.g. from `hybrid_from_resnet`.
        teacher (`Teacher` or `HybridResNetForImageClassification`):
            The CNN in our layout (`resnet_as_hybrid`), with the same stem, widths and depths; a bare model becomes
            a float32 `Teacher`.
        args (`TrainingArguments`):
            As for any Trainer (no distillation fields are needed).
        blocks (`list[int]`, *optional*):
            Indices of the blocks to train (see `block_names`); defaults to the TransformerConv blocks.
        kwargs:
            As for [`ImageClassificationTrainer`].
    """

    def __init__(
        self,
        model: PreTrainedModel,
        teacher: Teacher | PreTrainedModel,
        args: TrainingArguments,
        blocks: Sequence[int] | None = None,
        **kwargs,
    ):
        teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
        _check_same_layout(model, teacher.model)
        self.blocks = list(transformer_blocks(model) if blocks is None else blocks)
        if not self.blocks:
            raise ValueError("no block to train: the student has no transformer blocks and none were named.")
        self.block_names = block_names(model)
        model.requires_grad_(False)
        for index in self.blocks:
            model.base_model.blocks[index].requires_grad_(True)
        # The teacher's blocks normalise with their running statistics; the student's copies of those norms must too,
        # or they learn to match the targets under batch statistics and miss them in eval mode. The feed-forward's
        # norm has no teacher counterpart: it trains as usual and collects its own statistics.
        self._batch_norms = [
            module for index in self.blocks for name, module in model.base_model.blocks[index].named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith("mlp.")
        ]  # fmt: skip
        super().__init__(model=model, args=args, **kwargs)
        self.teacher = teacher.place(self.args.device, self.accelerator.autocast)
        self._reset_logged_terms()

    def modules_kept_in_eval(self) -> list[nn.Module]:
        return self._batch_norms

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        pixel_values = inputs["pixel_values"]
        hidden_states = self.teacher(pixel_values, select=lambda outputs: outputs.hidden_states, hidden_states=True)
        block_inputs = [
            hidden_states[index] if index in self.blocks else None for index in range(len(self.block_names))
        ]
        for block_input in block_inputs:
            self.mark_batch_dynamic(block_input)
        outputs = model(block_inputs=block_inputs).block_outputs
        mode = "train" if model.training else "eval"
        losses = []
        for index in self.blocks:
            loss = relative_squared_error(outputs[index], hidden_states[index + 1])
            # Detached, averaged and reduced across processes at log time: no device sync per step.
            self.logged_terms[mode][f"mse_{self.block_names[index]}"].append(loss.detach())
            losses.append(loss)
        loss = torch.stack(losses).sum()
        if not return_outputs:
            return loss
        self.mark_batch_dynamic(pixel_values)
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits
        return loss, ImageClassifierOutput(logits=logits)


__all__ = [
    "LayerwiseDistillationTrainer",
    "block_names",
    "relative_squared_error",
    "transformer_blocks",
]
