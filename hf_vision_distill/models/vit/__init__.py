from .configuration_vit import VIT_PRESETS, VisionTransformerConfig
from .convert_vit import vit_from_timm, vit_from_transformers
from .modeling_vit import (
    VisionTransformerForImageClassification,
    VisionTransformerModel,
    VisionTransformerPreTrainedModel,
)

__all__ = [
    "VIT_PRESETS",
    "VisionTransformerConfig",
    "VisionTransformerForImageClassification",
    "VisionTransformerModel",
    "VisionTransformerPreTrainedModel",
    "vit_from_timm",
    "vit_from_transformers",
]
