import pytest
import torch

from hf_vision_distill import (
    CompactCNNConfig,
    CompactCNNForImageClassification,
    SimpleCNNConfig,
    SimpleCNNForImageClassification,
)


def test_simple_cnn_layout_and_hidden_states():
    torch.manual_seed(0)
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=10)).eval()
    outputs = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert outputs.logits.shape == (2, 10)
    assert [tuple(hidden.shape) for hidden in outputs.hidden_states] == [
        (2, 64, 16, 16),
        (2, 128, 8, 8),
        (2, 256, 4, 4),
    ]
    linear_layers = [module for module in model.classifier if isinstance(module, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear_layers] == [(256 * 7 * 7, 512), (512, 10)]
    dropouts = [module for module in model.classifier if isinstance(module, torch.nn.Dropout)]
    assert [dropout.p for dropout in dropouts] == [0.5]
    assert model.simple_cnn(torch.randn(1, 3, 64, 64)).pooler_output.shape == (1, 256, 7, 7)


def test_simple_cnn_uses_kaiming_init():
    torch.manual_seed(0)
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=10))
    convolution = model.simple_cnn.blocks[1].convolution
    fan_out = convolution.out_channels * 9
    # Kaiming normal (fan_out, ReLU): std = sqrt(2 / fan_out).
    assert convolution.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_compact_cnn_stages_and_strides():
    torch.manual_seed(0)
    config = CompactCNNConfig(num_labels=10, hidden_sizes=[16, 32, 64], depths=[1, 2, 1])
    model = CompactCNNForImageClassification(config).eval()
    outputs = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert outputs.logits.shape == (2, 10)
    assert [tuple(hidden.shape) for hidden in outputs.hidden_states] == [
        (2, 16, 32, 32),
        (2, 32, 16, 16),
        (2, 64, 8, 8),
    ]
    assert [len(stage) for stage in model.compact_cnn.stages] == [1, 2, 1]
    strided = CompactCNNForImageClassification(CompactCNNConfig(num_labels=3, stem_stride=4)).eval()
    assert strided(torch.randn(1, 3, 224, 224), output_hidden_states=True).hidden_states[-1].shape[-1] == 14


@pytest.mark.parametrize("model_class, config", [
    (SimpleCNNForImageClassification, SimpleCNNConfig(num_labels=4, hidden_sizes=[8, 16, 32])),
    (CompactCNNForImageClassification, CompactCNNConfig(num_labels=4, hidden_sizes=[8, 16, 32])),
])  # fmt: skip
def test_cnn_gradients_and_save_load(tmp_path, model_class, config):
    torch.manual_seed(0)
    model = model_class(config).train()
    pixel_values = torch.randn(4, 3, 32, 32)
    model(pixel_values, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.parameters())
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)
    # BatchNorm running statistics travel with the weights.
    torch.testing.assert_close(
        loaded.state_dict()[next(k for k in loaded.state_dict() if k.endswith("running_mean"))],
        model.state_dict()[next(k for k in model.state_dict() if k.endswith("running_mean"))],
    )


@pytest.mark.parametrize(
    ("config_class", "fields", "message"),
    [
        (CompactCNNConfig, {"hidden_sizes": [8, 16], "depths": [1, 1, 1]}, "one entry per stage"),
        (CompactCNNConfig, {"stem_stride": 0}, "stem_stride"),
        (SimpleCNNConfig, {"classifier_dropout": 1.0}, "classifier_dropout"),
        (SimpleCNNConfig, {"hidden_sizes": []}, "non-empty"),
    ],
)
def test_cnn_configs_reject_bad_values(config_class, fields, message):
    with pytest.raises(ValueError, match=message):
        config_class(**fields)


def test_simple_cnn_without_labels_returns_features():
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=0, hidden_sizes=[4, 8, 8])).eval()
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 8 * 7 * 7)


def test_cnn_with_one_label_refuses_cross_entropy():
    model = CompactCNNForImageClassification(CompactCNNConfig(num_labels=1, hidden_sizes=[4, 8, 8]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 0]))
