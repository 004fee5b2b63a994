"""SimpleCNN: conv3x3 + BatchNorm + ReLU + max-pool blocks, adaptive pooling to 7x7 and an MLP classifier.

Self-contained for `trust_remote_code` loading: imports only torch, transformers and its sibling config.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from .configuration_simple_cnn import SimpleCNNConfig


class ConvBlock(nn.Module):
    """conv3x3 (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.normalization(self.convolution(hidden_states))))


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


class SimpleCNNPreTrainedModel(PreTrainedModel):
    config: SimpleCNNConfig
    config_class = SimpleCNNConfig
    base_model_prefix = "simple_cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Hidden states are maps `(batch, channels, height, width)`: no tokens before the patches (timm's attribute).
    num_prefix_tokens = 0

    def group_matcher(self, coarse: bool = False) -> dict:
        """The parameters in depth order, in timm's `group_matcher` format (regexes over this model's parameter
        names; the numbers they capture give the order): one group per convolutional block, no stem. Whatever
        matches nothing (the classifier) is the head."""
        prefix = "" if self.base_model is self else rf"{self.base_model_prefix}\."
        return {"blocks": rf"^{prefix}blocks\.(\d+)\."}

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
                Only `"NCHW"`: block i gives `(batch, hidden_sizes[i], height / 2^(i+1), width / 2^(i+1))`.
            intermediates_only (`bool`, *optional*, defaults to `False`):
                Return only the maps, not the final features before them.

        Returns:
            The list of maps in block order, or `(last_hidden_state, maps)`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: this model's features are maps; use 'NCHW'.")
        blocks = take_indices(len(self.base_model.blocks), indices)
        outputs = self.base_model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        intermediates = [outputs.hidden_states[index] for index in blocks]
        return intermediates if intermediates_only else (outputs.last_hidden_state, intermediates)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """The model's input size (timm's `set_input_size`): any size works, so only `config.image_size` changes."""
        self.config.image_size = img_size if isinstance(img_size, int) else list(img_size)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Kaiming (He et al., 2015) for layers followed by ReLU.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class SimpleCNNModel(SimpleCNNPreTrainedModel):
    """The convolutional feature extractor; `pooler_output` is the `(batch, channels, 7, 7)` pooled map."""

    def __init__(self, config: SimpleCNNConfig):
        super().__init__(config)
        channels = [config.num_channels, *config.hidden_sizes]
        self.blocks = nn.ModuleList([ConvBlock(channels[i], channels[i + 1]) for i in range(len(config.hidden_sizes))])
        self.pool = nn.AdaptiveAvgPool2d(config.pooled_size)
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
                Normalised images; any size of at least 2^len(hidden_sizes) pixels.
            output_hidden_states (`bool`, *optional*):
                Return each block's output `(batch, channels_i, height / 2^(i+1), width / 2^(i+1))`.
            return_dict (`bool`, *optional*):
                Return a `ModelOutput` (default) instead of a tuple.
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # The weights' dtype (bf16/fp16 under full half-precision evaluation), as transformers' vision models do.
        hidden_states = pixel_values.to(self.blocks[0].convolution.weight.dtype)
        all_hidden_states = () if output_hidden_states else None
        for block in self.blocks:
            hidden_states = block(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_states, pooler_output=self.pool(hidden_states), hidden_states=all_hidden_states
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


class SimpleCNNForImageClassification(SimpleCNNPreTrainedModel):
    """SimpleCNN with its classifier: flatten -> FC -> ReLU -> dropout -> FC `num_labels`."""

    def __init__(self, config: SimpleCNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.simple_cnn = SimpleCNNModel(config)
        flattened_size = config.hidden_sizes[-1] * config.pooled_size**2
        # Without labels (num_labels=0) the model returns the flattened pooled features, like the other heads.
        self.classifier = (
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(flattened_size, config.classifier_hidden_size),
                nn.ReLU(inplace=True),
                nn.Dropout(config.classifier_dropout),
                nn.Linear(config.classifier_hidden_size, config.num_labels),
            )
            if config.num_labels > 0
            else nn.Flatten()
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
            Other arguments: see [`SimpleCNNModel.forward`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.simple_cnn(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = ["SimpleCNNForImageClassification", "SimpleCNNModel", "SimpleCNNPreTrainedModel"]
