"""Hybrid TransformerConv-ResNet: a ResNet-18 layout whose stages are convolutional or local-attention blocks.

Self-contained for `trust_remote_code` loading: imports only torch, transformers and its sibling config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_hybrid_resnet import HybridResNetConfig


class ConvNorm(nn.Sequential):
    """conv (no bias) -> BatchNorm; the 1x1 version is the projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.normalization = nn.BatchNorm2d(out_channels)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """ResNet's shortcut: identity, or a strided 1x1 projection when the block changes width or resolution."""
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    return ConvNorm(in_channels, out_channels, kernel_size=1, stride=stride)


class HybridResNetEmbeddings(nn.Module):
    """The stem: conv3x3 (CIFAR) or conv7x7/2 + max-pool/2 (ImageNet), BatchNorm, ReLU."""

    def __init__(self, config: HybridResNetConfig):
        super().__init__()
        imagenet = config.stem == "imagenet"
        self.embedder = ConvNorm(
            config.num_channels, config.embedding_size, kernel_size=7 if imagenet else 3, stride=2 if imagenet else 1
        )
        self.activation = nn.ReLU(inplace=True)
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet else nn.Identity()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.activation(self.embedder(pixel_values)))


class ConvBlock(nn.Module):
    """ResNet's BasicBlock: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, config: HybridResNetConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.mixer1 = ConvNorm(in_channels, out_channels, config.kernel_size, stride)
        self.mixer2 = ConvNorm(out_channels, out_channels, config.kernel_size)
        self.shortcut = shortcut(in_channels, out_channels, stride)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(hidden_states)
        hidden_states = self.mixer2(self.activation(self.mixer1(hidden_states)))
        return self.activation(hidden_states + residual)


class LocalSelfAttention(nn.Module):
    """Multi-head self-attention of each position over its k x k neighbourhood, with one head per offset.

    Head h scores the k*k neighbours by content (query . key / sqrt(key_dim)) plus a learned relative-position bias
    `relative_position_bias[h, offset]`, and mixes their values (each head has its own `value_dim`-wide value
    projection); an output projection maps the concatenated heads to `out_channels`. With `stride` 2 the queries sit
    on every other position, as a strided convolution's outputs do.

    Borders: neighbours outside the map are zero tokens (key 0, value 0) that still take part in the softmax, so a
    head focused on one offset sees exactly what a zero-padded convolution sees there.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, value_dim: int, key_dim: int, stride: int = 1
    ):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.num_heads = kernel_size * kernel_size
        self.key_dim, self.value_dim = key_dim, value_dim
        if key_dim > 0:
            self.query = nn.Linear(in_channels, self.num_heads * key_dim)
            self.key = nn.Linear(in_channels, self.num_heads * key_dim, bias=False)
        # No biases on values and output: the BatchNorm that follows has one, and a value bias would make the
        # zero tokens at the border non-zero.
        self.value = nn.Linear(in_channels, self.num_heads * value_dim, bias=False)
        self.output = nn.Linear(self.num_heads * value_dim, out_channels, bias=False)
        self.relative_position_bias = nn.Parameter(torch.zeros(self.num_heads, self.num_heads))
        # Content scores start at zero (query 0) with random keys, so the query still gets gradients; value and output
        # scaled by their fan-in, as the convolution they stand for.
        if key_dim > 0:
            self.query.initialization, self.key.initialization = "zeros", "small"
        self.value.initialization, self.output.initialization = "fan_in_linear", "fan_in_relu"

    def _windows(self, projected: torch.Tensor, head_dim: int) -> torch.Tensor:
        """`(batch, H, W, heads * head_dim)` -> the zero-padded k x k neighbourhood of every output position, as one
        view `(batch, H', W', heads, head_dim, k, k)` (offsets row-major, as a convolution kernel's taps): `unfold`
        makes no copy, and its backward is one kernel."""
        batch_size, height, width, _ = projected.shape
        pad = self.kernel_size // 2
        padded = F.pad(
            projected.view(batch_size, height, width, self.num_heads, head_dim), (0, 0, 0, 0, pad, pad, pad, pad)
        )
        return padded.unfold(1, self.kernel_size, self.stride).unfold(2, self.kernel_size, self.stride)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Channels-last, every offset at once: a handful of kernels per layer whatever the window (a loop over the
        # k*k offsets launched about 50 forward and 100 backward), and no k*k-times larger copy of the inputs.
        channels_last = hidden_states.permute(0, 2, 3, 1)
        queries_at = channels_last[:, :: self.stride, :: self.stride]
        batch_size, height, width, _ = queries_at.shape
        offsets = self.num_heads
        # (heads, offsets); with content scores (batch, H', W', heads, offsets). Scores and softmax in float32.
        scores = self.relative_position_bias.float()
        if self.key_dim > 0:
            queries = self.query(queries_at).view(batch_size, height, width, self.num_heads, self.key_dim, 1, 1)
            keys = self._windows(self.key(channels_last), self.key_dim)
            content = (queries * keys).sum(dim=4, dtype=torch.float32).view(batch_size, height, width, -1, offsets)
            scores = scores + content / math.sqrt(self.key_dim)
        weights = scores.softmax(dim=-1)
        values = self._windows(self.value(channels_last), self.value_dim)
        kernel = (self.kernel_size, self.kernel_size)
        mixing = weights.to(values.dtype).view(*weights.shape[:-2], self.num_heads, 1, *kernel)
        mixed = (mixing * values).sum(dim=(-2, -1))
        output = self.output(mixed.reshape(batch_size, height, width, self.num_heads * self.value_dim))
        attentions = None
        if output_attentions:
            weights = weights.to(hidden_states.dtype).expand(batch_size, height, width, -1, -1)
            attentions = weights.permute(0, 3, 4, 1, 2)  # (batch, heads, offsets, H', W')
        return output.permute(0, 3, 1, 2), attentions


class FeedForward(nn.Module):
    """Pre-norm position-wise MLP (1x1 convolutions) with a residual."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.normalization = nn.BatchNorm2d(channels)
        self.fc1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.activation = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, channels, kernel_size=1)
        self.fc2.initialization = "zeros"  # the block starts without its feed-forward, as the BasicBlock it replaces

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.fc2(self.activation(self.fc1(self.normalization(hidden_states))))


class TransformerConvBlock(nn.Module):
    """A BasicBlock whose convolutions are local self-attention, followed by a feed-forward:

        y = relu(bn2(attention2(relu(bn1(attention1(x))))) + shortcut(x));  out = y + mlp(bn(y))

    Same shapes, shortcut and norms as the BasicBlock it replaces, so it can start as that block (the feed-forward's
    last layer starts at zero, an identity).
    """

    def __init__(self, config: HybridResNetConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        value_dim = config.value_dim(out_channels)
        self.attention1 = LocalSelfAttention(
            in_channels, out_channels, config.kernel_size, value_dim, config.key_dim, stride
        )
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.attention2 = LocalSelfAttention(out_channels, out_channels, config.kernel_size, value_dim, config.key_dim)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride)
        self.activation = nn.ReLU(inplace=True)
        hidden_channels = round(config.mlp_ratio * out_channels)
        self.mlp = FeedForward(out_channels, hidden_channels) if hidden_channels > 0 else None

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        residual = self.shortcut(hidden_states)
        hidden_states, attentions1 = self.attention1(hidden_states, output_attentions)
        hidden_states = self.activation(self.norm1(hidden_states))
        hidden_states, attentions2 = self.attention2(hidden_states, output_attentions)
        hidden_states = self.activation(self.norm2(hidden_states) + residual)
        if self.mlp is not None:
            hidden_states = self.mlp(hidden_states)
        return hidden_states, ((attentions1, attentions2) if output_attentions else ())


@dataclass
class HybridResNetModelOutput(BaseModelOutputWithPoolingAndNoAttention):
    r"""
    attentions (`tuple(torch.Tensor)`, *optional*):
        For each attention layer of the transformer blocks, its weights `(batch, heads, kernel_size**2, H, W)`:
        how much each output position takes from each offset of its window.
    """

    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class HybridResNetBlockOutput(ModelOutput):
    r"""
    block_outputs (`tuple(torch.Tensor | None)`):
        Under teacher forcing, each block's output computed from the input given for it (`None` where none was).
    """

    block_outputs: tuple[torch.Tensor | None, ...] | None = None


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


class HybridResNetPreTrainedModel(PreTrainedModel):
    config: HybridResNetConfig
    config_class = HybridResNetConfig
    base_model_prefix = "hybrid_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Hidden states are maps `(batch, channels, height, width)`: no tokens before the patches (timm's attribute).
    num_prefix_tokens = 0

    def group_matcher(self, coarse: bool = False) -> dict:
        """The parameters in depth order, in timm's `group_matcher` format (regexes over this model's parameter
        names; the numbers they capture give the order): the stem, then one group per residual block (per stage if
        `coarse`), as timm groups its ResNets. Whatever matches nothing (the classifier) is the head."""
        prefix = "" if self.base_model is self else rf"{self.base_model_prefix}\."
        blocks = rf"^{prefix}stages\.(\d+)\." if coarse else rf"^{prefix}stages\.(\d+)\.(\d+)\."
        return {"stem": rf"^{prefix}embedder\.", "blocks": blocks}

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
                Only `"NCHW"`: block i of stage s gives `(batch, hidden_sizes[s], h_s, w_s)`, the stem's map halved
                once per stage after the first.
            intermediates_only (`bool`, *optional*, defaults to `False`):
                Return only the maps, not the final features before them.

        Returns:
            The list of maps in block order, or `(last_hidden_state, maps)`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: this model's features are maps; use 'NCHW'.")
        blocks = take_indices(len(self.base_model.blocks), indices)
        outputs = self.base_model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        intermediates = [outputs.hidden_states[index + 1] for index in blocks]
        return intermediates if intermediates_only else (outputs.last_hidden_state, intermediates)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """The model's input size (timm's `set_input_size`): any size works, so only `config.image_size` changes."""
        self.config.image_size = img_size if isinstance(img_size, int) else list(img_size)

    def block_types(self) -> list[str]:
        """The kind of every residual block in depth order (`"conv"` or `"transformer"`), as `blocks` lists them."""
        return [kind for depth, kind in zip(self.config.depths, self.config.block_types) for _ in range(depth)]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # A layer's own start (`initialization`, set by the block that owns it) wins: transformers initialises each
        # tensor once, children before parents, so a parent cannot override its children here.
        rule = getattr(module, "initialization", None)
        if rule == "zeros":
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif rule in ("fan_in_linear", "fan_in_relu"):
            init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=rule.removeprefix("fan_in_"))
        elif rule == "small":
            init.trunc_normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, LocalSelfAttention):
            # Local from the start (ConViT's locality initialisation): each head on its own offset.
            init.copy_(
                module.relative_position_bias,
                self.config.locality_strength * torch.eye(module.num_heads, dtype=module.relative_position_bias.dtype),
            )


class HybridResNetModel(HybridResNetPreTrainedModel):
    """Stem and stages; `last_hidden_state` is the last block's map and `pooler_output` its global average."""

    def __init__(self, config: HybridResNetConfig):
        super().__init__(config)
        self.embedder = HybridResNetEmbeddings(config)
        channels = [config.embedding_size, *config.hidden_sizes]
        self.stages = nn.ModuleList()
        for index, (depth, kind) in enumerate(zip(config.depths, config.block_types)):
            block_class = TransformerConvBlock if kind == "transformer" else ConvBlock
            stride = 1 if index == 0 else 2
            self.stages.append(
                nn.ModuleList(
                    block_class(
                        config,
                        channels[index] if i == 0 else channels[index + 1],
                        channels[index + 1],
                        stride if i == 0 else 1,
                    )
                    for i in range(depth)
                )  # fmt: skip
            )
        self.post_init()

    @property
    def blocks(self) -> list[nn.Module]:
        """Every residual block in depth order (stage by stage); hidden state i + 1 is block i's output."""
        return [block for stage in self.stages for block in stage]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        block_inputs: list[torch.Tensor | None] | tuple[torch.Tensor | None, ...] | None = None,
    ) -> BaseModelOutputWithPoolingAndNoAttention | HybridResNetBlockOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            output_hidden_states (`bool`, *optional*):
                Return the stem's output and every block's output (`1 + sum(depths)` maps).
            output_attentions (`bool`, *optional*):
                Return the attention weights of the transformer blocks.
            return_dict (`bool`, *optional*):
                Return a `ModelOutput` (default) instead of a tuple.
            block_inputs (`list[torch.Tensor | None]`, *optional*):
                Teacher forcing for layer-wise distillation: one entry per block (see `blocks`), the input to run
                that block on (e.g. a teacher's hidden state) or `None` to skip it. Replaces `pixel_values`; the
                output holds each block's result.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if block_inputs is not None:
            output = HybridResNetBlockOutput(block_outputs=self._teacher_forced(block_inputs))
            return output if return_dict else output.to_tuple()
        if pixel_values is None:
            raise ValueError("pass pixel_values (or block_inputs for teacher forcing).")
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        # The weights' dtype (bf16/fp16 under full half-precision evaluation), as transformers' vision models do.
        hidden_states = self.embedder(pixel_values.to(self.embedder.embedder.convolution.weight.dtype))
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.blocks:
            if isinstance(block, TransformerConvBlock):
                hidden_states, attentions = block(hidden_states, output_attentions)
                if output_attentions:
                    all_attentions += attentions
            else:
                hidden_states = block(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        output = HybridResNetModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states.mean(dim=(2, 3)),
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    def _teacher_forced(self, block_inputs) -> tuple[torch.Tensor | None, ...]:
        blocks = self.blocks
        if len(block_inputs) != len(blocks):
            raise ValueError(f"block_inputs has {len(block_inputs)} entries; the model has {len(blocks)} blocks.")
        outputs = []
        for block, block_input in zip(blocks, block_inputs):
            if block_input is None:
                outputs.append(None)
                continue
            # a teacher's states may come in another dtype (e.g. under full bf16 evaluation)
            block_input = block_input.to(next(block.parameters()).dtype)
            output = block(block_input)
            outputs.append(output[0] if isinstance(block, TransformerConvBlock) else output)
        return tuple(outputs)


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


class HybridResNetForImageClassification(HybridResNetPreTrainedModel):
    """The hybrid ResNet with dropout and a linear classifier on the pooled features."""

    def __init__(self, config: HybridResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.hybrid_resnet = HybridResNetModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        block_inputs: list[torch.Tensor | None] | tuple[torch.Tensor | None, ...] | None = None,
    ) -> ImageClassifierOutput | HybridResNetBlockOutput | tuple:
        r"""
        Args:
            labels (`torch.Tensor`, *optional*):
                Class indices `(batch_size,)` or soft targets `(batch_size, num_labels)`; the loss is cross-entropy.
            Other arguments: see [`HybridResNetModel.forward`]; with `block_inputs` the output is the base model's.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if block_inputs is not None:
            return self.hybrid_resnet(block_inputs=block_inputs, return_dict=return_dict)
        outputs = self.hybrid_resnet(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = classification_loss(logits, labels) if labels is not None else None
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "ConvBlock",
    "HybridResNetForImageClassification",
    "HybridResNetModel",
    "HybridResNetPreTrainedModel",
    "LocalSelfAttention",
    "TransformerConvBlock",
]
