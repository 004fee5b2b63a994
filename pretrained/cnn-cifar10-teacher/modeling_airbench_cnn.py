"""AirbenchCNN: the CIFAR-10 speed-run network of airbench94 (Keller Jordan, 2024), the library's CNN teacher.

What makes it train to 94% in about ten epochs, kept here: a first layer of fixed whitening filters computed from the
training images (`init_from_data`), BatchNorms that learn only a shift, at 64 times the learning rate
(`learning_rate_scales`), identity-initialised convolutions, scaled logits, and flip/translate test-time
augmentation as a config switch. Self-contained for `trust_remote_code` loading: imports only torch, transformers
and its sibling config.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from .configuration_airbench_cnn import AirbenchCNNConfig


class PatchWhitening(nn.Module):
    """A `kernel_size` convolution whose filters whiten image patches: the eigenvectors of the patch covariance scaled
    by the inverse square root of their eigenvalues, each with its negative (so a GELU after it keeps both signs).
    The filters are a buffer set by `init_from_data`, not trained; the bias trains."""

    def __init__(self, num_channels: int, kernel_size: int):
        super().__init__()
        width = 2 * num_channels * kernel_size**2
        self.register_buffer("weight", torch.empty(width, num_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(pixel_values, self.weight.to(pixel_values.dtype), self.bias.to(pixel_values.dtype))

    @torch.no_grad()
    def init_from_data(self, pixel_values: torch.Tensor, eps: float = 5e-4) -> None:
        channels, kernel_size = self.weight.shape[1], self.weight.shape[-1]
        patches = pixel_values.float().unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * kernel_size**2).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0)  # largest variance first
        filters = filters.reshape(-1, channels, kernel_size, kernel_size)
        self.weight.copy_(torch.cat((filters, -filters)).to(self.weight.dtype))


class BatchNormShift(nn.Module):
    """BatchNorm without a learned scale: normalised features plus a learned per-channel shift (airbench's norm, whose
    weights stay at 1). eps is tiny because the scale is never learned to compensate."""

    def __init__(self, num_channels: int, momentum: float):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_channels, eps=1e-12, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden_states) + self.bias.to(hidden_states.dtype)[:, None, None]


class AirbenchCNNStage(nn.Module):
    """conv3x3 -> max-pool 2 -> norm -> GELU -> conv3x3 -> norm -> GELU: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNormShift(out_channels, momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = BatchNormShift(out_channels, momentum)
        self.activation = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.norm1(self.pool(self.conv1(hidden_states))))
        return self.activation(self.norm2(self.conv2(hidden_states)))


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


class AirbenchCNNPreTrainedModel(PreTrainedModel):
    config: AirbenchCNNConfig
    config_class = AirbenchCNNConfig
    base_model_prefix = "airbench_cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Hidden states are maps `(batch, channels, height, width)`: no tokens before the patches (timm's attribute).
    num_prefix_tokens = 0

    def group_matcher(self, coarse: bool = False) -> dict:
        """The parameters in depth order, in timm's `group_matcher` format: the whitening layer is the stem, one group
        per stage; whatever matches nothing (the classifier) is the head."""
        prefix = "" if self.base_model is self else rf"{self.base_model_prefix}\."
        return {"stem": rf"^{prefix}whitening\.", "blocks": rf"^{prefix}stages\.(\d+)\."}

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay besides biases and norms (timm's `no_weight_decay`): none."""
        return set()

    def learning_rate_scales(self) -> dict[str, float]:
        """Parameters (by name) that train at a multiple of the learning rate: the norms' shifts, at
        `config.norm_bias_learning_rate_scale` (airbench's `bias_scaler`). The library's trainers read this."""
        scale = float(self.config.norm_bias_learning_rate_scale)
        return {name: scale for name, _ in self.named_parameters() if ".norm" in name and name.endswith(".bias")}

    def init_from_data(self, pixel_values: torch.Tensor) -> None:
        """Data-dependent initialisation, before training from scratch: the whitening filters from the patch
        covariance of `pixel_values` (normalised training images, `(batch, channels, height, width)`; airbench uses
        5,000)."""
        self.base_model.whitening.init_from_data(pixel_values)

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        r"""Stage outputs as feature maps, as timm's `forward_intermediates` returns them.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            indices (`int` or `list[int]`, *optional*):
                The stages whose outputs to return: all of them (`None`), the last n (an int n), or the listed ones.
            output_fmt (`str`, *optional*, defaults to `"NCHW"`):
                Only `"NCHW"`.
            intermediates_only (`bool`, *optional*, defaults to `False`):
                Return only the maps, not the final features before them.
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
            loaded = getattr(module.weight, "_is_hf_initialized", False)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # PyTorch's default
            if not loaded:
                # The first `in_channels` filters start as identities: the stage begins close to passing its input on.
                init.dirac_(module.weight[: module.in_channels])
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, PatchWhitening):
            # Replaced by `init_from_data` before training; random filters keep an uninitialised model usable.
            init.normal_(module.weight, std=0.5)
            init.zeros_(module.bias)
        elif isinstance(module, BatchNormShift):
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class AirbenchCNNModel(AirbenchCNNPreTrainedModel):
    """The whitening layer and the stages; `last_hidden_state` is the last stage's map and `pooler_output` its
    global maximum."""

    def __init__(self, config: AirbenchCNNConfig):
        super().__init__(config)
        self.whitening = PatchWhitening(config.num_channels, config.whitening_kernel_size)
        channels = [config.whitening_width, *config.hidden_sizes]
        self.stages = nn.ModuleList(
            AirbenchCNNStage(channels[i], channels[i + 1], config.batch_norm_momentum)
            for i in range(len(config.hidden_sizes))
        )
        self.activation = nn.GELU()
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
                Return each stage's output; stage i has `hidden_sizes[i]` channels at about `height / 2^(i+1)`.
            return_dict (`bool`, *optional*):
                Return a `ModelOutput` (default) instead of a tuple.
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # The weights' dtype (bf16/fp16 under full half-precision evaluation), as transformers' vision models do.
        hidden_states = self.activation(self.whitening(pixel_values.to(self.stages[0].conv1.weight.dtype)))
        all_hidden_states = () if output_hidden_states else None
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states.amax(dim=(2, 3)),
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


def augmented_views(pixel_values: torch.Tensor, test_time_augmentation: str) -> list[torch.Tensor]:
    """The test-time views: the image and its mirror, and for `"flip_translate"` also the image shifted by one pixel
    up-left and down-right (reflect padding), each followed by its mirror."""
    views = [pixel_values, pixel_values.flip(-1)]
    if test_time_augmentation == "flip_translate":
        height, width = pixel_values.shape[-2:]
        padded = F.pad(pixel_values, (1, 1, 1, 1), mode="reflect")
        for shifted in (padded[..., :height, :width], padded[..., 2:, 2:]):
            views += [shifted, shifted.flip(-1)]
    return views


class AirbenchCNNForImageClassification(AirbenchCNNPreTrainedModel):
    """AirbenchCNN with a bias-free linear classifier on the pooled features, logits scaled by `logit_scale`, and the
    configured test-time augmentation in eval mode."""

    def __init__(self, config: AirbenchCNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.airbench_cnn = AirbenchCNNModel(config)
        width = config.hidden_sizes[-1]
        self.classifier = nn.Linear(width, config.num_labels, bias=False) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _logits(self, pixel_values: torch.Tensor, output_hidden_states: bool | None):
        outputs = self.airbench_cnn(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        return self.classifier(outputs.pooler_output) * self.config.logit_scale, outputs

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
            Other arguments: see [`AirbenchCNNModel.forward`]. With test-time augmentation (eval mode), the logits
            are the mean over the views and the hidden states are the plain image's.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        logits, outputs = self._logits(pixel_values, output_hidden_states)
        if not self.training and self.config.test_time_augmentation != "none":
            # airbench's weights: the plain pair counts half, the translated pairs the other half.
            views = augmented_views(pixel_values, self.config.test_time_augmentation)
            view_logits = [logits] + [self._logits(view, False)[0] for view in views[1:]]
            plain = (view_logits[0] + view_logits[1]) / 2
            logits = plain if len(views) == 2 else (plain + torch.stack(view_logits[2:]).mean(0)) / 2
        loss = classification_loss(logits, labels) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = ["AirbenchCNNForImageClassification", "AirbenchCNNModel", "AirbenchCNNPreTrainedModel"]
