"""Models own their contract (timm's way): each family declares its parameter groups in depth order
(`group_matcher`), `no_weight_decay` and `num_prefix_tokens`, and the library asks the model instead of guessing."""

import pytest
import torch
from timm.models import group_parameters
from torch import nn
from transformers import DeiTConfig, DeiTForImageClassification, TrainingArguments

from hf_vision_distill.distillation.adapters import num_prefix_tokens
from hf_vision_distill.distillation.layerwise import transformer_blocks
from hf_vision_distill.finetuning import (
    FineTuningArguments,
    FineTuningTrainer,
    apply_strategy,
    block_groups,
    layer_decay_groups,
    no_weight_decay,
)
from hf_vision_distill.models.airbench_cnn import AirbenchCNNConfig, AirbenchCNNForImageClassification
from hf_vision_distill.models.compact_cnn import CompactCNNConfig, CompactCNNForImageClassification
from hf_vision_distill.models.hybrid_resnet import HybridResNetConfig, HybridResNetForImageClassification
from hf_vision_distill.models.simple_cnn import SimpleCNNConfig, SimpleCNNForImageClassification
from hf_vision_distill.models.vit import VisionTransformerConfig, VisionTransformerForImageClassification

TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=64, num_labels=5)  # fmt: skip
TINY_HYBRID = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1], key_dim=4, num_labels=3)


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "vit":
        return VisionTransformerForImageClassification(VisionTransformerConfig(**TINY_VIT)).eval()
    if family == "vit_distillation_token":  # DeiT's second prefix token and head
        config = VisionTransformerConfig(**TINY_VIT, distillation_token=True)
        return VisionTransformerForImageClassification(config).eval()
    if family == "simple_cnn":
        return SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=4, hidden_sizes=[8, 16, 32])).eval()
    if family == "compact_cnn":
        config = CompactCNNConfig(num_labels=4, hidden_sizes=[8, 16, 32], depths=[1, 2, 1])
        return CompactCNNForImageClassification(config).eval()
    if family == "airbench_cnn":
        return AirbenchCNNForImageClassification(AirbenchCNNConfig(num_labels=4, hidden_sizes=[8, 16, 32])).eval()
    return HybridResNetForImageClassification(HybridResNetConfig(**TINY_HYBRID)).eval()


# family: (has a stem, number of blocks, the classifier's weight)
EXPECTED = {
    "vit": (True, 3, "classifier.weight"),
    "vit_distillation_token": (True, 3, "distillation_classifier.weight"),
    "simple_cnn": (False, 3, "classifier.4.weight"),
    "compact_cnn": (False, 3, "classifier.weight"),
    "airbench_cnn": (True, 3, "classifier.weight"),  # the whitening layer is the stem
    "hybrid_resnet": (True, 5, "classifier.weight"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_groups_in_depth_order_cover_every_parameter_once(family):
    model = build(family)
    has_stem, num_blocks, classifier_weight = EXPECTED[family]
    matcher = model.group_matcher(coarse=False)
    assert ("stem" in matcher) == has_stem
    groups = group_parameters(model, matcher)
    ordered = [groups[index] for index in sorted(groups)]
    names = [name for name, _ in model.named_parameters()]
    flat = [name for group in ordered for name in group]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))  # every parameter exactly once
    # Depth order: our models define their modules input first, so each group starts after the previous one.
    first_positions = [min(names.index(name) for name in group) for group in ordered]
    assert first_positions == sorted(first_positions)
    assert len(ordered) == int(has_stem) + num_blocks + 1
    assert classifier_weight in ordered[-1]  # whatever matches nothing is the head
    # The library's view is the model's: (stem, blocks, head) from the same declaration.
    stem, blocks, head = block_groups(model)
    assert bool(stem) == has_stem and len(blocks) == num_blocks and head == ordered[-1]
    # The base model declares its groups too, in its own parameter names.
    base = model.base_model
    base_groups = group_parameters(base, base.group_matcher(coarse=False))
    assert sorted(name for group in base_groups.values() for name in group) == sorted(
        name for name, _ in base.named_parameters()
    )


def test_vit_final_norm_joins_the_last_block_and_hybrid_coarse_groups_are_stages():
    _, blocks, _ = block_groups(build("vit"))
    assert "vit.layernorm.weight" in blocks[-1] and "vit.layers.2.mlp.fc1.weight" in blocks[-1]
    hybrid = build("hybrid_resnet")
    coarse = group_parameters(hybrid, hybrid.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, 4 stages, head


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_no_weight_decay_names_exist(family):
    model = build(family)
    names = {name for name, _ in model.named_parameters()}
    declared = model.no_weight_decay()
    assert declared <= names
    assert no_weight_decay(model) == declared
    if family == "vit":
        assert declared == {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}
        assert model.base_model.no_weight_decay() == {"embeddings.cls_token", "embeddings.position_embeddings"}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_num_prefix_tokens_matches_the_hidden_states(family):
    model = build(family)
    pixel_values = torch.randn(2, 3, 32, 32)
    hidden_states = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    assert num_prefix_tokens(model) == model.num_prefix_tokens
    if family.startswith("vit"):
        prefix = 2 if family == "vit_distillation_token" else 1  # [CLS], and DeiT's distillation token
        assert model.num_prefix_tokens == prefix
        assert all(state.shape[1] == prefix + (32 // 8) ** 2 for state in hidden_states)
    else:  # maps: no tokens at all
        assert model.num_prefix_tokens == 0
        assert all(state.ndim == 4 for state in hidden_states)


def test_num_prefix_tokens_of_a_transformers_deit_counts_its_distillation_token():
    config = DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, num_labels=3)  # fmt: skip
    model = DeiTForImageClassification(config).eval()
    hidden_state = model(pixel_values=torch.randn(1, 3, 32, 32), output_hidden_states=True).hidden_states[-1]
    assert num_prefix_tokens(model) == 2 == hidden_state.shape[1] - (32 // 8) ** 2


def test_hybrid_declares_its_block_types():
    model = build("hybrid_resnet")  # block_types conv, conv, transformer, transformer; depths 1, 2, 1, 1
    assert model.base_model.block_types() == ["conv", "conv", "conv", "transformer", "transformer"]
    assert transformer_blocks(model) == [3, 4]
    assert [type(model.base_model.blocks[index]).__name__ for index in (3, 4)] == ["TransformerConvBlock"] * 2


class OddLayout(nn.Module):
    """Blocks under names no regex table would guess, defined (and so listed) out of depth order; its own
    `group_matcher` gives the order: `front` (the stem), then `body.gamma`, `body.alpha`, `body.beta`, then `out`."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 2)
        self.body = nn.ModuleDict({name: nn.Linear(4, 4) for name in ("alpha", "beta", "gamma")})
        self.front = nn.Linear(3, 4)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {
            "stem": r"^front\.",
            "blocks": [(r"^body\.gamma\.", (0,)), (r"^body\.alpha\.", (1,)), (r"^body\.beta\.", (2,))],
        }

    def no_weight_decay(self) -> set[str]:
        return {"body.alpha.weight"}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.front(pixel_values)
        for name in ("gamma", "alpha", "beta"):
            hidden_states = self.body[name](hidden_states)
        return self.out(hidden_states)


def test_the_library_fine_tunes_by_the_models_own_groups():
    model = OddLayout()
    stem, blocks, head = block_groups(model)
    assert stem == ["front.weight", "front.bias"]
    assert blocks == [[f"body.{name}.weight", f"body.{name}.bias"] for name in ("gamma", "alpha", "beta")]
    assert head == ["out.weight", "out.bias"]

    apply_strategy(model, FineTuningArguments(strategy="last_n", num_unfrozen_blocks=1))
    assert {name for name, p in model.named_parameters() if p.requires_grad} == set(head) | set(blocks[-1])

    # Layer-wise decay by depth as the model declares it: beta (last) 0.5, alpha 0.25, gamma 0.125, front 0.0625.
    parameters = dict(model.named_parameters())
    groups = layer_decay_groups(model, 1.0, 0.5, None, set(parameters))
    learning_rate_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    expected = {"out": 1.0, "body.beta": 0.5, "body.alpha": 0.25, "body.gamma": 0.125, "front": 0.0625}
    for name, parameter in parameters.items():
        assert learning_rate_of[id(parameter)] == expected[name.rsplit(".", 1)[0]], name
    assert no_weight_decay(model) == {"body.alpha.weight"}


def test_fine_tuning_trainer_exempts_what_the_model_declares(tmp_path):
    model = build("vit")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to="none",
                             use_cpu=True)  # fmt: skip
    for finetuning_args in (FineTuningArguments(strategy="full"), FineTuningArguments(layer_decay=0.75)):
        trainer = FineTuningTrainer(model=model, args=args, finetuning_args=finetuning_args)
        optimizer = trainer.create_optimizer()
        decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        parameters = dict(model.named_parameters())
        for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "classifier.bias"):
            assert decay_of[id(parameters[name])] == 0.0, name
        assert decay_of[id(parameters["vit.layers.0.attention.qkv.weight"])] == 0.1


# family: each block's map (channels, height, width) for a 32x32 image, as the docstrings give them
MAP_SHAPES = {
    "vit": [(32, 4, 4)] * 3,  # hidden 32, 32 / patch 8
    "simple_cnn": [(8, 16, 16), (16, 8, 8), (32, 4, 4)],  # halved per block
    "compact_cnn": [(8, 32, 32), (16, 16, 16), (32, 8, 8)],  # stem stride 1, halved per stage after the first
    "airbench_cnn": [(8, 15, 15), (16, 7, 7), (32, 3, 3)],  # 2x2 whitening (31x31), then halved per stage
    "hybrid_resnet": [(8, 32, 32), (16, 16, 16), (16, 16, 16), (16, 8, 8), (32, 4, 4)],  # CIFAR stem, per block
}


@pytest.mark.parametrize("family", sorted(MAP_SHAPES))
def test_forward_intermediates_returns_nchw_maps(family):
    model = build(family)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(pixel_values)
        outputs = model.base_model(pixel_values=pixel_values, output_hidden_states=True)
    assert [tuple(feature_map.shape) for feature_map in maps] == [(2, *shape) for shape in MAP_SHAPES[family]]
    torch.testing.assert_close(final, outputs.last_hidden_state)
    # The blocks group_matcher numbers: as many maps as blocks, the last one the last block's output.
    assert len(maps) == len(block_groups(model)[1])
    last = outputs.hidden_states[-1]
    if family == "vit":  # the patch tokens (after the [CLS] token) laid on their grid, row by row
        last = last[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(maps[-1], last)
    # indices as timm reads them: the last n, or the listed ones (negative from the end).
    with torch.no_grad():
        last_two = model.forward_intermediates(pixel_values, indices=2, intermediates_only=True)
        listed = model.forward_intermediates(pixel_values, indices=[0, -1], intermediates_only=True)
    torch.testing.assert_close(last_two, maps[-2:])
    torch.testing.assert_close(listed, [maps[0], maps[-1]])
    with pytest.raises(ValueError, match="does not exist"):
        model.forward_intermediates(pixel_values, indices=[len(maps)])


def test_vit_forward_intermediates_on_a_rectangular_grid():
    torch.manual_seed(0)
    model = VisionTransformerForImageClassification(VisionTransformerConfig(**{**TINY_VIT, "image_size": [32, 48]}))
    pixel_values = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        maps = model.eval().forward_intermediates(pixel_values, indices=1, intermediates_only=True)
        tokens = model.forward_intermediates(pixel_values, indices=1, output_fmt="NLC", intermediates_only=True)
    assert maps[0].shape == (1, 32, 4, 6) and tokens[0].shape == (1, 1 + 4 * 6, 32)
    torch.testing.assert_close(maps[0][0, :, 1, 5], tokens[0][0, 1 + 1 * 6 + 5])  # row 1, column 5
