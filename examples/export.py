"""Export a trained image classifier to ONNX, and optionally quantise it to int8 with ONNX Runtime.

    python examples/export.py --model_path outputs/train --output_dir outputs/train-onnx
    python examples/export.py --model_path outputs/demo --output_dir outputs/demo-onnx --quantize int8 \
        --dataset_name ../shared/datasets/cifar10
    python examples/export.py my_export.yaml                              # every argument from a YAML/JSON file

`--model_path` is a folder written by one of the recipes (or any `save_pretrained` folder with its image processor):
our models, transformers' and timm's. The output folder gets `model.onnx` (dynamic batch dimension, input
`pixel_values`, output `logits`), `config.json`, the image processor and the model card, whose "Deployment (ONNX)"
section says what was exported, how, and what was measured. With `--quantize int8`, `model_int8.onnx` is calibrated
on `--num_calibration_images` images of the dataset's training split (through the model's own eval transform), and its
accuracy drop against float32 is measured on the test split and written to the card. See
`hf_vision_distill/export.py` for why the export goes through `torch.onnx.export` (dynamo) rather than Optimum.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.export import (
    CALIBRATION_METHODS,
    calibration_set_from_dataset,
    export_classifier,
    quantize_exported,
)
from hf_vision_distill.recipes import parse_arguments, run_recipe

logger = logging.getLogger(__name__)


@dataclass
class ExportArguments:
    model_path: str = field(metadata={"help": "The trained model's folder (config.json, weights, image processor)."})
    output_dir: str = field(metadata={"help": "Where model.onnx, model_int8.onnx, config, processor and card go."})
    quantize: str | None = field(
        default=None, metadata={"help": "'int8': also write model_int8.onnx (static quantisation; needs a dataset)."}
    )
    opset: int | None = field(default=None, metadata={"help": "ONNX opset (torch's default when not given)."})
    image_size: int | None = field(
        default=None, metadata={"help": "Export at another input size (our ViT resamples its position embeddings)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code shipped with a checkpoint."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset for calibration (train split) and evaluation (test split)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir for load_dataset (e.g. imagefolder)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column; detected when not given."})
    label_column: str | None = field(default=None, metadata={"help": "Label column; detected when not given."})
    train_split: str = field(default="train", metadata={"help": "Split the calibration images are drawn from."})
    test_split: str | None = field(default=None, metadata={"help": "Split to measure on; 'test' when there is one."})
    num_calibration_images: int = field(default=300, metadata={"help": "Calibration images from the train split."})
    calibration_method: str = field(
        default="minmax", metadata={"help": f"Activation range calibration: one of {', '.join(CALIBRATION_METHODS)}."}
    )
    evaluate: bool = field(
        default=True, metadata={"help": "Measure float32 and int8 accuracy on the test split (with --quantize)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Measure on only this many test images."})
    seed: int = field(default=0, metadata={"help": "Seed of the calibration images' draw."})
    int8_reduce_range: str = field(
        default="auto",
        metadata={"help": "7-bit int8 weights, which x86 CPUs without VNNI need (their int8 kernel saturates): 'auto' "
                  "decides from this CPU; 'true' for a model to deploy on such CPUs, 'false' for CPUs with VNNI, "
                  "AMX or Arm."},
    )  # fmt: skip

    def __post_init__(self):
        if self.int8_reduce_range not in ("auto", "true", "false"):
            raise ValueError(f"--int8_reduce_range {self.int8_reduce_range!r}: pass auto, true or false.")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"--quantize {self.quantize!r} is not supported; pass int8 or leave it out.")
        if self.quantize and not self.dataset_name:
            raise ValueError(
                "--quantize int8 calibrates on images of the training split: pass --dataset_name (e.g. "
                "../shared/datasets/cifar10, the data the model was trained on)."
            )


def parse(argv: list[str] | None) -> ExportArguments:
    (args,) = parse_arguments((ExportArguments,), {}, argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    exported = export_classifier(
        args.model_path,
        args.output_dir,
        opset=args.opset,
        image_size=args.image_size,
        trust_remote_code=args.trust_remote_code,
    )
    results = {"opset": exported.opset, "max_abs_difference": exported.max_abs_difference}

    if args.quantize == "int8":
        data = load_image_classification_dataset(
            args.dataset_name,
            config_name=args.dataset_config_name,
            data_dir=args.data_dir,
            image_column=args.image_column,
            label_column=args.label_column,
            train_split=args.train_split,
            test_split=args.test_split,
            validation_size=0,
            max_eval_samples=args.max_eval_samples,
        )
        calibration = calibration_set_from_dataset(
            data.dataset["train"],
            exported.specification,
            num_images=args.num_calibration_images,
            seed=args.seed,
            description=f"{min(args.num_calibration_images, len(data.dataset['train']))} images of "
            f"{args.dataset_name} ({args.train_split})",
        )
        test_dataset = data.dataset.get("test") if args.evaluate else None
        if args.evaluate and test_dataset is None:
            logger.warning("%s has no test split: the int8 accuracy drop is not measured (pass --test_split).",
                           args.dataset_name)  # fmt: skip
        if test_dataset is not None and data.id2label != exported.id2label:
            raise ValueError(
                f"{args.dataset_name}'s classes {list(data.id2label.values())} are not the model's "
                f"{list(exported.id2label.values())}; accuracy would compare the wrong labels. Measure on the dataset "
                "the model was trained on, or pass --evaluate false."
            )
        test_description = f"{args.dataset_name} ({data.source_splits.get('test', 'test')})"
        results.update(
            quantize_exported(
                exported,
                calibration,
                test_dataset=test_dataset,
                test_description=test_description,
                calibration_method=args.calibration_method,
                reduce_range=None if args.int8_reduce_range == "auto" else args.int8_reduce_range == "true",
            )
        )

    with open(exported.output_dir / "export_results.json", "w") as file:
        json.dump(results, file, indent=2)
    logger.info("Export results: %s", results)
    return results


if __name__ == "__main__":
    run_recipe(main)
