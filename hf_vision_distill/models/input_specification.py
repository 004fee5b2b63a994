"""What a classifier expects at its input, as one object that travels from the model to everything that feeds it or
describes it: the transforms, the teacher's input transform, the image processor saved beside the model, the model
card and the ONNX export."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, ViTImageProcessor
from transformers.image_processing_utils import BaseImageProcessor

# PIL's resampling codes, as image processors store them (`resample`), and the names the transforms take.
RESAMPLE_TO_INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}
INTERPOLATION_TO_RESAMPLE = {name: code for code, name in RESAMPLE_TO_INTERPOLATION.items()}


def known_interpolation(interpolation: str | None) -> str:
    """An interpolation the transforms know (timm's "random" and others, and none given: bilinear)."""
    return interpolation if interpolation in INTERPOLATION_TO_RESAMPLE else "bilinear"


def processor_size(image_processor: BaseImageProcessor | None, fallback: int | Sequence[int]) -> tuple[int, int]:
    """The `(height, width)` an image processor produces: its crop size when it crops, else its resize size."""
    size = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    size = size or getattr(image_processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return (fallback, fallback) if isinstance(fallback, int) else (int(fallback[0]), int(fallback[1]))


@dataclass(frozen=True)
class InputSpecification:
    """A classifier's input: the image size, the normalisation and the resize interpolation of its evaluation
    transform (what its image processor does).

    Args:
        image_size (`tuple[int, int]`): `(height, width)`; an int means a square.
        image_mean (`tuple[float, ...]`): per-channel mean subtracted after rescaling to [0, 1].
        image_std (`tuple[float, ...]`): per-channel standard deviation divided by.
        interpolation (`str`): `"bilinear"`, `"bicubic"` or `"nearest"`.
    """

    image_size: tuple[int, int]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self):
        # Lists from configs and processors, ints for squares: one form, so specifications compare by value.
        size = self.image_size
        size = (size, size) if isinstance(size, int) else tuple(int(side) for side in size)
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "image_mean", tuple(float(value) for value in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(value) for value in self.image_std))
        if len(self.image_mean) != len(self.image_std):
            raise ValueError(
                f"image_mean {self.image_mean} and image_std {self.image_std} must give one value per channel each."
            )
        if self.interpolation not in INTERPOLATION_TO_RESAMPLE:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; pass one of "
                f"{list(INTERPOLATION_TO_RESAMPLE)}."
            )

    @classmethod
    def from_image_processor(
        cls, image_processor: BaseImageProcessor, fallback_size: int | tuple[int, int] = 224
    ) -> InputSpecification:
        """The specification an image processor applies (its crop size when it crops, else its resize size)."""
        data_config = getattr(image_processor, "data_config", None)  # transformers' TimmWrapperImageProcessor
        if data_config:
            return cls(
                image_size=tuple(data_config["input_size"][-2:]),
                image_mean=data_config["mean"],
                image_std=data_config["std"],
                interpolation=known_interpolation(data_config.get("interpolation")),
            )
        resample = getattr(image_processor, "resample", None)
        return cls(
            image_size=processor_size(image_processor, fallback_size),
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
            interpolation="bilinear" if resample is None else known_interpolation(
                RESAMPLE_TO_INTERPOLATION.get(int(resample))
            ),
        )  # fmt: skip

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> InputSpecification:
        """The specification of the image processor saved in `directory`."""
        return cls.from_image_processor(AutoImageProcessor.from_pretrained(str(directory)))

    def image_processor(self) -> ViTImageProcessor:
        """The processor saved beside a trained model, so `pipeline("image-classification", model=dir)` sees what the
        evaluation transform gives: resize to the size with this interpolation, rescale to [0, 1], normalise."""
        height, width = self.image_size
        return ViTImageProcessor(
            do_resize=True,
            size={"height": height, "width": width},
            resample=INTERPOLATION_TO_RESAMPLE[self.interpolation],
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
        )

    def eval_transform(self, normalize: bool = True) -> Callable:
        """The recipes' evaluation transform for this input: PIL image in, normalised float tensor out
        (`normalize=False`: uint8, for collators that normalise on the device)."""
        return self.train_transform(train=False, normalize=normalize)

    def train_transform(self, train: bool = True, **augmentation: Any) -> Callable:
        """The recipes' training transform for this input, with `augmentation` (`data.build_transforms`' crop, flip,
        colour jitter, auto-augment, random erasing and `normalize` arguments)."""
        from ..data.transforms import build_transforms  # the data package builds on the models', not the reverse

        return build_transforms(
            self.image_size, train=train, mean=self.image_mean, std=self.image_std, interpolation=self.interpolation,
            **augmentation,
        )  # fmt: skip

    def normalization(self) -> dict[str, Any]:
        """The keyword arguments of a collator that resizes and normalises on the device: `mean`, `std`,
        `interpolation`."""
        return {"mean": list(self.image_mean), "std": list(self.image_std), "interpolation": self.interpolation}

    def with_size(self, image_size: int | tuple[int, int]) -> InputSpecification:
        """This specification at another size (a resized model, a comparison at one size)."""
        return InputSpecification(image_size, self.image_mean, self.image_std, self.interpolation)

    def mismatches(self, other: InputSpecification, atol: float = 1e-6) -> list[str]:
        """How `other` differs from this specification in image size or normalisation (empty when it does not)."""
        problems = []
        if tuple(other.image_size) != tuple(self.image_size):
            problems.append(f"image size {tuple(other.image_size)} instead of {tuple(self.image_size)}")
        for name in ("image_mean", "image_std"):
            ours, theirs = getattr(self, name), getattr(other, name)
            if len(ours) != len(theirs) or any(abs(a - b) > atol for a, b in zip(ours, theirs)):
                problems.append(f"{name.removeprefix('image_')} {rounded(theirs)} instead of {rounded(ours)}")
        return problems

    def __str__(self) -> str:
        height, width = self.image_size
        mean, std = rounded(self.image_mean), rounded(self.image_std)
        return f"{height}x{width}, mean {mean}, std {std}, {self.interpolation}"


def rounded(values: Sequence[float]) -> list[float]:
    """Values to 4 decimals, for messages (numpy arrays too)."""
    return [round(float(value), 4) for value in values]
