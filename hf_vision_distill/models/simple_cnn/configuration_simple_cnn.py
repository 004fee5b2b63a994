"""Configuration of `SimpleCNN` (`model_type` "hvd-simple-cnn"), the classic small CNN baseline."""

from transformers import PreTrainedConfig


class SimpleCNNConfig(PreTrainedConfig):
    r"""
    Configuration of [`SimpleCNNModel`]: blocks of conv3x3 + BatchNorm + ReLU + 2x2 max-pool, an adaptive average
    pool to a fixed grid, then a two-layer classifier (FC `classifier_hidden_size` + dropout + FC `num_labels`).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        image_size (`int`, *optional*, defaults to 32):
            The size the model is trained at (for the image processor; the network accepts any size).
        hidden_sizes (`list[int]`, *optional*, defaults to `[64, 128, 256]`):
            Output channels of each conv block.
        pooled_size (`int`, *optional*, defaults to 7):
            Side of the grid the adaptive average pool produces.
        classifier_hidden_size (`int`, *optional*, defaults to 512):
            Width of the hidden fully connected layer.
        classifier_dropout (`float`, *optional*, defaults to 0.5):
            Dropout before the last fully connected layer.
    """

    model_type = "hvd-simple-cnn"

    num_channels: int = 3
    image_size: int = 32
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256)
    pooled_size: int = 7
    classifier_hidden_size: int = 512
    classifier_dropout: float | int = 0.5

    def __post_init__(self, **kwargs):
        self.hidden_sizes = list(self.hidden_sizes)
        if not self.hidden_sizes or any(size <= 0 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes={self.hidden_sizes} must be a non-empty list of positive channel counts.")
        for name in ("num_channels", "pooled_size", "classifier_hidden_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout={self.classifier_dropout} must be in [0, 1).")
        super().__post_init__(**kwargs)


__all__ = ["SimpleCNNConfig"]
