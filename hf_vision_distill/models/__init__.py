"""Our model families, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .airbench_cnn import AirbenchCNNConfig, AirbenchCNNForImageClassification, AirbenchCNNModel
from .compact_cnn import CompactCNNConfig, CompactCNNForImageClassification, CompactCNNModel
from .hybrid_resnet import HybridResNetConfig, HybridResNetForImageClassification, HybridResNetModel
from .input_specification import InputSpecification
from .loading import (
    MODEL_PRESETS,
    LoadedClassifier,
    ModelPreset,
    config_from_preset,
    describe_model_presets,
    is_convolutional,
    load_image_classifier,
)
from .simple_cnn import SimpleCNNConfig, SimpleCNNForImageClassification, SimpleCNNModel
from .vit import VisionTransformerConfig, VisionTransformerForImageClassification, VisionTransformerModel

_FAMILIES = (
    (VisionTransformerConfig, VisionTransformerModel, VisionTransformerForImageClassification),
    (SimpleCNNConfig, SimpleCNNModel, SimpleCNNForImageClassification),
    (CompactCNNConfig, CompactCNNModel, CompactCNNForImageClassification),
    (HybridResNetConfig, HybridResNetModel, HybridResNetForImageClassification),
    (AirbenchCNNConfig, AirbenchCNNModel, AirbenchCNNForImageClassification),
)

for _config_class, _base_class, _classification_class in _FAMILIES:
    # exist_ok: re-importing (e.g. a reloaded module in a notebook) must not fail.
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _base_class, exist_ok=True)
    AutoModelForImageClassification.register(_config_class, _classification_class, exist_ok=True)
    # Writes `auto_map` into saved configs and copies the modeling files next to the weights, so a process without
    # this package loads the model with `trust_remote_code=True`.
    _config_class.register_for_auto_class()
    _base_class.register_for_auto_class("AutoModel")
    _classification_class.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "AirbenchCNNConfig",
    "AirbenchCNNForImageClassification",
    "AirbenchCNNModel",
    "MODEL_PRESETS",
    "LoadedClassifier",
    "ModelPreset",
    "InputSpecification",
    "describe_model_presets",
    "is_convolutional",
    "load_image_classifier",
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
]
