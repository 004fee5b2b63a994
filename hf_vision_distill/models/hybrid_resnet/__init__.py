from .configuration_hybrid_resnet import HYBRID_RESNET_PRESETS, HybridResNetConfig
from .modeling_hybrid_resnet import (
    HybridResNetForImageClassification,
    HybridResNetModel,
    HybridResNetPreTrainedModel,
    TransformerConvBlock,
)

__all__ = [
    "HYBRID_RESNET_PRESETS",
    "HybridResNetConfig",
    "HybridResNetForImageClassification",
    "HybridResNetModel",
    "HybridResNetPreTrainedModel",
    "TransformerConvBlock",
]
