"""Weight import from timm's and transformers' ViTs into `VisionTransformerForImageClassification`.

Ours uses timm's parameter layout (fused QKV with rows [q; k; v], position embeddings that include the [CLS] slot),
so timm weights copy one to one; transformers' separate q/k/v projections are concatenated into the fused one.
Not needed for `trust_remote_code` loading, so it may import from outside this folder.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_vit import VisionTransformerConfig
from .modeling_vit import VisionTransformerForImageClassification


def _check_timm_vit_is_supported(timm_model: nn.Module) -> None:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, VisionTransformer

    problems = []
    if not isinstance(timm_model, VisionTransformer):
        problems.append(f"it is a {type(timm_model).__name__}, not a timm VisionTransformer")
    else:
        distilled = getattr(timm_model, "dist_token", None) is not None  # timm's VisionTransformerDistilled (DeiT)
        if not timm_model.has_class_token or timm_model.num_prefix_tokens != 1 + int(distilled):
            problems.append("it needs a [CLS] token and at most DeiT's distillation token after it (no registers)")
        if timm_model.no_embed_class:
            problems.append("its position embeddings leave out the [CLS] slot (no_embed_class=True)")
        if timm_model.global_pool != "token":
            problems.append(f"it pools with global_pool={timm_model.global_pool!r} instead of the [CLS] token")
        for name in ("norm_pre", "fc_norm", "head_drop"):
            if not isinstance(getattr(timm_model, name), (nn.Identity, nn.Dropout)):
                problems.append(f"it has a {name} layer")
        if getattr(timm_model, "pos_embed", None) is None:
            problems.append("it has no learned position embeddings")
        if not isinstance(timm_model.norm, nn.LayerNorm):
            problems.append("it has no final LayerNorm")
        if not isinstance(getattr(timm_model.patch_embed, "norm", nn.Identity()), nn.Identity):
            problems.append("its patch embedding is normalised")
        block = timm_model.blocks[0]
        if not isinstance(block.attn, Attention) or not isinstance(block.mlp, Mlp):
            problems.append("its blocks use a non-standard attention or MLP")
        else:
            for name in ("ls1", "ls2"):
                if not isinstance(getattr(block, name), nn.Identity):
                    problems.append("its blocks use LayerScale")
                    break
            if not isinstance(block.attn.q_norm, nn.Identity):
                problems.append("its attention normalises q and k")
            if not isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity):
                problems.append("its attention has an extra norm (scale_attn_norm)")
            if not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity):
                problems.append("its MLP has an extra norm (scale_mlp_norm)")
            if block.attn.proj.bias is None or block.mlp.fc1.bias is None or block.mlp.fc2.bias is None:
                problems.append("some of its projections have no bias")
            activation = block.mlp.act
            if not (isinstance(activation, nn.GELU) and activation.approximate == "none"):
                problems.append(f"its MLP activation is {activation}, not exact GELU")
    if problems:
        raise ValueError(
            "cannot import this timm model into VisionTransformerForImageClassification: "
            + "; ".join(problems)
            + ". Supported: standard pre-norm ViTs with a [CLS] token such as vit_tiny_patch16_224, "
            "vit_small_patch16_224, vit_base_patch16_224, deit_*_patch16_224 and deit_*_distilled_patch16_224."
        )


def vit_from_timm(
    model_or_name: nn.Module | str, pretrained: bool = False, **create_model_kwargs
) -> VisionTransformerForImageClassification:
    """Builds our ViT with the weights of a timm `VisionTransformer`.

    Args:
        model_or_name (`nn.Module` or `str`):
            A timm ViT, or a name for `timm.create_model` (e.g. `"vit_tiny_patch16_224"` or
            `"hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"`).
        pretrained (`bool`, *optional*, defaults to `False`):
            With a name: download timm's pretrained weights (needs the Hub).
        create_model_kwargs:
            Passed to `timm.create_model` (e.g. `num_classes`, `img_size`).

    Returns:
        A `VisionTransformerForImageClassification` in eval mode whose logits equal timm's.
    """
    if isinstance(model_or_name, str):
        import timm

        timm_model = timm.create_model(model_or_name, pretrained=pretrained, **create_model_kwargs)
    else:
        timm_model = model_or_name
    _check_timm_vit_is_supported(timm_model)

    block = timm_model.blocks[0]
    head = timm_model.head
    num_labels = head.out_features if isinstance(head, nn.Linear) else 0
    config = VisionTransformerConfig(
        image_size=list(timm_model.patch_embed.img_size),
        patch_size=list(timm_model.patch_embed.patch_size),
        num_channels=timm_model.patch_embed.proj.in_channels,
        hidden_size=timm_model.embed_dim,
        num_hidden_layers=len(timm_model.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        layer_norm_eps=block.norm1.eps,
        qkv_bias=block.attn.qkv.bias is not None,
        num_labels=num_labels,
        distillation_token=getattr(timm_model, "dist_token", None) is not None,
    )
    model = VisionTransformerForImageClassification(config)

    source = timm_model.state_dict()
    state_dict = {
        "vit.embeddings.cls_token": source["cls_token"],
        "vit.embeddings.position_embeddings": source["pos_embed"],
        "vit.embeddings.patch_embedding.projection.weight": source["patch_embed.proj.weight"],
        "vit.embeddings.patch_embedding.projection.bias": source["patch_embed.proj.bias"],
        "vit.layernorm.weight": source["norm.weight"],
        "vit.layernorm.bias": source["norm.bias"],
    }
    renames = {
        "norm1": "layernorm_before",
        "attn.qkv": "attention.qkv",
        "attn.proj": "attention.projection",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for index in range(config.num_hidden_layers):
        for timm_name, our_name in renames.items():
            for kind in ("weight", "bias"):
                key = f"blocks.{index}.{timm_name}.{kind}"
                if key in source:
                    state_dict[f"vit.layers.{index}.{our_name}.{kind}"] = source[key]
    if config.distillation_token:
        state_dict["vit.embeddings.distillation_token"] = source["dist_token"]
    if num_labels:
        state_dict["classifier.weight"] = source["head.weight"]
        state_dict["classifier.bias"] = source["head.bias"]
        if config.distillation_token:
            state_dict["distillation_classifier.weight"] = source["head_dist.weight"]
            state_dict["distillation_classifier.bias"] = source["head_dist.bias"]
    # Every timm tensor must have found a place: one left over is a layer ours does not have.
    used = {id(tensor) for tensor in state_dict.values()}
    unused = sorted(name for name, tensor in source.items() if id(tensor) not in used)
    if unused:
        raise ValueError(
            f"cannot import this timm model: ours has no place for {unused[:6]}{' ...' if len(unused) > 6 else ''}; "
            "it is not a standard pre-norm ViT."
        )
    # strict=True: a missing or extra tensor means the mapping is wrong, never something to ignore.
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def vit_from_transformers(
    model_or_name: PreTrainedModel | str, **from_pretrained_kwargs
) -> VisionTransformerForImageClassification:
    """Builds our ViT with the weights of a transformers `ViTForImageClassification` (or `ViTModel`).

    Args:
        model_or_name (`PreTrainedModel` or `str`):
            A loaded model, or a Hub id / local path for `ViTForImageClassification.from_pretrained`
            (e.g. `"google/vit-base-patch16-224"`, `"WinKawaks/vit-small-patch16-224"`).
        from_pretrained_kwargs:
            Passed to `from_pretrained`.

    Returns:
        A `VisionTransformerForImageClassification` in eval mode whose logits equal the source's; labels
        (`id2label`) are carried over.
    """
    from transformers import ViTForImageClassification, ViTModel

    if isinstance(model_or_name, str):
        source_model = ViTForImageClassification.from_pretrained(model_or_name, **from_pretrained_kwargs)
    else:
        source_model = model_or_name
    if not isinstance(source_model, (ViTForImageClassification, ViTModel)):
        raise ValueError(
            f"expected a transformers ViTForImageClassification or ViTModel, got {type(source_model).__name__}; "
            "for timm models use vit_from_timm."
        )
    source_config = source_model.config
    if source_config.hidden_act != "gelu":
        raise ValueError(f"hidden_act={source_config.hidden_act!r} is not supported; our ViT uses exact GELU.")
    has_head = isinstance(source_model, ViTForImageClassification) and isinstance(source_model.classifier, nn.Linear)
    label_kwargs = (
        {"id2label": dict(source_config.id2label), "label2id": dict(source_config.label2id)}
        if has_head
        else {"num_labels": 0}
    )
    config = VisionTransformerConfig(
        image_size=source_config.image_size,
        patch_size=source_config.patch_size,
        num_channels=source_config.num_channels,
        hidden_size=source_config.hidden_size,
        num_hidden_layers=source_config.num_hidden_layers,
        num_attention_heads=source_config.num_attention_heads,
        intermediate_size=source_config.intermediate_size,
        hidden_act=source_config.hidden_act,
        layer_norm_eps=source_config.layer_norm_eps,
        qkv_bias=source_config.qkv_bias,
        **label_kwargs,
    )
    model = VisionTransformerForImageClassification(config)

    backbone = source_model.vit if has_head else source_model
    source = {name: tensor for name, tensor in backbone.state_dict().items()}
    state_dict = {
        "vit.embeddings.cls_token": source["embeddings.cls_token"],
        "vit.embeddings.position_embeddings": source["embeddings.position_embeddings"],
        "vit.embeddings.patch_embedding.projection.weight": source["embeddings.patch_embeddings.projection.weight"],
        "vit.embeddings.patch_embedding.projection.bias": source["embeddings.patch_embeddings.projection.bias"],
        "vit.layernorm.weight": source["layernorm.weight"],
        "vit.layernorm.bias": source["layernorm.bias"],
    }
    for index in range(config.num_hidden_layers):
        prefix, ours = f"layers.{index}.", f"vit.layers.{index}."
        state_dict[ours + "attention.qkv.weight"] = torch.cat(
            [source[prefix + f"attention.{name}_proj.weight"] for name in ("q", "k", "v")], dim=0
        )
        if config.qkv_bias:
            state_dict[ours + "attention.qkv.bias"] = torch.cat(
                [source[prefix + f"attention.{name}_proj.bias"] for name in ("q", "k", "v")], dim=0
            )
        for theirs, our_name in (
            ("attention.o_proj", "attention.projection"),
            ("layernorm_before", "layernorm_before"),
            ("layernorm_after", "layernorm_after"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            for kind in ("weight", "bias"):
                state_dict[f"{ours}{our_name}.{kind}"] = source[f"{prefix}{theirs}.{kind}"]
    if has_head:
        state_dict["classifier.weight"] = source_model.classifier.weight.detach()
        state_dict["classifier.bias"] = source_model.classifier.bias.detach()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


__all__ = ["vit_from_timm", "vit_from_transformers"]
