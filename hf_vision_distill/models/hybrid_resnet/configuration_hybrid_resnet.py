"""Configuration of the hybrid TransformerConv-ResNet (`model_type` "hvd-hybrid-resnet")."""

from transformers import PreTrainedConfig

BLOCK_TYPES = ("conv", "transformer")
STEMS = ("cifar", "imagenet")

# Named architectures. "resnet18-cifar" is a plain ResNet-18 (every stage convolutional) with the CIFAR stem, the
# teacher the hybrids are converted from; "resnet18-imagenet-stem" is the same network with ResNet's own ImageNet stem,
# which quarters the resolution before the first stage (16x fewer positions there): the one for images of 64 pixels
# and more, where the CIFAR stem runs every stage at 16x the cost. "hybrid-resnet18" replaces stages 3-4 (94% of
# ResNet-18's parameters) by TransformerConv blocks, for 64% of its parameters in all. Stage 2 as well gives 62% but
# costs the most time: attention's cost grows with the number of positions, a convolution's far less on CPU.
HYBRID_RESNET_PRESETS: dict[str, dict] = {
    "resnet18-cifar": {"stem": "cifar", "block_types": ["conv"] * 4},
    "resnet18-imagenet-stem": {"stem": "imagenet", "block_types": ["conv"] * 4, "image_size": 224},
    "hybrid-resnet18": {"stem": "cifar", "block_types": ["conv", "conv", "transformer", "transformer"]},
}


class HybridResNetConfig(PreTrainedConfig):
    r"""
    Configuration of [`HybridResNetModel`]: a ResNet-18 layout (stem, stages of residual blocks, global average
    pooling, linear head) where each stage is made of convolutional BasicBlocks or of TransformerConv blocks.

    A TransformerConv block keeps the BasicBlock's shape (two token mixers with BatchNorm and ReLU, a residual over a
    shortcut) but mixes with local multi-head self-attention: `kernel_size**2` heads over a `kernel_size`x`kernel_size`
    window, with a learned relative-position bias per head and offset, then a feed-forward. One head per window
    offset is what lets the block start as an exact copy of a convolution (see `convert_hybrid_resnet.py`).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        image_size (`int`, *optional*, defaults to 32):
            The size the model is trained at (for the image processor; the network accepts any size).
        stem (`str`, *optional*, defaults to `"cifar"`):
            `"cifar"`: conv3x3 stride 1, no max-pool (32-pixel images); `"imagenet"`: conv7x7 stride 2 and a
            3x3 stride-2 max-pool.
        embedding_size (`int`, *optional*, defaults to 64):
            Channels of the stem.
        hidden_sizes (`list[int]`, *optional*, defaults to `[64, 128, 256, 512]`):
            Channels of each stage; every stage after the first halves the resolution in its first block.
        depths (`list[int]`, *optional*, defaults to `[2, 2, 2, 2]`):
            Blocks per stage.
        block_types (`list[str]`, *optional*, defaults to `["conv", "conv", "transformer", "transformer"]`):
            `"conv"` or `"transformer"` for each stage.
        kernel_size (`int`, *optional*, defaults to 3):
            Window of the local attention (and of the convolutions); odd.
        value_dim_ratio (`float`, *optional*, defaults to 0.25):
            Each head's value width as a share of the block's output channels: the rank each convolution tap keeps
            at conversion, and the main lever on the hybrid's size (1.0 can copy a convolution exactly).
        key_dim (`int`, *optional*, defaults to 8):
            Query/key width per head (the content part of the attention; 0 leaves only the position bias).
        mlp_ratio (`float`, *optional*, defaults to 0.25):
            Hidden width of the feed-forward as a multiple of the channels (0 leaves it out).
        locality_strength (`float`, *optional*, defaults to 8.0):
            Initial relative-position bias of each head on its own offset (0 on the others): at 8 a head puts
            99.7% of its weight there, so a fresh block already mixes locally like a convolution.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the classifier.
    """

    model_type = "hvd-hybrid-resnet"

    num_channels: int = 3
    image_size: int = 32
    stem: str = "cifar"
    embedding_size: int = 64
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    block_types: list[str] | tuple[str, ...] = ("conv", "conv", "transformer", "transformer")
    kernel_size: int = 3
    value_dim_ratio: float | int = 0.25
    key_dim: int = 8
    mlp_ratio: float | int = 0.25
    locality_strength: float | int = 8.0
    classifier_dropout: float | int = 0.0

    def __post_init__(self, **kwargs):
        self.hidden_sizes, self.depths, self.block_types = (
            list(self.hidden_sizes),
            list(self.depths),
            list(self.block_types),
        )
        if not len(self.hidden_sizes) == len(self.depths) == len(self.block_types):
            raise ValueError(
                f"hidden_sizes={self.hidden_sizes}, depths={self.depths} and block_types={self.block_types} must "
                "have one entry per stage each."
            )
        if any(depth < 1 for depth in self.depths) or any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"depths={self.depths} and hidden_sizes={self.hidden_sizes} must be positive.")
        if unknown := [kind for kind in self.block_types if kind not in BLOCK_TYPES]:
            raise ValueError(f"block_types has {unknown}; each stage is one of {list(BLOCK_TYPES)}.")
        if self.stem not in STEMS:
            raise ValueError(f"stem={self.stem!r}; choose one of {list(STEMS)}.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd and positive (the window is centred).")
        if not 0 < self.value_dim_ratio <= 1:
            raise ValueError(f"value_dim_ratio={self.value_dim_ratio} must be in (0, 1].")
        if self.key_dim < 0 or self.mlp_ratio < 0:
            raise ValueError(f"key_dim={self.key_dim} and mlp_ratio={self.mlp_ratio} must not be negative.")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout={self.classifier_dropout} must be in [0, 1).")
        super().__post_init__(**kwargs)

    def value_dim(self, channels: int) -> int:
        """Value width per head in a block with `channels` output channels."""
        return max(1, round(self.value_dim_ratio * channels))

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "HybridResNetConfig":
        """Builds the config of a named preset (see `HYBRID_RESNET_PRESETS`); keyword arguments override its fields."""
        if name not in HYBRID_RESNET_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(HYBRID_RESNET_PRESETS)}.")
        return cls(**{**HYBRID_RESNET_PRESETS[name], **kwargs})


__all__ = ["BLOCK_TYPES", "HYBRID_RESNET_PRESETS", "HybridResNetConfig"]
