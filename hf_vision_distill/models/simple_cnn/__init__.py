from .configuration_simple_cnn import SimpleCNNConfig
from .modeling_simple_cnn import SimpleCNNForImageClassification, SimpleCNNModel, SimpleCNNPreTrainedModel

__all__ = ["SimpleCNNConfig", "SimpleCNNForImageClassification", "SimpleCNNModel", "SimpleCNNPreTrainedModel"]
