"""Our model families, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .compact_cnn import CompactCNNConfig, CompactCNNForImageClassification, CompactCNNModel
from .simple_cnn import SimpleCNNConfig, SimpleCNNForImageClassification, SimpleCNNModel
from .vit import VIT_PRESETS, VisionTransformerConfig, VisionTransformerForImageClassification, VisionTransformerModel

_FAMILIES = (
    (VisionTransformerConfig, VisionTransformerModel, VisionTransformerForImageClassification),
    (SimpleCNNConfig, SimpleCNNModel, SimpleCNNForImageClassification),
    (CompactCNNConfig, CompactCNNModel, CompactCNNForImageClassification),
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

# Architectures the recipes build from scratch by name.
MODEL_PRESETS: dict[str, tuple[type, dict]] = {
    **{name: (VisionTransformerConfig, fields) for name, fields in VIT_PRESETS.items()},
    "simple-cnn": (SimpleCNNConfig, {}),
    "compact-cnn": (CompactCNNConfig, {}),
}


def config_from_preset(name: str, **overrides):
    """The config of a named architecture (`MODEL_PRESETS`), with fields overridden by keyword arguments."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}.")
    config_class, fields = MODEL_PRESETS[name]
    return config_class(**{**fields, **overrides})


__all__ = [
    "MODEL_PRESETS",
    "CompactCNNConfig",
    "CompactCNNForImageClassification",
    "CompactCNNModel",
    "SimpleCNNConfig",
    "SimpleCNNForImageClassification",
    "SimpleCNNModel",
    "VisionTransformerConfig",
    "VisionTransformerForImageClassification",
    "VisionTransformerModel",
    "config_from_preset",
]
