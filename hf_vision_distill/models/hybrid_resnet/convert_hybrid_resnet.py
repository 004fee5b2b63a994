"""From a trained ResNet-18 (ours, timm, torchvision, transformers) to the hybrid, block by block.

Two steps. `resnet_as_hybrid` copies any supported ResNet into our layout with every stage convolutional (the same
function, so the teacher of layer-wise distillation has the same blocks and hidden states as the student).
`hybrid_from_resnet` then builds the hybrid: stem, shortcuts, norms, head and the stages that stay convolutional are
copied; each TransformerConv block starts as its BasicBlock:

- a k x k convolution is sum over offsets o of W_o x(p + o); head o of the local attention attends to offset o
  (relative-position bias `locality_strength` there, 0 elsewhere; query 0, so no content score yet), so with
  values V_o and output columns O_o the attention computes sum_o O_o V_o x(p + o) (Cordonnier et al., 2020);
- O_o V_o is the best rank-`value_dim` approximation of the tap W_o (truncated SVD, split sqrt(S) to each side):
  exact when `value_dim_ratio` = 1, the main approximation otherwise;
- zero padding: the attention's out-of-map neighbours are zero tokens, so border positions match too;
- the softmax is not exactly one-hot: a head keeps 1 / (1 + (k*k - 1) exp(-locality_strength)) of its weight on
  its offset (99.73% at 8), the rest leaks to the neighbours;
- the feed-forward's last layer is zero: it adds nothing until trained.

Not needed for `trust_remote_code` loading, so it may import from outside this folder.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_hybrid_resnet import HybridResNetConfig
from .modeling_hybrid_resnet import (
    ConvBlock,
    HybridResNetForImageClassification,
    LocalSelfAttention,
    TransformerConvBlock,
)

# (our module path, source module): the conv, norm and linear layers to copy, in our all-conv layout.
_Pairs = list[tuple[str, nn.Module]]


def _conv_norm(prefix: str, convolution: nn.Module, normalization: nn.Module) -> _Pairs:
    return [(f"{prefix}.convolution", convolution), (f"{prefix}.normalization", normalization)]


def _stem_kind(convolution: nn.Conv2d, max_pooled: bool) -> str:
    if tuple(convolution.kernel_size) == (7, 7) and tuple(convolution.stride) == (2, 2) and max_pooled:
        return "imagenet"
    if tuple(convolution.kernel_size) == (3, 3) and tuple(convolution.stride) == (1, 1) and not max_pooled:
        return "cifar"
    raise ValueError(
        f"unsupported stem: conv {tuple(convolution.kernel_size)} stride {tuple(convolution.stride)}, "
        f"{'with' if max_pooled else 'without'} max-pool; supported are the ImageNet stem (7x7/2 + max-pool) and the "
        "CIFAR stem (3x3/1, no max-pool)."
    )


def _torchvision_layout(model: nn.Module) -> tuple[dict, _Pairs]:
    """torchvision's `ResNet` and timm's `ResNet` (same names: conv1, bn1, layer1-4 of BasicBlocks, fc)."""
    if not isinstance(model.conv1, nn.Conv2d):
        raise ValueError("the ResNet's stem is not a single convolution (a deep stem such as timm's resnet18d).")
    stem = _stem_kind(model.conv1, isinstance(model.maxpool, nn.MaxPool2d))
    pairs = _conv_norm("hybrid_resnet.embedder.embedder", model.conv1, model.bn1)
    hidden_sizes, depths = [], []
    for stage_index in range(4):
        stage = getattr(model, f"layer{stage_index + 1}")
        hidden_sizes.append(stage[0].conv1.out_channels)
        depths.append(len(stage))
        for block_index, block in enumerate(stage):
            if not hasattr(block, "conv2") or hasattr(block, "conv3"):
                raise ValueError(f"{type(block).__name__} is not a BasicBlock (ResNet-18/34 layout); bottlenecks are "
                                 "not supported.")  # fmt: skip
            for extra in ("se", "aa", "drop_block"):
                if not isinstance(getattr(block, extra, None), (type(None), nn.Identity)):
                    raise ValueError(f"the ResNet's blocks have a {extra} layer, which the hybrid does not.")
            prefix = f"hybrid_resnet.stages.{stage_index}.{block_index}"
            pairs += _conv_norm(f"{prefix}.mixer1", block.conv1, block.bn1)
            pairs += _conv_norm(f"{prefix}.mixer2", block.conv2, block.bn2)
            if block.downsample is not None:
                pairs += _conv_norm(f"{prefix}.shortcut", block.downsample[0], block.downsample[1])
    pairs.append(("classifier", model.fc))
    fields = {
        "num_channels": model.conv1.in_channels,
        "stem": stem,
        "embedding_size": model.conv1.out_channels,
        "hidden_sizes": hidden_sizes,
        "depths": depths,
        "kernel_size": model.layer1[0].conv1.kernel_size[0],
        "num_labels": model.fc.out_features,
    }
    return fields, pairs


def _transformers_layout(model: nn.Module) -> tuple[dict, _Pairs]:
    """transformers' `ResNetForImageClassification` (e.g. microsoft/resnet-18)."""
    config = model.config
    if config.layer_type != "basic":
        raise ValueError(f"layer_type={config.layer_type!r}: only BasicBlock ResNets (ResNet-18/34) convert.")
    embedder = model.resnet.embedder
    stem_conv = embedder.embedder.convolution
    stem = _stem_kind(stem_conv, isinstance(embedder.pooler, nn.MaxPool2d))
    pairs = _conv_norm("hybrid_resnet.embedder.embedder", stem_conv, embedder.embedder.normalization)
    for stage_index, stage in enumerate(model.resnet.encoder.stages):
        for block_index, block in enumerate(stage.layers):
            prefix = f"hybrid_resnet.stages.{stage_index}.{block_index}"
            first, second = block.layer[0], block.layer[1]
            pairs += _conv_norm(f"{prefix}.mixer1", first.convolution, first.normalization)
            pairs += _conv_norm(f"{prefix}.mixer2", second.convolution, second.normalization)
            if not isinstance(block.shortcut, nn.Identity):
                pairs += _conv_norm(f"{prefix}.shortcut", block.shortcut.convolution, block.shortcut.normalization)
    classifier = model.classifier[-1]
    if isinstance(classifier, nn.Linear):
        pairs.append(("classifier", classifier))
    fields = {
        "num_channels": config.num_channels,
        "stem": stem,
        "embedding_size": config.embedding_size,
        "hidden_sizes": list(config.hidden_sizes),
        "depths": list(config.depths),
        "kernel_size": 3,
        "num_labels": config.num_labels,
        "id2label": dict(config.id2label),
    }
    return fields, pairs


def resnet_as_hybrid(model: nn.Module) -> HybridResNetForImageClassification:
    """A ResNet-18-style CNN (BasicBlocks) copied into our layout with every stage convolutional: the same function.

    Args:
        model: ours (`HybridResNetForImageClassification`, returned as a copy with its conv stages), timm's or
            torchvision's `ResNet`, transformers' `TimmWrapperForImageClassification` around a timm ResNet, or
            transformers' `ResNetForImageClassification`.
    """
    if getattr(getattr(model, "config", None), "model_type", None) == HybridResNetConfig.model_type:
        if "transformer" in model.config.block_types:
            raise ValueError("the model already has transformer stages; pass the CNN it was converted from.")
        copy = HybridResNetForImageClassification(HybridResNetConfig(**model.config.to_dict()))
        copy.load_state_dict(model.state_dict())
        return copy.eval()
    id2label = None
    if hasattr(model, "timm_model"):  # transformers' TimmWrapper
        id2label = dict(model.config.id2label) if model.config.num_labels == model.timm_model.fc.out_features else None
        model = model.timm_model
    if hasattr(model, "layer1") and hasattr(model, "fc"):
        fields, pairs = _torchvision_layout(model)
    elif hasattr(model, "resnet") and hasattr(getattr(model, "config", None), "layer_type"):
        fields, pairs = _transformers_layout(model)
    else:
        raise ValueError(
            f"cannot read a ResNet from {type(model).__name__}: expected ours, timm's or torchvision's ResNet "
            "(conv1/bn1/layer1-4/fc), transformers' ResNetForImageClassification or a TimmWrapper around a ResNet."
        )
    if id2label is not None:
        fields["id2label"] = id2label
    if "id2label" in fields:
        fields.pop("num_labels")
    config = HybridResNetConfig(**fields, block_types=["conv"] * len(fields["depths"]))
    copy = HybridResNetForImageClassification(config)
    targets = dict(copy.named_modules())
    for name, source in pairs:
        if name not in targets:
            raise ValueError(f"the source's layer for {name} has no counterpart: is it a ResNet-18-style model?")
        targets[name].load_state_dict(source.state_dict())
    return copy.eval()


def split_convolution(weight: torch.Tensor, attention: LocalSelfAttention, locality_strength: float) -> None:
    """Sets `attention` to the k x k convolution `weight` `(out_channels, in_channels, k, k)`: head o on offset o
    with a rank-`value_dim` truncated SVD of the tap W_o in its value and output projections."""
    out_channels, in_channels, kernel_height, kernel_width = weight.shape
    if (kernel_height, kernel_width) != (attention.kernel_size, attention.kernel_size):
        raise ValueError(
            f"a {kernel_height}x{kernel_width} kernel cannot start a {attention.kernel_size}-wide window."
        )
    value_dim = attention.value_dim
    taps = weight.detach().double().permute(2, 3, 0, 1).reshape(-1, out_channels, in_channels)  # (offsets, out, in)
    left, singular_values, right = torch.linalg.svd(taps, full_matrices=False)
    rank = min(value_dim, singular_values.shape[-1])
    root = singular_values[:, :rank].sqrt()
    values = torch.zeros(attention.num_heads, value_dim, in_channels, dtype=torch.float64)
    outputs = torch.zeros(out_channels, attention.num_heads, value_dim, dtype=torch.float64)
    values[:, :rank] = root[:, :, None] * right[:, :rank]
    # Value rows beyond the tap's rank (value_dim > min(in, out) channels) get small random weights: their output
    # columns are zero, so the product is unchanged, but both sides get gradients (zero on both would stay zero).
    values[:, rank:] = torch.randn(attention.num_heads, value_dim - rank, in_channels, dtype=torch.float64) * 1e-3
    outputs[:, :, :rank] = (left[:, :, :rank] * root[:, None, :]).permute(1, 0, 2)
    with torch.no_grad():
        attention.value.weight.copy_(values.reshape(-1, in_channels))
        attention.output.weight.copy_(outputs.reshape(out_channels, -1))
        attention.relative_position_bias.copy_(locality_strength * torch.eye(attention.num_heads))
        if attention.key_dim > 0:
            attention.query.weight.zero_()
            attention.query.bias.zero_()


def convert_block(conv_block: ConvBlock, transformer_block: TransformerConvBlock, locality_strength: float) -> None:
    """Starts `transformer_block` as `conv_block`: attention from each convolution, the norms and shortcut copied."""
    split_convolution(conv_block.mixer1.convolution.weight, transformer_block.attention1, locality_strength)
    split_convolution(conv_block.mixer2.convolution.weight, transformer_block.attention2, locality_strength)
    transformer_block.norm1.load_state_dict(conv_block.mixer1.normalization.state_dict())
    transformer_block.norm2.load_state_dict(conv_block.mixer2.normalization.state_dict())
    transformer_block.shortcut.load_state_dict(conv_block.shortcut.state_dict())


def hybrid_from_resnet(model: nn.Module, **config_fields) -> HybridResNetForImageClassification:
    """The hybrid of a trained ResNet-18-style CNN, each TransformerConv block started from its BasicBlock.

    Args:
        model: any CNN `resnet_as_hybrid` reads (ours, timm, torchvision, transformers).
        config_fields: the hybrid's `HybridResNetConfig` fields (`block_types`, `value_dim_ratio`, `key_dim`,
            `mlp_ratio`, `locality_strength`, ...); the layout (stem, widths, depths, labels) comes from the CNN.
    """
    cnn = resnet_as_hybrid(model)
    layout = ("num_channels", "stem", "embedding_size", "hidden_sizes", "depths", "kernel_size")
    if fixed := sorted(set(config_fields) & set(layout)):
        raise ValueError(f"{fixed} come from the CNN being converted and cannot be changed here.")
    # the hybrid's default stages unless told otherwise, not the CNN's all-conv ones
    config_fields.setdefault("block_types", list(HybridResNetConfig.block_types))
    config = HybridResNetConfig(**{**cnn.config.to_dict(), **config_fields})
    hybrid = HybridResNetForImageClassification(config)
    hybrid.hybrid_resnet.embedder.load_state_dict(cnn.hybrid_resnet.embedder.state_dict())
    hybrid.classifier.load_state_dict(cnn.classifier.state_dict())
    for conv_block, block in zip(cnn.hybrid_resnet.blocks, hybrid.hybrid_resnet.blocks):
        if isinstance(block, TransformerConvBlock):
            convert_block(conv_block, block, config.locality_strength)
        else:
            block.load_state_dict(conv_block.state_dict())
    return hybrid.eval()


__all__ = ["convert_block", "hybrid_from_resnet", "resnet_as_hybrid", "split_convolution"]
