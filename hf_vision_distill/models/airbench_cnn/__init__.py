from .configuration_airbench_cnn import AirbenchCNNConfig
from .modeling_airbench_cnn import AirbenchCNNForImageClassification, AirbenchCNNModel, AirbenchCNNPreTrainedModel

__all__ = ["AirbenchCNNConfig", "AirbenchCNNForImageClassification", "AirbenchCNNModel", "AirbenchCNNPreTrainedModel"]
