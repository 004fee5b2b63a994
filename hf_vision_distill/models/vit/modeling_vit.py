"""A Vision Transformer written from its parts (Dosovitskiy et al., 2021), in the transformers model format.

The parts, in the order data flows through them: `PatchEmbedding` (a strided convolution),
`VisionTransformerEmbeddings` ([CLS] token + learned position embeddings, resampled on their 2-D grid for other
image sizes), `MultiHeadSelfAttention` (one fused QKV projection), `VisionTransformerMLP`, the pre-norm
`EncoderBlock`, `VisionTransformerModel` and `VisionTransformerForImageClassification`. Parameter names and layouts
follow timm's `VisionTransformer`, so its weights import one to one (see `convert_vit.py`).

Attention and outputs work as in transformers' own models: the attention function comes from transformers'
`ALL_ATTENTION_FUNCTIONS` by `config._attn_implementation` ("sdpa" by default; "eager", the only one that returns
the attention probabilities; "flash_attention_2" or "flex_attention" where installed; any function registered with
`AttentionInterface.register`), and `output_hidden_states` / `output_attentions` are collected by transformers'
output-capturing hooks (`_can_record_outputs`).

This file imports only torch, transformers (5.2 or later) and its sibling config: `save_pretrained` copies it next to
the weights for `trust_remote_code=True` loading.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vit import VisionTransformerConfig, _as_pair

logger = logging.get_logger(__name__)


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drops the whole residual branch per sample and rescales the survivors."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


class PatchEmbedding(nn.Module):
    """Cuts the image into non-overlapping patches and projects each to `hidden_size` with one strided convolution.

    Input `(batch, channels, height, width)`, output `(batch, num_patches, hidden_size)`, patches in row-major order.
    """

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.patch_size = _as_pair(config.patch_size)
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"expected pixel_values of shape (batch, {self.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}; convert images to {self.num_channels} channels (e.g. RGB) first."
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size[0] != 0 or width % self.patch_size[1] != 0:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the patch size "
                f"{self.patch_size[0]}x{self.patch_size[1]}; resize or crop the images to a multiple of it."
            )
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class VisionTransformerEmbeddings(nn.Module):
    """Patch embeddings with a learned [CLS] token in front (and DeiT's distillation token after it, with
    `config.distillation_token`) and learned position embeddings added."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = PatchEmbedding(config)
        grid_height, grid_width = config.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.distillation_token else None
        )
        self.num_prefix_tokens = 2 if config.distillation_token else 1
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + grid_height * grid_width, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Position embeddings for a `grid_height` x `grid_width` patch grid.

        The patch embeddings are laid out on the training grid and resampled bicubically on it (the ViT paper's
        recipe for fine-tuning at a higher resolution); the [CLS] (and distillation token) embeddings are kept as is.
        """
        trained_height, trained_width = self.config.grid_size
        if (grid_height, grid_width) == (trained_height, trained_width):
            return self.position_embeddings
        prefix = self.num_prefix_tokens
        cls_position, patch_positions = self.position_embeddings[:, :prefix], self.position_embeddings[:, prefix:]
        hidden_size = patch_positions.shape[-1]
        patch_positions = patch_positions.reshape(1, trained_height, trained_width, hidden_size).permute(0, 3, 1, 2)
        # Bicubic resampling in float32: half-precision interpolation is not implemented everywhere and loses detail.
        patch_positions = F.interpolate(
            patch_positions.float(),
            size=(grid_height, grid_width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).to(cls_position.dtype)
        patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, hidden_size)
        return torch.cat([cls_position, patch_positions], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        expected_height, expected_width = _as_pair(self.config.image_size)
        if not interpolate_pos_encoding and (height, width) != (expected_height, expected_width):
            raise ValueError(
                f"input image size {height}x{width} does not match the model's {expected_height}x{expected_width}. "
                "Resize the images to the model's size, pass interpolate_pos_encoding=True to resample the position "
                "embeddings for this call, or call model.resize_image_size(...) to change the model's size for good."
            )
        embeddings = self.patch_embedding(pixel_values)
        patch_height, patch_width = self.patch_embedding.patch_size
        position_embeddings = self.interpolate_pos_encoding(height // patch_height, width // patch_width)
        prefix_tokens = [self.cls_token.expand(embeddings.shape[0], -1, -1)]
        if self.distillation_token is not None:
            prefix_tokens.append(self.distillation_token.expand(embeddings.shape[0], -1, -1))
        embeddings = torch.cat([*prefix_tokens, embeddings], dim=1) + position_embeddings
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T * scaling + mask) V written out: the "eager" entry of transformers' attention interface (same
    signature as its other functions), and the one that returns the attention probabilities.

    Args:
        query, key, value: `(batch, heads, tokens, head_dim)`.
        attention_mask: added to the scores (`None` for images: every patch sees every patch).
    Returns:
        The output `(batch, tokens, heads, head_dim)` and the probabilities `(batch, heads, tokens, tokens)` (before
        dropout).
    """
    # Scaling the query first, as timm does, keeps the products small in half precision.
    scores = torch.matmul(query * scaling, key.transpose(-2, -1))
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(F.dropout(probabilities, p=dropout, training=dropout > 0), value)
    return output.transpose(1, 2).contiguous(), probabilities


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (timm's layout: output rows are [q; k; v]); the
    attention itself is the function `config._attn_implementation` names in transformers' `ALL_ATTENTION_FUNCTIONS`.

    Returns the output and the attention probabilities (`None` unless the implementation gives them: only eager).
    """

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # read by transformers' attention functions: every patch attends to every patch
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.projection_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, num_tokens, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, attention_probabilities = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch_size, num_tokens, hidden_size)
        return self.projection_dropout(self.projection(output)), attention_probabilities


class VisionTransformerMLP(nn.Module):
    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class EncoderBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + Attention(LN(x)), then x + MLP(LN(x)), each branch with stochastic depth."""

    def __init__(self, config: VisionTransformerConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MultiHeadSelfAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionTransformerMLP(config)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + drop_path(attention_output, self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + drop_path(mlp_output, self.drop_path_rate, self.training)


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


class VisionTransformerPreTrainedModel(PreTrainedModel):
    config: VisionTransformerConfig
    config_class = VisionTransformerConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VisionTransformerEmbeddings", "EncoderBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # What `output_hidden_states` / `output_attentions` collect (transformers' output capturing): the embeddings and
    # each block's output, and each attention's probabilities.
    _can_record_outputs = {"hidden_states": EncoderBlock, "attentions": MultiHeadSelfAttention}

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in the hidden states (timm's `num_prefix_tokens`): [CLS], and DeiT's
        distillation token when the config has it."""
        return 2 if self.config.distillation_token else 1

    def group_matcher(self, coarse: bool = False) -> dict:
        """The parameters in depth order, in timm's `group_matcher` format (regexes over this model's parameter
        names; the numbers they capture give the order): the embeddings are the stem, each encoder block is a group
        and the final LayerNorm joins the last block, as in timm. Whatever matches nothing (the classifier) is the
        head. `coarse` is accepted for timm's signature; a ViT's blocks are already its coarsest groups."""
        prefix = "" if self.base_model is self else rf"{self.base_model_prefix}\."
        return {
            "stem": rf"^{prefix}embeddings\.",
            "blocks": [(rf"^{prefix}layers\.(\d+)\.", None), (rf"^{prefix}layernorm\.", (99999,))],
        }

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay besides biases and norms: the [CLS] (and distillation) token and the
        position embeddings (timm's `no_weight_decay`), as full parameter names of this model."""
        prefix = "" if self.base_model is self else f"{self.base_model_prefix}."
        names = {f"{prefix}embeddings.cls_token", f"{prefix}embeddings.position_embeddings"}
        if self.config.distillation_token:
            names.add(f"{prefix}embeddings.distillation_token")
        return names

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VisionTransformerEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.distillation_token is not None:
                init.trunc_normal_(module.distillation_token, mean=0.0, std=std)

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
                `"NCHW"`: `(batch, hidden_size, height / patch_height, width / patch_width)`, the patch tokens laid
                on their grid (the `num_prefix_tokens` tokens before them dropped); `"NLC"`: the tokens as the blocks
                return them, `(batch, num_prefix_tokens + patches, hidden_size)`.
            intermediates_only (`bool`, *optional*, defaults to `False`):
                Return only the maps, not the final features before them.

        Returns:
            The list of maps in block order, or `(last_hidden_state, maps)`.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not one of ('NCHW', 'NLC').")
        blocks = take_indices(self.config.num_hidden_layers, indices)
        outputs = self.base_model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        patch_height, patch_width = _as_pair(self.config.patch_size)
        grid = (pixel_values.shape[-2] // patch_height, pixel_values.shape[-1] // patch_width)
        intermediates = []
        for index in blocks:
            tokens = outputs.hidden_states[index + 1]  # hidden state 0 is the embeddings
            if output_fmt == "NCHW":
                patches = tokens[:, self.num_prefix_tokens :]
                tokens = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)
            intermediates.append(tokens)
        return intermediates if intermediates_only else (outputs.last_hidden_state, intermediates)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """The model's input size for good (timm's `set_input_size`): see `resize_image_size`."""
        self.resize_image_size(img_size)

    def resize_image_size(self, image_size: int | tuple[int, int]) -> None:
        """Permanently changes the input size: resamples the position embeddings and updates `config.image_size`.

        After this, `save_pretrained` stores the resampled embeddings and the new size, and inputs of the new size
        need no `interpolate_pos_encoding`.
        """
        embeddings: VisionTransformerEmbeddings = self.base_model.embeddings
        image_height, image_width = _as_pair(image_size)
        patch_height, patch_width = _as_pair(self.config.patch_size)
        if image_height % patch_height != 0 or image_width % patch_width != 0:
            raise ValueError(
                f"image_size={image_size} is not divisible by patch_size={self.config.patch_size}; "
                "choose a multiple of the patch size."
            )
        with torch.no_grad():
            resized = embeddings.interpolate_pos_encoding(image_height // patch_height, image_width // patch_width)
        requires_grad = embeddings.position_embeddings.requires_grad  # a frozen model stays frozen
        embeddings.position_embeddings = nn.Parameter(resized.detach().clone(), requires_grad=requires_grad)
        new_size = image_height if image_height == image_width else [image_height, image_width]
        self.config.image_size = new_size
        if embeddings.config is not self.config:
            embeddings.config.image_size = new_size


class VisionTransformerModel(VisionTransformerPreTrainedModel):
    """The ViT backbone: embeddings, encoder blocks and a final LayerNorm.

    `pooler_output` is the final-normed [CLS] token.
    """

    def __init__(self, config: VisionTransformerConfig):
        super().__init__(config)
        self.embeddings = VisionTransformerEmbeddings(config)
        # Stochastic depth rises linearly with depth (DeiT's rule).
        drop_path_rates = [config.drop_path_rate * index / max(config.num_hidden_layers - 1, 1)
                           for index in range(config.num_hidden_layers)]  # fmt: skip
        self.layers = nn.ModuleList([EncoderBlock(config, rate) for rate in drop_path_rates])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> PatchEmbedding:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            interpolate_pos_encoding (`bool`, *optional*):
                Resample the position embeddings to the input's size instead of requiring `config.image_size`.
            output_hidden_states (`bool`, *optional*):
                Return the embeddings and each block's output, `num_hidden_layers + 1` tensors
                `(batch, tokens, hidden_size)` (the last one before the final LayerNorm).
            output_attentions (`bool`, *optional*):
                Return each block's attention probabilities `(batch, heads, tokens, tokens)`. Only the eager
                implementation computes them: load the model with `attn_implementation="eager"` or call
                `model.set_attn_implementation("eager")` first.
            return_dict (`bool`, *optional*):
                Return a `ModelOutput` (default) instead of a tuple.
        """
        output_attentions = kwargs.get("output_attentions")
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True, but the model's attention implementation is "
                f"{self.config._attn_implementation!r}, which does not compute the attention probabilities (only "
                "'eager' does). Load the model with attn_implementation='eager' or call "
                "model.set_attn_implementation('eager') first."
            )
        expected_dtype = self.embeddings.patch_embedding.projection.weight.dtype
        hidden_states = self.embeddings(
            pixel_values.to(expected_dtype), interpolate_pos_encoding=bool(interpolate_pos_encoding)
        )
        for block in self.layers:
            hidden_states = block(hidden_states, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=sequence_output[:, 0])


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


@dataclass
class DistilledImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` of a ViT with DeiT's distillation token: `logits` is the mean of `cls_logits` (the
    [CLS] head's, which learns from the labels) and `distillation_logits` (the distillation token's head's, which
    learns from a teacher), as in DeiT and transformers' `DeiTForImageClassificationWithTeacher`."""

    cls_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None


class VisionTransformerForImageClassification(VisionTransformerPreTrainedModel):
    """The ViT with a linear classifier on the final [CLS] token, and with `config.distillation_token` a second one
    on the distillation token (DeiT): the logits are their mean, and a distillation trainer supervises the second
    head with the teacher."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = VisionTransformerModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.distillation_classifier = None
        if config.distillation_token:
            self.distillation_classifier = (
                nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
            )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        Args:
            labels (`torch.Tensor`, *optional*):
                Class indices `(batch_size,)` or soft targets `(batch_size, num_labels)`; the loss is cross-entropy
                (of the mean logits, with a distillation token: trained alone, both heads learn the labels).
            Other arguments (`output_hidden_states`, `output_attentions`, `return_dict`, ...): see
            [`VisionTransformerModel.forward`].
        """
        outputs: BaseModelOutputWithPooling = self.vit(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        logits = self.classifier(outputs.pooler_output)
        if self.distillation_classifier is None:
            loss = classification_loss(logits, labels) if labels is not None else None
            return ImageClassifierOutput(
                loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )
        cls_logits, distillation_logits = logits, self.distillation_classifier(outputs.last_hidden_state[:, 1])
        logits = (cls_logits + distillation_logits) / 2
        loss = classification_loss(logits, labels) if labels is not None else None
        return DistilledImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            cls_logits=cls_logits, distillation_logits=distillation_logits,
        )  # fmt: skip


__all__ = [
    "DistilledImageClassifierOutput",
    "EncoderBlock",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "VisionTransformerEmbeddings",
    "VisionTransformerForImageClassification",
    "VisionTransformerModel",
    "VisionTransformerPreTrainedModel",
    "eager_attention_forward",
]
