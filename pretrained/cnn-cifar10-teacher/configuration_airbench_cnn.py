"""Configuration of `AirbenchCNN` (`model_type` "hvd-airbench-cnn"), the fast CIFAR-10 network of Keller Jordan's
airbench94 (https://github.com/KellerJordan/cifar10-airbench), used as the library's CNN teacher."""

from transformers import PreTrainedConfig

TEST_TIME_AUGMENTATIONS = ("none", "flip", "flip_translate")


class AirbenchCNNConfig(PreTrainedConfig):
    r"""
    Configuration of [`AirbenchCNNModel`]: a 2x2 patch-whitening convolution (its filters computed from the training
    images, not learned), then stages of conv3x3 -> max-pool -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU,
    a final max-pool and a bias-free linear classifier whose logits are scaled by `logit_scale`.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        image_size (`int`, *optional*, defaults to 32):
            The size the model is trained at (for the image processor; the network accepts any size of at least 17).
        whitening_kernel_size (`int`, *optional*, defaults to 2):
            Side of the whitening patches; the layer has `2 * num_channels * kernel_size**2` filters (each
            eigenvector of the patch covariance and its negative).
        hidden_sizes (`list[int]`, *optional*, defaults to `[64, 256, 256]`):
            Channels of each stage; every stage halves the resolution.
        batch_norm_momentum (`float`, *optional*, defaults to 0.4):
            PyTorch's BatchNorm momentum (airbench's 0.6 in its convention, `1 - 0.6`).
        norm_bias_learning_rate_scale (`float`, *optional*, defaults to 64.0):
            The BatchNorm shifts train at this multiple of the learning rate (airbench's `bias_scaler`); the trainers
            read it through `learning_rate_scales`.
        logit_scale (`float`, *optional*, defaults to 1/9):
            Multiplies the logits (airbench's `scaling_factor`).
        test_time_augmentation (`str`, *optional*, defaults to `"none"`):
            In eval mode, average the logits over views: `"flip"` (the image and its mirror) or `"flip_translate"`
            (also both shifted by one pixel diagonally, airbench's level 2: 6 forward passes). Training is unchanged.
    """

    model_type = "hvd-airbench-cnn"

    num_channels: int = 3
    image_size: int = 32
    whitening_kernel_size: int = 2
    hidden_sizes: list[int] | tuple[int, ...] = (64, 256, 256)
    batch_norm_momentum: float = 0.4
    norm_bias_learning_rate_scale: float | int = 64.0
    logit_scale: float = 1 / 9
    test_time_augmentation: str = "none"

    def __post_init__(self, **kwargs):
        self.hidden_sizes = list(self.hidden_sizes)
        if not self.hidden_sizes or any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes={self.hidden_sizes} must list at least one positive width.")
        if self.whitening_kernel_size < 1:
            raise ValueError(f"whitening_kernel_size={self.whitening_kernel_size} must be at least 1.")
        if not 0.0 < self.batch_norm_momentum <= 1.0:
            raise ValueError(f"batch_norm_momentum={self.batch_norm_momentum} must be in (0, 1].")
        if self.norm_bias_learning_rate_scale <= 0:
            raise ValueError(f"norm_bias_learning_rate_scale={self.norm_bias_learning_rate_scale} must be positive.")
        if self.test_time_augmentation not in TEST_TIME_AUGMENTATIONS:
            raise ValueError(
                f"test_time_augmentation={self.test_time_augmentation!r}; use one of {list(TEST_TIME_AUGMENTATIONS)}."
            )
        super().__post_init__(**kwargs)

    @property
    def whitening_width(self) -> int:
        return 2 * self.num_channels * self.whitening_kernel_size**2


__all__ = ["AirbenchCNNConfig"]
