"""CompactCNN: a small all-convolutional student whose per-stage feature maps are exposed for distillation.

Self-contained for `trust_remote_code` loading: imports only torch, transformers and its sibling config.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from .configuration_compact_cnn import CompactCNNConfig


class ConvNormActivation(nn.Sequential):
    """conv3x3 -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class CompactCNNStage(nn.Sequential):
    """`depth` conv layers; the first changes the width and, when `stride` is 2, halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, stride: int):
        layers = [ConvNormActivation(in_channels, out_channels, stride)]
        layers += [ConvNormActivation(out_channels, out_channels) for _ in range(depth - 1)]
        super().__init__(*layers)


# Copied from hf_vision_distill.models.vit.modeling_vit.take_indices
def take_indices(num_blocks: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Block indices as timm's `feature_take_indices` reads them: every block (`None`), the last n (an int n), or
    the listed ones (negative ones count from the end)."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices}: the model has {num_blocks} blocks; take between 1 and {num_blocks}.")
        return list(range(num_blocks - indices, num_blocks))
    for index in indices:
        if not -num_blocks <= index < num_blocks:
            raise ValueError(f"block {index} does not exist: the model has {num_blocks} (0..{num_blocks - 1}).")
    return [index % num_blocks for index in indices]


class CompactCNNPreTrainedModel(PreTrainedModel):
    config: CompactCNNConfig
    config_class = CompactCNNConfig
    base_model_prefix = "compact_cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Hidden states are maps `(batch, channels, height, width)`: no tokens before the patches (timm's attribute).
    num_prefix_tokens = 0

    def group_matcher(self, coarse: bool = False) -> dict:
        """The parameters in depth order, in timm's `group_matcher` format (regexes over this model's parameter
        names; the numbers they capture give the order): one group per stage, no stem. Whatever matches nothing
        (the classifier) is the head."""
        prefix = "" if self.base_model is self else rf"{self.base_model_prefix}\."
        return {"blocks": rf"^{prefix}stages\.(\d+)\."}

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay besides biases and norms (timm's `no_weight_decay`): none."""
        return set()

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        r"""Block outputs as feature maps, as timm's `forward_intermediates` returns them.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            indices (`int` or `list[int]`, *optional*):
                The blocks (as `group_matcher` numbers them) whose outputs to return: all of them (`None`), the last
                n (an int n), or the listed ones (negative ones count from the end).
            output_fmt (`str`, *optional*, defaults to `"NCHW"`):
                Only `"NCHW"`: stage i gives `(batch, hidden_sizes[i], height / (stem_stride * 2^i), width / ...)`.
            intermediates_only (`bool`, *optional*, defaults to `False`):
                Return only the maps, not the final features before them.

        Returns:
            The list of maps in block order, or `(last_hidden_state, maps)`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: this model's features are maps; use 'NCHW'.")
        blocks = take_indices(len(self.base_model.stages), indices)
        outputs = self.base_model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        intermediates = [outputs.hidden_states[index] for index in blocks]
        return intermediates if intermediates_only else (outputs.last_hidden_state, intermediates)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """The model's input size (timm's `set_input_size`): any size works, so only `config.image_size` changes."""
        self.config.image_size = img_size if isinstance(img_size, int) else list(img_size)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class CompactCNNModel(CompactCNNPreTrainedModel):
    """The stages; `last_hidden_state` is the last stage's map and `pooler_output` its global average."""

    def __init__(self, config: CompactCNNConfig):
        super().__init__(config)
        channels = [config.num_channels, *config.hidden_sizes]
        self.stages = nn.ModuleList(
            CompactCNNStage(channels[i], channels[i + 1], depth, stride=config.stem_stride if i == 0 else 2)
            for i, depth in enumerate(config.depths)
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            output_hidden_states (`bool`, *optional*):
                Return each stage's output; stage i has `hidden_sizes[i]` channels at
                `height / (stem_stride * 2^i)`.
            return_dict (`bool`, *optional*):
                Return a `ModelOutput` (default) instead of a tuple.
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # The weights' dtype (bf16/fp16 under full half-precision evaluation), as transformers' vision models do.
        hidden_states = pixel_values.to(self.stages[0][0][0].weight.dtype)
        all_hidden_states = () if output_hidden_states else None
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states.mean(dim=(2, 3)),
            hidden_states=all_hidden_states,
        )
        return output if return_dict else output.to_tuple()


# Copied from hf_vision_distill.models.vit.modeling_vit.classification_loss
def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class indices `(batch,)` or soft targets `(batch, num_labels)` (mixup/cutmix)."""
    if logits.shape[-1] < 2:
        raise ValueError(
            f"cross-entropy needs at least 2 classes, the head has {logits.shape[-1]}; set num_labels (or id2label) "
            "to the dataset's classes."
        )
    if labels.ndim == logits.ndim and labels.is_floating_point():
        return F.cross_entropy(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


class CompactCNNForImageClassification(CompactCNNPreTrainedModel):
    """CompactCNN with dropout and a linear classifier on the pooled features."""

    def __init__(self, config: CompactCNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.compact_cnn = CompactCNNModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.Tensor`, *optional*):
                Class indices `(batch_size,)` or soft targets `(batch_size, num_labels)`; the loss is cross-entropy.
            Other arguments: see [`CompactCNNModel.forward`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.compact_cnn(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = classification_loss(logits, labels) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = ["CompactCNNForImageClassification", "CompactCNNModel", "CompactCNNPreTrainedModel"]
