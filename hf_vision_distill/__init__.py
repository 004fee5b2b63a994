"""hf_vision_distill: fine-tuning and knowledge distillation of vision models on the Hugging Face stack.

Importing the package registers its models with transformers' `AutoConfig`, `AutoModel` and
`AutoModelForImageClassification`.
"""

from .models import (
    MODEL_PRESETS,
    AirbenchCNNConfig,
    AirbenchCNNForImageClassification,
    AirbenchCNNModel,
    CompactCNNConfig,
    CompactCNNForImageClassification,
    CompactCNNModel,
    HybridResNetConfig,
    HybridResNetForImageClassification,
    HybridResNetModel,
    SimpleCNNConfig,
    SimpleCNNForImageClassification,
    SimpleCNNModel,
    VisionTransformerConfig,
    VisionTransformerForImageClassification,
    VisionTransformerModel,
    config_from_preset,
)
from .models.vit import vit_from_timm, vit_from_transformers

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "AirbenchCNNConfig",
    "AirbenchCNNForImageClassification",
    "AirbenchCNNModel",
    "CompactCNNConfig",
    "CompactCNNForImageClassification",
    "CompactCNNModel",
    "HybridResNetConfig",
    "HybridResNetForImageClassification",
    "HybridResNetModel",
    "SimpleCNNConfig",
    "SimpleCNNForImageClassification",
    "SimpleCNNModel",
    "VisionTransformerConfig",
    "VisionTransformerForImageClassification",
    "VisionTransformerModel",
    "config_from_preset",
    "vit_from_timm",
    "vit_from_transformers",
]
