from .configuration_compact_cnn import CompactCNNConfig
from .modeling_compact_cnn import CompactCNNForImageClassification, CompactCNNModel, CompactCNNPreTrainedModel

__all__ = ["CompactCNNConfig", "CompactCNNForImageClassification", "CompactCNNModel", "CompactCNNPreTrainedModel"]
