"""One entry point for the recipes: an image classifier and its image processor from a name.

A name is one of our presets (built from scratch), a local directory or Hub id (anything
`AutoModelForImageClassification` loads: ours, transformers', `timm/...` checkpoints), or a bare timm architecture
name (built from scratch through transformers' `TimmWrapperForImageClassification`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    TimmWrapperPreTrainedModel,
)
from transformers.image_processing_utils import BaseImageProcessor

from .airbench_cnn import AirbenchCNNConfig
from .compact_cnn import CompactCNNConfig
from .hybrid_resnet import HYBRID_RESNET_PRESETS, HybridResNetConfig
from .input_specification import RESAMPLE_TO_INTERPOLATION, InputSpecification, known_interpolation, processor_size
from .simple_cnn import SimpleCNNConfig
from .vit import VIT_PRESETS, VisionTransformerConfig


@dataclass(frozen=True)
class ModelPreset:
    """An architecture built from scratch by name: its config class, the fields it sets, and the line that presents
    it in `--help` and in errors (`describe_model_presets`)."""

    config_class: type[PreTrainedConfig]
    fields: dict
    description: str


# Architectures built from scratch by name; the README's model zoo lists the same names (tests/test_presets.py).
MODEL_PRESETS: dict[str, ModelPreset] = {
    "vit-cifar": ModelPreset(VisionTransformerConfig, VIT_PRESETS["vit-cifar"], "ViT-Lite-7/4 for 32-pixel images"),
    "vit-tiny": ModelPreset(VisionTransformerConfig, VIT_PRESETS["vit-tiny"], "ViT-Ti/16 at 224"),
    "vit-small": ModelPreset(VisionTransformerConfig, VIT_PRESETS["vit-small"], "ViT-S/16 at 224"),
    "vit-base": ModelPreset(VisionTransformerConfig, VIT_PRESETS["vit-base"], "ViT-B/16 at 224"),
    "simple-cnn": ModelPreset(SimpleCNNConfig, {}, "3 conv blocks and a 2-layer head, any size"),
    "compact-cnn": ModelPreset(CompactCNNConfig, {}, "6 convolutions, global pooling, any size"),
    "airbench-cnn": ModelPreset(
        AirbenchCNNConfig, {}, "airbench94's whitened 7-convolution CIFAR-10 network: the library's CNN teacher"
    ),
    "resnet18-cifar": ModelPreset(
        HybridResNetConfig,
        HYBRID_RESNET_PRESETS["resnet18-cifar"],
        "ResNet-18 with the CIFAR stem, stage 1 at full resolution: for 32-pixel images",
    ),
    "resnet18-imagenet-stem": ModelPreset(
        HybridResNetConfig,
        HYBRID_RESNET_PRESETS["resnet18-imagenet-stem"],
        "ResNet-18 with the ImageNet stem, conv 7x7/2 + max-pool: for 64 pixels and more, 224 by default",
    ),
    "hybrid-resnet18": ModelPreset(
        HybridResNetConfig,
        HYBRID_RESNET_PRESETS["hybrid-resnet18"],
        "resnet18-cifar with stages 3-4 as TransformerConv blocks",
    ),
}


def describe_model_presets() -> str:
    """The presets, one `name: description` each, for `--help` and error messages."""
    return "; ".join(f"{name}: {preset.description}" for name, preset in MODEL_PRESETS.items())


def _unknown_preset_hint(name: str) -> str:
    close = difflib.get_close_matches(name, MODEL_PRESETS, n=1)
    return (f"Did you mean {close[0]!r}? " if close else "") + f"The presets: {describe_model_presets()}."


def config_from_preset(name: str, **overrides) -> PreTrainedConfig:
    """The config of a named architecture (`MODEL_PRESETS`), with fields overridden by keyword arguments."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}. {_unknown_preset_hint(name)}")
    preset = MODEL_PRESETS[name]
    return preset.config_class(**{**preset.fields, **overrides})


@dataclass
class LoadedClassifier:
    """A classifier ready to train, with the input settings its data pipeline must follow."""

    model: PreTrainedModel
    # The input the model was built or trained for: a preset's size with ImageNet statistics, timm's data config, a
    # checkpoint's image processor (its interpolation included).
    input_specification: InputSpecification
    from_scratch: bool

    @property
    def image_processor(self) -> BaseImageProcessor:
        """The processor saved beside the trained model: it mirrors the evaluation transform the recipes build from
        the same specification, so pipelines see exactly what evaluation saw."""
        return self.input_specification.image_processor()


def is_convolutional(model: nn.Module) -> bool:
    """More than one 2-D convolution: a CNN, not a ViT whose only convolution is its patch embedding. oneDNN (CPU)
    and cuDNN (GPU) run their fastest convolutions on such a model in channels-last memory format."""
    return sum(isinstance(module, nn.Conv2d) for module in model.modules()) > 1


def _is_timm_name(name: str) -> bool:
    import timm

    return "/" not in name and timm.is_model(name)


def _checkpoint_input_specification(
    model: PreTrainedModel, name_or_path: str, config: PreTrainedConfig, trust_remote_code: bool, hub_kwargs: dict
) -> InputSpecification:
    """The input size, mean, std and resize interpolation a loaded checkpoint was trained with."""
    if isinstance(model, TimmWrapperPreTrainedModel):
        import timm.data

        # A timm Hub checkpoint keeps its data settings in config.json's pretrained_cfg, which is what transformers'
        # TimmWrapperImageProcessor reads (before any processor saved beside the model), so they hold.
        pretrained_cfg = getattr(config, "pretrained_cfg", None)
        if pretrained_cfg:
            data_config = timm.data.resolve_data_config({}, pretrained_cfg=dict(pretrained_cfg))
        else:
            data_config = timm.data.resolve_data_config({}, model=model.timm_model)
        size = tuple(data_config["input_size"][1:])
        mean, std, interpolation = data_config["mean"], data_config["std"], data_config.get("interpolation")
        if pretrained_cfg:
            return InputSpecification(size, mean, std, known_interpolation(interpolation))
        # Built by name and saved here: the processor saved beside it knows the size it trained at (a CNN's can be
        # any); the timm model itself only knows its architecture's defaults.
    else:
        size, interpolation = getattr(config, "image_size", 224), None
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    try:
        image_processor = AutoImageProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs
        )
    except OSError:
        image_processor = None
    size = processor_size(image_processor, size)
    mean = list(getattr(image_processor, "image_mean", None) or mean)
    std = list(getattr(image_processor, "image_std", None) or std)
    resample = getattr(image_processor, "resample", None)
    if resample is not None:
        interpolation = RESAMPLE_TO_INTERPOLATION.get(int(resample))
    return InputSpecification(size, mean, std, known_interpolation(interpolation))


def load_image_classifier(
    name_or_path: str,
    *,
    id2label: dict[int, str] | None,
    image_size: int | None = None,
    config_overrides: dict | None = None,
    ignore_mismatched_sizes: bool = False,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | None = None,
) -> LoadedClassifier:
    """Builds or loads an image classifier for the labels `id2label`.

    Args:
        name_or_path (`str`):
            A preset (`MODEL_PRESETS`, e.g. `"vit-cifar"`), a local directory or Hub id (e.g.
            `"google/vit-base-patch16-224"`, `"timm/resnet18.a1_in1k"`, or timm's `"hf-hub:timm/resnet18.a1_in1k"`), a
            timm architecture name (`"resnet18"`, built from scratch), or a timm name with a pretrained tag
            (`"resnet18.a1_in1k"`, loaded from `timm/resnet18.a1_in1k`).
        id2label (`dict[int, str]` or `None`):
            The dataset's classes; they become `config.id2label`. `None` keeps a checkpoint's own labels (e.g. a
            teacher, whose labels the distillation trainer then compares with the student's).
        image_size (`int`, *optional*):
            Input size. Presets: overrides the preset's. Our saved ViTs: resamples the position embeddings for good.
            CNNs (our saved ones, timm's by name or checkpoint): any size works, the data is resized. timm names of
            a fixed input size (ViT, Swin, ...): passed as `img_size` to `timm.create_model`. Other checkpoints:
            refused unless it is their own size.
        config_overrides (`dict`, *optional*):
            Config fields to change (presets and timm `model_args` only), e.g. `{"num_hidden_layers": 4}`.
        ignore_mismatched_sizes (`bool`, *optional*, defaults to `False`):
            Allow a checkpoint whose head has another number of labels: the head is re-initialised.
        attn_implementation (`str`, *optional*):
            `"sdpa"` or `"eager"` for models with attention (the model's default when `None`). On a CPU with AMX,
            eager attention under bf16 autocast trains our CIFAR ViT 2.0x faster than SDPA (benchmarks/RESULTS.md).
        trust_remote_code, revision, token, cache_dir:
            Passed to `from_pretrained`.

    Checkpoints load in float32 whatever dtype they were saved in: the recipes keep float32 weights and use
    autocast for mixed precision.
    """
    config_overrides = dict(config_overrides or {})
    # timm's spelling of a Hub checkpoint ("hf-hub:timm/resnet18.a1_in1k") is the Hub id after the prefix.
    name_or_path = name_or_path.removeprefix("hf-hub:")
    if id2label is None:
        if name_or_path in MODEL_PRESETS or (not os.path.isdir(name_or_path) and _is_timm_name(name_or_path)):
            raise ValueError(f"{name_or_path!r} is built from scratch and needs id2label (the dataset's classes).")
        return _load_checkpoint(
            name_or_path, None, image_size, False, attn_implementation, trust_remote_code, revision, token, cache_dir
        )
    id2label = {int(index): label for index, label in id2label.items()}
    label2id = {label: index for index, label in id2label.items()}
    attention_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}

    if name_or_path in MODEL_PRESETS:
        if image_size is not None:
            config_overrides["image_size"] = image_size
        config = config_from_preset(name_or_path, id2label=id2label, label2id=label2id, **config_overrides)
        model = AutoModelForImageClassification.from_config(config, **attention_kwargs)
        specification = InputSpecification(config.image_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        return LoadedClassifier(model, specification, from_scratch=True)

    if not os.path.isdir(name_or_path) and _is_timm_name(name_or_path) and "." in name_or_path:
        # "resnet18.a1_in1k" names pretrained weights: they live on the Hub as timm/resnet18.a1_in1k.
        name_or_path = f"timm/{name_or_path}"
    if not os.path.isdir(name_or_path) and _is_timm_name(name_or_path):
        import timm.data
        import timm.models
        from transformers import TimmWrapperConfig

        model_args = dict(config_overrides)
        # timm's own flag: a model with a fixed input size (ViT, Swin, Mixer: position embeddings, windows) is built
        # for the size; any other (a CNN: convolutions and global pooling) takes no `img_size` and is given the
        # resized images, as timm's train.py does.
        pretrained_cfg = timm.models.get_pretrained_cfg(name_or_path)
        if image_size is not None and (pretrained_cfg is None or pretrained_cfg.fixed_input_size):
            model_args["img_size"] = image_size
        config = TimmWrapperConfig(
            architecture=name_or_path, model_args=model_args or None, id2label=id2label, label2id=label2id
        )
        try:
            model = AutoModelForImageClassification.from_config(config, **attention_kwargs)
        except TypeError as err:
            raise ValueError(
                f"timm model {name_or_path!r} does not accept the arguments {sorted(model_args)}: {err}. Drop "
                "--image_size / --config_overrides for this architecture."
            ) from err
        data_config = timm.data.resolve_data_config(
            {"img_size": image_size} if image_size is not None else {}, model=model.timm_model
        )
        specification = InputSpecification(
            tuple(data_config["input_size"][1:]), data_config["mean"], data_config["std"],
            known_interpolation(data_config.get("interpolation")),
        )  # fmt: skip
        return LoadedClassifier(model, specification, from_scratch=True)

    if config_overrides:
        raise ValueError(
            f"config_overrides={config_overrides} apply to presets and timm names only; {name_or_path!r} is a saved "
            "checkpoint, whose architecture is fixed by its weights."
        )
    return _load_checkpoint(
        name_or_path,
        id2label,
        image_size,
        ignore_mismatched_sizes,
        attn_implementation,
        trust_remote_code,
        revision,
        token,
        cache_dir,
    )


def _load_checkpoint(
    name_or_path: str,
    id2label: dict[int, str] | None,
    image_size: int | None,
    ignore_mismatched_sizes: bool,
    attn_implementation: str | None,
    trust_remote_code: bool,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | None,
) -> LoadedClassifier:
    hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir}
    try:
        checkpoint_config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs)
    except OSError as err:
        raise ValueError(
            f"{name_or_path!r} is not a model preset, a timm architecture, a local directory with a config.json, or "
            f"a reachable Hub model id: {err}\n{_unknown_preset_hint(name_or_path)}"
        ) from err
    checkpoint_labels = {int(index): name for index, name in (checkpoint_config.id2label or {}).items()}
    if id2label is None:
        id2label = checkpoint_labels
    same_labels = checkpoint_labels == id2label
    if checkpoint_labels and len(checkpoint_labels) != len(id2label) and not ignore_mismatched_sizes:
        raise ValueError(
            f"{name_or_path!r} has a classification head for {len(checkpoint_labels)} labels but the dataset has "
            f"{len(id2label)}; pass ignore_mismatched_sizes=True (--ignore_mismatched_sizes in the recipes) to "
            "replace the head with a new one."
        )
    label_kwargs = {"id2label": id2label, "label2id": {name: index for index, name in id2label.items()}}
    if checkpoint_config.model_type == "timm_wrapper":
        # TimmWrapperConfig keeps its own num_labels in config.json, which wins over id2label alone.
        label_kwargs["num_labels"] = len(id2label)
    model = AutoModelForImageClassification.from_pretrained(
        name_or_path,
        **(label_kwargs if id2label else {}),
        ignore_mismatched_sizes=not same_labels,
        dtype=torch.float32,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
        trust_remote_code=trust_remote_code,
        **hub_kwargs,
    )
    specification = _checkpoint_input_specification(
        model, name_or_path, checkpoint_config, trust_remote_code, hub_kwargs
    )
    size = specification.image_size
    if image_size is not None and (image_size, image_size) != size:
        if isinstance(model, TimmWrapperPreTrainedModel):
            # timm's own word on resizability: a model takes any size unless its pretrained config fixes it. A Hub
            # checkpoint's data settings record the new size, since they, not the processor saved beside the
            # model, are what transformers and this loader read back.
            if model.timm_model.pretrained_cfg.get("fixed_input_size", False):
                raise ValueError(_fixed_size_message(image_size, name_or_path, model, size))
            if pretrained_cfg := getattr(model.config, "pretrained_cfg", None):
                channels = pretrained_cfg.get("input_size", (3,))[0]
                model.config.pretrained_cfg = {**pretrained_cfg, "input_size": [channels, image_size, image_size]}
        elif isinstance(model, PreTrainedModel) and model.config.model_type.startswith("hvd-"):
            model.set_input_size(image_size)  # ours declare it (our ViT resamples its position embeddings for good)
        else:
            raise ValueError(_fixed_size_message(image_size, name_or_path, model, size))
        specification = specification.with_size(image_size)
    return LoadedClassifier(model, specification, from_scratch=False)


def _fixed_size_message(image_size: int, name_or_path: str, model: nn.Module, size: tuple[int, int]) -> str:
    return (
        f"image_size={image_size} is not supported for {name_or_path!r} ({type(model).__name__}), which "
        f"takes {size[0]}x{size[1]} images; drop --image_size."
    )


__all__ = [
    "MODEL_PRESETS",
    "LoadedClassifier",
    "ModelPreset",
    "InputSpecification",
    "config_from_preset",
    "describe_model_presets",
    "load_image_classifier",
]
