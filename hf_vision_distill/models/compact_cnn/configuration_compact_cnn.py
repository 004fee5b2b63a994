"""Configuration of `CompactCNN` (`model_type` "hvd-compact-cnn"), the small CNN student for distillation."""

from transformers import PreTrainedConfig


class CompactCNNConfig(PreTrainedConfig):
    r"""
    Configuration of [`CompactCNNModel`]: stages of conv3x3 + BatchNorm + ReLU layers, the first layer of every
    stage after the first with stride 2, global average pooling and a linear classifier. Each stage's output is
    returned as a hidden state, so distillation can align it with a teacher's features (e.g. a ViT's token grid).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        image_size (`int`, *optional*, defaults to 32):
            The size the model is trained at (for the image processor; the network accepts any size).
        hidden_sizes (`list[int]`, *optional*, defaults to `[64, 128, 256]`):
            Channels of each stage.
        depths (`list[int]`, *optional*, defaults to `[2, 2, 2]`):
            Conv layers per stage.
        stem_stride (`int`, *optional*, defaults to 1):
            Stride of the very first convolution (1 for 32-pixel images; 4 keeps 224-pixel inputs cheap).
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the classifier.
    """

    model_type = "hvd-compact-cnn"

    num_channels: int = 3
    image_size: int = 32
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256)
    depths: list[int] | tuple[int, ...] = (2, 2, 2)
    stem_stride: int = 1
    classifier_dropout: float | int = 0.0

    def __post_init__(self, **kwargs):
        self.hidden_sizes, self.depths = list(self.hidden_sizes), list(self.depths)
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"hidden_sizes={self.hidden_sizes} and depths={self.depths} must have one entry per stage each."
            )
        if any(depth < 1 for depth in self.depths) or any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"depths={self.depths} and hidden_sizes={self.hidden_sizes} must be positive.")
        if self.stem_stride < 1:
            raise ValueError(f"stem_stride={self.stem_stride} must be at least 1.")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout={self.classifier_dropout} must be in [0, 1).")
        super().__post_init__(**kwargs)


__all__ = ["CompactCNNConfig"]
