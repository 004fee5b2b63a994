"""Configuration of the from-scratch Vision Transformer (`model_type` "hvd-vit")."""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# Architecture presets. The ViT-Ti/S/B rows match Dosovitskiy et al. (2021) and DeiT (Touvron et al., 2021) at
# patch 16 and 224 pixels; "vit-cifar" is ViT-Lite-7/4 (Hassani et al., 2021: 3.7M parameters, 91.4% on CIFAR-10
# trained from scratch), a ViT for 32x32 images with 4x4 patches (an 8x8 token grid).
VIT_PRESETS: dict[str, dict] = {
    "vit-tiny": {"image_size": 224, "patch_size": 16, "hidden_size": 192, "num_hidden_layers": 12,
                 "num_attention_heads": 3, "intermediate_size": 768},
    "vit-small": {"image_size": 224, "patch_size": 16, "hidden_size": 384, "num_hidden_layers": 12,
                  "num_attention_heads": 6, "intermediate_size": 1536},
    "vit-base": {"image_size": 224, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "intermediate_size": 3072},
    "vit-cifar": {"image_size": 32, "patch_size": 4, "hidden_size": 256, "num_hidden_layers": 7,
                  "num_attention_heads": 4, "intermediate_size": 512, "drop_path_rate": 0.1},
}  # fmt: skip


def _as_pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    return (int(value[0]), int(value[1]))


class VisionTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VisionTransformerModel`]: a pre-norm ViT with a [CLS] token, learned position embeddings
    and one fused QKV projection per attention layer.

    Args:
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            The (height, width) the position embeddings are laid out for. Other sizes need
            `interpolate_pos_encoding=True` or [`VisionTransformerPreTrainedModel.resize_image_size`].
        patch_size (`int` or `tuple[int, int]`, *optional*, defaults to 16):
            Side of the square (or rectangular) patches; must divide `image_size`.
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        hidden_size (`int`, *optional*, defaults to 192):
            Width of the token embeddings.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of encoder blocks.
        num_attention_heads (`int`, *optional*, defaults to 3):
            Heads per attention layer; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 768):
            Width of the MLP's hidden layer.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLP (exact GELU, as in timm and the original ViT).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the embeddings, the attention output projection and the MLP.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth: the drop probability of the last block's residual branches, rising linearly from 0.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the LayerNorms (timm uses 1e-6, transformers' ViT 1e-12).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the fused QKV projection has a bias.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal used for weights, position embeddings and the [CLS] token.
        distillation_token (`bool`, *optional*, defaults to `False`):
            DeiT's distillation token (Touvron et al., 2021): a second learned token after [CLS] with its own
            classifier, which learns from a teacher while [CLS] learns from the labels; the prediction is the mean
            of both heads' logits.

    Example:

    ```python
    >>> from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification
    >>> config = VisionTransformerConfig.from_preset("vit-cifar", num_labels=10)
    >>> model = VisionTransformerForImageClassification(config)
    ```
    """

    model_type = "hvd-vit"

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int | list[int] | tuple[int, int] = 16
    num_channels: int = 3
    hidden_size: int = 192
    num_hidden_layers: int = 12
    num_attention_heads: int = 3
    intermediate_size: int = 768
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    distillation_token: bool = False

    def __post_init__(self, **kwargs):
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            pair = [value] if isinstance(value, int) else list(value)
            if len(pair) not in (1, 2) or any(not isinstance(side, int) or side <= 0 for side in pair):
                raise ValueError(f"{name}={value} must be a positive int or a (height, width) pair of them.")
        for name in ("num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is unknown; use an activation of transformers' ACT2FN.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                "choose a number of heads that divides the hidden size (e.g. 3, 6 or 12 for 384)."
            )
        image_height, image_width = _as_pair(self.image_size)
        patch_height, patch_width = _as_pair(self.patch_size)
        if image_height % patch_height != 0 or image_width % patch_width != 0:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}; pick a patch size that "
                f"divides the image size (e.g. patch 4 or 8 for 32-pixel images, 16 for 224)."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The (rows, columns) of the patch grid at `image_size`."""
        image_height, image_width = _as_pair(self.image_size)
        patch_height, patch_width = _as_pair(self.patch_size)
        return image_height // patch_height, image_width // patch_width

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "VisionTransformerConfig":
        """Builds the config of a named preset (see `VIT_PRESETS`); keyword arguments override its fields."""
        if name not in VIT_PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; choose one of {sorted(VIT_PRESETS)}.")
        return cls(**{**VIT_PRESETS[name], **kwargs})


__all__ = ["VIT_PRESETS", "VisionTransformerConfig"]
