import pytest
import torch
from transformers import AttentionInterface

from hf_vision_distill import (
    VisionTransformerConfig,
    VisionTransformerForImageClassification,
    VisionTransformerModel,
    vit_from_timm,
    vit_from_transformers,
)
from hf_vision_distill.models.vit.modeling_vit import eager_attention_forward


def tiny_config(**overrides) -> VisionTransformerConfig:
    fields = dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=5,
    )  # fmt: skip
    if "id2label" in overrides:
        del fields["num_labels"]
    return VisionTransformerConfig(**{**fields, **overrides})


def tiny_model(**overrides) -> VisionTransformerForImageClassification:
    torch.manual_seed(0)
    return VisionTransformerForImageClassification(tiny_config(**overrides)).eval()


def test_shapes_hidden_states_and_attentions():
    model = tiny_model(attn_implementation="eager")
    pixel_values = torch.randn(3, 3, 32, 32)
    outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert outputs.logits.shape == (3, 5)
    # Embeddings plus one per block; 16 patches + [CLS].
    assert len(outputs.hidden_states) == 3
    assert all(hidden.shape == (3, 17, 32) for hidden in outputs.hidden_states)
    assert len(outputs.attentions) == 2
    assert outputs.attentions[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(3, 4, 17))
    plain = model(pixel_values)
    assert plain.hidden_states is None and plain.attentions is None


def test_base_model_pooler_is_normed_cls_token():
    config = tiny_config()
    model = VisionTransformerModel(config).eval()
    outputs = model(torch.randn(2, 3, 32, 32))
    assert outputs.last_hidden_state.shape == (2, 17, 32)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])


def test_sdpa_and_eager_paths_agree():
    sdpa_model = tiny_model()
    eager_model = tiny_model()
    eager_model.set_attn_implementation("eager")
    assert sdpa_model.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        sdpa_logits = sdpa_model(pixel_values).logits
        eager_logits = eager_model(pixel_values).logits
        maps_logits = eager_model(pixel_values, output_attentions=True).logits
    torch.testing.assert_close(sdpa_logits, eager_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa_logits, maps_logits, atol=1e-5, rtol=0)


def test_attention_maps_need_the_eager_implementation():
    # SDPA never materialises the probabilities: asking for them says how to get them instead of returning none.
    model = tiny_model()
    with pytest.raises(ValueError, match=r"attn_implementation='eager'.*set_attn_implementation\('eager'\)"):
        model(torch.randn(1, 3, 32, 32), output_attentions=True)
    model.set_attn_implementation("eager")  # switchable after loading, as transformers' own models are
    assert len(model(torch.randn(1, 3, 32, 32), output_attentions=True).attentions) == 2


def test_attention_goes_through_transformers_attention_interface(tmp_path):
    # Any function registered with transformers' AttentionInterface is used by name, from loading on.
    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("hvd_test_counting", counting_attention)
    tiny_model().save_pretrained(tmp_path)
    model = VisionTransformerForImageClassification.from_pretrained(tmp_path, attn_implementation="hvd_test_counting")
    expected = tiny_model()(torch.ones(2, 3, 32, 32)).logits
    torch.testing.assert_close(model(torch.ones(2, 3, 32, 32)).logits, expected, atol=1e-5, rtol=0)
    assert calls == [(2, 4, 17, 8)] * 2  # (batch, heads, tokens, head_dim), once per block


def test_eager_attention_matches_closed_form():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 1, 5, 4).unbind(0)
    output, probabilities = eager_attention_forward(None, query, key, value, None, scaling=0.5)
    expected_probabilities = torch.softmax(query @ key.transpose(-2, -1) * 0.5, dim=-1)
    torch.testing.assert_close(probabilities, expected_probabilities)
    torch.testing.assert_close(output, (expected_probabilities @ value).transpose(1, 2))


def test_from_pretrained_with_eager_attention(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = VisionTransformerForImageClassification.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"


def test_every_parameter_gets_a_gradient():
    model = tiny_model(drop_path_rate=0.1, hidden_dropout_prob=0.1).train()
    outputs = model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]))
    outputs.loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing
    assert all(parameter.grad.abs().sum() > 0 for parameter in model.parameters())


def test_soft_labels_give_soft_cross_entropy():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    hard = torch.tensor([1, 3])
    soft = torch.nn.functional.one_hot(hard, 5).float()
    outputs = model(pixel_values, labels=soft)
    torch.testing.assert_close(outputs.loss, model(pixel_values, labels=hard).loss)
    mixed = 0.7 * soft + 0.3 * torch.nn.functional.one_hot(torch.tensor([2, 0]), 5).float()
    log_probabilities = outputs.logits.log_softmax(-1)
    expected = -(mixed * log_probabilities).sum(-1).mean()
    torch.testing.assert_close(model(pixel_values, labels=mixed).loss, expected)


def test_wrong_image_size_says_what_to_do():
    model = tiny_model()
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 3, 50, 50), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="3, height, width"):
        model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": 30, "patch_size": 8}, "does not divide image_size"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "not divisible by num_attention_heads"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)


def test_interpolated_position_embeddings():
    model = tiny_model()
    embeddings = model.vit.embeddings
    # Same grid: the stored embeddings, untouched.
    assert embeddings.interpolate_pos_encoding(4, 4) is embeddings.position_embeddings
    resized = embeddings.interpolate_pos_encoding(6, 8)
    assert resized.shape == (1, 1 + 48, 32)
    torch.testing.assert_close(resized[:, 0], embeddings.position_embeddings[:, 0])
    # A constant embedding field stays constant under bicubic resampling.
    with torch.no_grad():
        embeddings.position_embeddings[:, 1:] = 0.25
    torch.testing.assert_close(embeddings.interpolate_pos_encoding(6, 6)[:, 1:], torch.full((1, 36, 32), 0.25))
    logits = model(torch.randn(2, 3, 48, 64), interpolate_pos_encoding=True).logits
    assert logits.shape == (2, 5)


def test_interpolation_to_same_size_is_identity():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(pixel_values, interpolate_pos_encoding=True).logits, model(pixel_values).logits)


def test_resize_image_size_is_saved(tmp_path):
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model(pixel_values, interpolate_pos_encoding=True).logits
    model.resize_image_size(48)
    assert model.config.image_size == 48
    assert model.vit.embeddings.position_embeddings.shape == (1, 37, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, expected)
    model.save_pretrained(tmp_path)
    loaded = VisionTransformerForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.image_size == 48
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, expected)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model.resize_image_size(50)


def test_save_and_load_give_equal_logits(tmp_path):
    model = tiny_model(id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    pixel_values = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path)
    loaded = VisionTransformerForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)


def test_presets_match_the_published_sizes():
    def count(name):
        config = VisionTransformerConfig.from_preset(name, num_labels=1000)
        with torch.device("meta"):
            model = VisionTransformerForImageClassification(config)
        return sum(parameter.numel() for parameter in model.parameters())

    # ViT-Ti/S/B at 224 with a 1000-class head (DeiT's table: 5.7M, 22M, 86M).
    assert count("vit-tiny") == 5_717_416
    assert round(count("vit-small") / 1e6) == 22
    assert round(count("vit-base") / 1e6) == 87
    with pytest.raises(ValueError, match="unknown ViT preset"):
        VisionTransformerConfig.from_preset("vit-huge")


def test_import_from_timm_matches_logits_and_parameter_count():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    model = vit_from_timm(timm_model)
    pixel_values = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = timm_model(pixel_values)
        sdpa_logits = model(pixel_values).logits
        model.config._attn_implementation = "eager"
        eager_logits = model(pixel_values).logits
    torch.testing.assert_close(sdpa_logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(eager_logits, expected, atol=1e-4, rtol=0)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in timm_model.parameters())


def test_a_distilled_deit_from_timm_keeps_its_distillation_token_and_head():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    timm_model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                   depth=2, num_classes=5).eval()  # fmt: skip
    model = vit_from_timm(timm_model)
    assert model.config.distillation_token and model.num_prefix_tokens == 2
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = timm_model(pixel_values)  # eval: the mean of its two heads
        outputs = model(pixel_values)
        torch.testing.assert_close(outputs.logits, expected, atol=1e-4, rtol=0)
        # timm's distillation head alone, on its token
        timm_tokens = timm_model.forward_features(pixel_values)
        torch.testing.assert_close(outputs.distillation_logits, timm_model.head_dist(timm_tokens[:, 1]), atol=1e-4,
                                   rtol=0)  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in timm_model.parameters())


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ({"global_pool": "avg"}, "global_pool='avg'"),
        ({"scale_attn_norm": True}, "attention has an extra norm"),
        ({"scale_mlp_norm": True}, "MLP has an extra norm"),
        ({"proj_bias": False}, "no bias"),
        ({"pos_embed": "none"}, "no learned position embeddings"),
        ({"final_norm": False}, "no final LayerNorm"),
        ({"init_values": 1e-5}, "LayerScale"),
        ({"reg_tokens": 4}, "no registers"),
    ],
)
def test_import_from_timm_rejects_unsupported_variants(variant, reason):
    timm = pytest.importorskip("timm")
    timm_model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, **variant
    )
    with pytest.raises(ValueError, match=reason):
        vit_from_timm(timm_model)


def test_interpolation_matches_timm_resampling_on_a_non_square_grid():
    timm_layers = pytest.importorskip("timm.layers")
    model = tiny_model(image_size=[32, 48])  # a 4x6 grid
    embeddings = model.vit.embeddings
    expected = timm_layers.resample_abs_pos_embed(
        embeddings.position_embeddings, new_size=(5, 3), old_size=(4, 6), num_prefix_tokens=1
    )
    torch.testing.assert_close(embeddings.interpolate_pos_encoding(5, 3), expected)


def test_bf16_autocast_and_activation_checkpointing():
    model = tiny_model().train()
    model.activation_checkpointing_enable()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(pixel_values, labels=torch.tensor([0, 1]), interpolate_pos_encoding=True)
    assert outputs.logits.dtype == torch.bfloat16 and outputs.loss.dtype == torch.float32
    outputs.loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_classification_loss_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        tiny_model(num_labels=1)(torch.randn(1, 3, 32, 32), labels=torch.tensor([0]))
    features = tiny_model(num_labels=0)(torch.randn(1, 3, 32, 32)).logits
    assert features.shape == (1, 32)  # no head: the pooled features


def test_copies_of_classification_loss_are_identical():
    """The modeling files are self-contained (trust_remote_code), so each carries a copy; they must not drift."""
    import inspect

    from hf_vision_distill.models.compact_cnn import modeling_compact_cnn
    from hf_vision_distill.models.simple_cnn import modeling_simple_cnn
    from hf_vision_distill.models.vit import modeling_vit

    sources = {inspect.getsource(module.classification_loss)
               for module in (modeling_vit, modeling_simple_cnn, modeling_compact_cnn)}  # fmt: skip
    assert len(sources) == 1


def test_import_from_transformers_matches_logits_and_labels():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    source_config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1},
    )  # fmt: skip
    source = ViTForImageClassification(source_config).eval()
    model = vit_from_transformers(source)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, source(pixel_values).logits, atol=1e-5, rtol=0)
    assert model.config.id2label == {0: "cat", 1: "dog"}
    assert model.config.layer_norm_eps == source_config.layer_norm_eps
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in source.parameters())


def test_import_from_transformers_checkpoint_on_disk(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    source_config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=3,
    )  # fmt: skip
    source = ViTForImageClassification(source_config).eval()
    source.save_pretrained(tmp_path)
    model = vit_from_transformers(str(tmp_path))
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, source(pixel_values).logits, atol=1e-5, rtol=0)
