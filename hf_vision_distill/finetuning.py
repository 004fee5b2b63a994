"""Fine-tuning strategies for pretrained classifiers: linear probe, the last n blocks, gradual unfreezing, full; with
layer-wise learning-rate decay and a separate head learning rate.

Every strategy works on the model's parameters in depth order: the stem (patch embedding, or a CNN's first
convolution), one group per block, then the head (the classifier and whatever follows the last block). The model says
what its groups are, in timm's `group_matcher` format: our models and timm's declare `group_matcher` (a timm model
inside transformers' `TimmWrapper` is asked directly); transformers' models declare none, so a small table below
stands in for theirs. timm's `group_parameters` turns a matcher into groups, so a final norm is merged into the last
block as timm does. Likewise the parameters exempt from weight decay come from the model's `no_weight_decay`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from timm.models import group_parameters
from torch import nn
from transformers import PreTrainedModel, TimmWrapperPreTrainedModel, TrainerCallback

from .training import ImageClassificationTrainer, apply_learning_rate_scales

logger = logging.getLogger(__name__)

STRATEGIES = ("linear_probe", "last_n", "gradual", "full")

# Transformers' vision models declare no `group_matcher`; these stand in for theirs (keyed by transformers'
# `model_type`, for foreign models only: ours and timm's declare their own). Anything unmatched is the head.
_TRANSFORMERS_VIT_MATCHER = {
    "stem": r"^\w+\.embeddings\.",
    # transformers 5 names the blocks `vit.layers.N` in memory (`vit.encoder.layer.N` in checkpoints)
    "blocks": [(r"^\w+\.(?:encoder\.)?layers?\.(\d+)\.", None), (r"^\w+\.layernorm\.", (99999,))],
}
_TRANSFORMERS_MATCHERS = {
    "vit": _TRANSFORMERS_VIT_MATCHER,
    "deit": _TRANSFORMERS_VIT_MATCHER,
    "resnet": {"stem": r"^resnet\.embedder\.", "blocks": r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\."},
}


@dataclass
class FineTuningArguments:
    strategy: str = field(
        default="full",
        metadata={
            "help": "linear_probe (only the head trains), last_n (the head and the last --num_unfrozen_blocks "
            "blocks), gradual (the head first, then one more block every --unfreeze_every_epochs), or full."
        },
    )
    num_unfrozen_blocks: int = field(default=2, metadata={"help": "Blocks that train with --strategy last_n."})
    unfreeze_every_epochs: float = field(
        default=1.0, metadata={"help": "--strategy gradual: epochs between two unfrozen blocks."}
    )
    layer_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay: block i of n (from the head down) trains at lr * decay^i, the "
            "stem at lr * decay^(n+1); 1.0 turns it off. Typical for fine-tuning ViTs: 0.65-0.75."
        },
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the head (default: --learning_rate)."}
    )
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout on the head's input, in training only."})

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is not one of {STRATEGIES}.")
        if self.num_unfrozen_blocks < 0:
            raise ValueError(f"num_unfrozen_blocks={self.num_unfrozen_blocks} must be >= 0.")
        if self.unfreeze_every_epochs <= 0:
            raise ValueError(f"unfreeze_every_epochs={self.unfreeze_every_epochs} must be > 0.")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay={self.layer_decay} must be in (0, 1].")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout={self.head_dropout} must be in [0, 1).")


def _declaring_module(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that declares the model's contract (`group_matcher`, `no_weight_decay`) and the prefix of its
    parameter names within `model`: the timm model inside transformers' `TimmWrapper`, else the model itself."""
    if isinstance(model, TimmWrapperPreTrainedModel):
        return model.timm_model, "timm_model."
    return model, ""


def group_matcher(model: nn.Module) -> tuple[nn.Module, str, dict]:
    """`(module, prefix, matcher)`: the model's own `group_matcher(coarse=False)` in timm's format, the module it
    applies to and the prefix of that module's parameter names within `model`."""
    module, prefix = _declaring_module(model)
    declared = getattr(module, "group_matcher", None)
    if callable(declared):
        return module, prefix, declared(coarse=False)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _TRANSFORMERS_MATCHERS:
        return model, "", _TRANSFORMERS_MATCHERS[model_type]
    raise ValueError(
        f"fine-tuning strategies need the blocks of {type(model).__name__} (model_type {model_type!r}), and it "
        "declares no group_matcher (timm's format: regexes over parameter names giving the stem and numbered blocks); "
        f"transformers models known without one: {sorted(_TRANSFORMERS_MATCHERS)}. Give the model a group_matcher, "
        "or use --strategy full with --layer_decay 1.0."
    )


def parameter_groups(model: nn.Module) -> list[list[str]]:
    """The model's parameter names in depth order: `[stem, block 1, ..., block n, head]` (the stem group is absent
    for models without one), from the model's `group_matcher`. Raises for models that declare none."""
    module, prefix, matcher = group_matcher(model)
    groups = group_parameters(module, matcher)
    ordered = [[prefix + name for name in groups[index]] for index in sorted(groups)]
    if len(ordered) < 2:
        raise ValueError(f"{type(model).__name__}: found no head after the blocks; cannot tell them apart.")
    return ordered


def block_groups(model: nn.Module) -> tuple[list[str], list[list[str]], list[str]]:
    """`(stem, blocks, head)` parameter names; `stem` is empty for models without one."""
    groups = parameter_groups(model)
    has_stem = "stem" in group_matcher(model)[2]
    stem = groups[0] if has_stem else []
    blocks = groups[1:-1] if has_stem else groups[:-1]
    return stem, blocks, groups[-1]


def no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters the model exempts from weight decay (its `no_weight_decay`, timm's: e.g. a ViT's
    [CLS] token and position embeddings); empty for models that declare none (transformers')."""
    module, prefix = _declaring_module(model)
    declared = getattr(module, "no_weight_decay", None)
    return {prefix + name for name in declared()} if callable(declared) else set()


def set_trainable_blocks(model: nn.Module, num_blocks: int | None) -> None:
    """The head and the last `num_blocks` blocks train (`None`: everything, stem included); the rest is frozen."""
    stem, blocks, head = block_groups(model)
    if num_blocks is None:
        trainable = {name for name, _ in model.named_parameters()}
    else:
        trainable = set(head)
        for group in blocks[len(blocks) - min(num_blocks, len(blocks)) :]:
            trainable.update(group)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return trainable, total


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules whose parameters are all frozen. Training keeps them in eval mode: a frozen block is
    a fixed feature extractor, so its batch-norm statistics must not drift and its dropout must not fire."""
    found, covered = [], set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in covered):
            continue
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            found.append(module)
            covered.add(name + ".")
    return found


def apply_strategy(model: nn.Module, args: FineTuningArguments) -> None:
    """Freezes what the strategy leaves frozen at the start of training (gradual: everything but the head)."""
    if args.strategy == "full":  # needs no knowledge of the blocks: works for any architecture
        model.requires_grad_(True)
    elif args.strategy == "last_n":
        set_trainable_blocks(model, args.num_unfrozen_blocks)
    else:  # linear_probe, and gradual's start
        set_trainable_blocks(model, 0)
    if args.head_dropout > 0:
        add_head_dropout(model, args.head_dropout)


def classifier_module(model: nn.Module) -> nn.Module:
    if hasattr(model, "get_output_embeddings") and isinstance(model.get_output_embeddings(), nn.Module):
        return model.get_output_embeddings()
    for name in ("classifier", "cls_classifier", "head", "fc"):  # cls_classifier: transformers' DeiT with teacher
        module = getattr(model, name, None) or getattr(getattr(model, "timm_model", None), name, None)
        if isinstance(module, nn.Module):
            return module
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return timm_model.get_classifier()
    raise ValueError(
        f"no classifier found on {type(model).__name__} (looked for classifier, cls_classifier, head, fc)."
    )


# The second head of DeiT-style models (ours and transformers' DeiT: `distillation_classifier`; timm: `head_dist`),
# which reads the distillation token as the classifier reads [CLS].
DISTILLATION_HEADS = ("distillation_classifier", "head_dist")


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The model's classifier and, on a DeiT-style model, its distillation head."""
    heads = [classifier_module(model)]
    for owner in (model, getattr(model, "timm_model", None)):
        heads += [head for name in DISTILLATION_HEADS if isinstance(head := getattr(owner, name, None), nn.Module)]
    return heads


def add_head_dropout(model: nn.Module, probability: float) -> None:
    """Dropout on each head's input in training mode, through forward pre-hooks: the saved model is unchanged (no new
    weights or names), so it loads anywhere as before."""

    def drop_inputs(module: nn.Module, inputs: tuple) -> tuple:
        if not module.training:
            return inputs
        return (nn.functional.dropout(inputs[0], probability, training=True), *inputs[1:])

    for head in classifier_modules(model):
        head.register_forward_pre_hook(drop_inputs)


def layer_decay_groups(
    model: nn.Module,
    learning_rate: float,
    layer_decay: float,
    head_learning_rate: float | None,
    decay_parameter_names: set[str],
) -> list[dict]:
    """Optimizer parameter groups with per-depth learning rates: the head at `head_learning_rate` (default
    `learning_rate`), block i of n counted from the head at `learning_rate * layer_decay ** i` (i = 1..n), the stem
    at `learning_rate * layer_decay ** (n + 1)`. Every parameter is included, frozen or not, so parameters that are
    unfrozen later (gradual unfreezing) train from then on. Each group says whether its parameters take weight decay
    (`"decay"`, from `decay_parameter_names`, e.g. the Trainer's `get_decay_parameter_names`)."""
    stem, blocks, head = block_groups(model)
    scaled = [(head, head_learning_rate if head_learning_rate is not None else learning_rate)]
    for depth, names in enumerate(reversed(blocks), start=1):
        scaled.append((names, learning_rate * layer_decay**depth))
    if stem:
        scaled.append((stem, learning_rate * layer_decay ** (len(blocks) + 1)))
    parameters = dict(model.named_parameters())
    groups = []
    for names, group_learning_rate in scaled:
        for with_decay in (True, False):
            selected = [parameters[name] for name in names if (name in decay_parameter_names) == with_decay]
            if selected:
                groups.append({"params": selected, "lr": group_learning_rate, "decay": with_decay})
    return groups


class GradualUnfreezing(TrainerCallback):
    """Unfreezes one more block (from the head down) every `every_epochs` epochs; the head trains from the start."""

    def __init__(self, model: nn.Module, every_epochs: float):
        self.model = model
        self.every_epochs = every_epochs
        self.num_blocks = len(block_groups(model)[1])
        self.unfrozen = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Epochs are counted from the run's start, so a resumed run freezes exactly as the uninterrupted one did.
        target = min(self.num_blocks, math.floor(round(state.epoch or 0.0, 6) / self.every_epochs))
        if target != self.unfrozen:
            set_trainable_blocks(self.model, target)
            self.unfrozen = target
            trainable, total = count_trainable(self.model)
            logger.info(
                "Epoch %.2f: %d of %d blocks unfrozen; %d of %d parameters train (%.1f%%).",
                state.epoch or 0.0, target, self.num_blocks, trainable, total, 100 * trainable / total,
            )  # fmt: skip


class FineTuningTrainer(ImageClassificationTrainer):
    """`ImageClassificationTrainer` with layer-wise learning rates and a head learning rate (`FineTuningArguments`),
    and an optimizer over every parameter so that gradual unfreezing can hand blocks to it mid-run."""

    def __init__(self, *args, finetuning_args: FineTuningArguments, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetuning_args = finetuning_args
        if finetuning_args.strategy == "gradual" and self.args.world_size > 1:
            raise ValueError(
                "--strategy gradual changes the trainable parameters mid-run, which DistributedDataParallel cannot "
                "follow (it registers the trainable ones once); train on one process, or use --strategy last_n."
            )

    def modules_kept_in_eval(self) -> list[nn.Module]:
        # The frozen blocks; recomputed only when the trainable set changes (gradual unfreezing).
        flags = tuple(parameter.requires_grad for parameter in self.model.parameters())
        if getattr(self, "_frozen_cache", (None, None))[0] != flags:
            self._frozen_cache = (flags, frozen_modules(self.model))
        return self._frozen_cache[1]

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        # Besides biases and norms (the Trainer's rule), what the model itself exempts (`no_weight_decay`).
        exempt = no_weight_decay(model)
        return [name for name in super().get_decay_parameter_names(model) if name not in exempt]

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        arguments = self.finetuning_args
        if arguments.strategy == "full" and arguments.layer_decay == 1.0 and arguments.head_learning_rate is None:
            return super().create_optimizer(
                model
            )  # one learning rate for all: any architecture, no block groups needed
        model = model if model is not None else self.model
        target = model.module if hasattr(model, "module") else model
        groups = layer_decay_groups(
            target,
            self.args.learning_rate,
            self.finetuning_args.layer_decay,
            self.finetuning_args.head_learning_rate,
            set(self.get_decay_parameter_names(target)),
        )
        for group in groups:
            group["weight_decay"] = self.args.weight_decay if group.pop("decay") else 0.0
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = apply_learning_rate_scales(optimizer_class(groups, **optimizer_kwargs), target)
        return self.optimizer


def describe_trainable(model: PreTrainedModel) -> dict[str, float]:
    """The trainable-parameter figures a run prints and saves."""
    trainable, total = count_trainable(model)
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_share": trainable / total}


__all__ = [
    "STRATEGIES",
    "FineTuningArguments",
    "FineTuningTrainer",
    "GradualUnfreezing",
    "add_head_dropout",
    "apply_strategy",
    "block_groups",
    "count_trainable",
    "describe_trainable",
    "frozen_modules",
    "group_matcher",
    "layer_decay_groups",
    "no_weight_decay",
    "parameter_groups",
    "set_trainable_blocks",
]
