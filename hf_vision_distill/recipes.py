"""What the recipes in examples/ share: their argument dataclasses, parsing over per-recipe defaults, logging, the
data pipeline (load, transform, collate) and resumption."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate.utils import send_to_device
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import (
    ImageClassificationCollator,
    ImageClassificationData,
    build_transforms,
    drop_undecodable_images,
    load_image_classification_dataset,
    with_image_transform,
)
from .device_decode import DeviceJpegTransform, EncodedImageDataset, describe_first_image, split_is_jpeg
from .evaluation import logging_steps_for_curves
from .hub import build_model_card, results_from_metrics, upload_classifier_folder
from .models.loading import LoadedClassifier, describe_model_presets, is_convolutional, load_image_classifier
from .profiling import cpu_flags
from .tensor_data import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    DecodedImages,
    DeviceImageTransform,
    MixedImageSizesError,
    TensorImageDataset,
    decode_images,
    estimated_bytes,
)
from .training import checkpoint_problem, last_complete_checkpoint, on_device

logger = logging.getLogger(__name__)

# What a clone of the project's repository holds beside the package and a wheel does not (too large to ship): the
# CIFAR-10 sample in data/, every recipe's default dataset so each runs with no download, and the ViT teacher in
# pretrained/ that examples/distill.py distils by default (its README.md says how it was made). A recipe whose
# argument is still one of these and finds it missing stops before any work (`check_shipped_defaults`).
REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED_SAMPLE = str(REPOSITORY / "data" / "cifar10-sample")
SHIPPED_TEACHER = str(REPOSITORY / "pretrained" / "vit-cifar-teacher")
SHIPPED_DEFAULTS = {
    SHIPPED_SAMPLE: ("the CIFAR-10 sample", "data/cifar10-sample", "a Hub dataset id or a local dataset folder"),
    SHIPPED_TEACHER: ("the CIFAR ViT teacher", "pretrained/vit-cifar-teacher", "a Hub model id or a model folder"),
}


# A default resolved when the arguments are parsed (`resolve_precision_defaults`), not at import.
FROM_THE_DEVICE = "from the device"


def accelerator_bf16() -> bool:
    """Whether this process's GPU multiplies bf16 and TF32 natively (compute capability 8, Ampere, and newer).
    `torch.cuda.is_bf16_supported()` also says yes for older GPUs that emulate bf16 (T4, V100), where transformers
    refuses --tf32 and bf16 runs slowly."""
    if not torch.cuda.is_available() or launched_on_cpu():
        return False
    device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    return torch.cuda.get_device_capability(device)[0] >= 8


def launched_on_cpu() -> bool:
    """Whether `accelerate launch --cpu` (or `use_cpu` in its config) started this process."""
    return os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")


def resolve_precision_defaults(defaults: dict[str, Any], user_fp16: bool) -> dict[str, Any]:
    """bf16 autocast and TF32 matrix products by default on GPUs that have them (`accelerator_bf16`); a user's fp16
    replaces the bf16 default. CPUs keep float32 unless --bf16 is passed: only those that multiply bf16 in hardware
    (AMX, AVX512-BF16) gain from it."""
    if FROM_THE_DEVICE not in (defaults.get("bf16"), defaults.get("tf32")):
        return defaults
    native = accelerator_bf16()
    resolved = dict(defaults)
    if resolved.get("bf16") == FROM_THE_DEVICE:
        resolved["bf16"] = native and not user_fp16
    if resolved.get("tf32") == FROM_THE_DEVICE:
        resolved["tf32"] = True if native else None
    return resolved


def user_gave(argv: list[str] | None, name: str) -> bool:
    """Whether the user set the argument `name` (on the command line, or in the single YAML/JSON file) rather than
    leaving it to the recipe's default."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if len(arguments) == 1 and arguments[0].endswith((".json", ".yaml", ".yml")):
        import yaml

        with open(arguments[0]) as file:
            return name in (yaml.safe_load(file) or {})
    return any(argument.split("=", 1)[0] == f"--{name}" for argument in arguments)


def _asks_for(argv: list[str], flag: str) -> bool:
    """Whether the command line turns a boolean flag on: `--flag`, `--flag true`, `--flag=yes`, ..."""
    for position, argument in enumerate(argv):
        if argument.startswith(f"--{flag}="):
            return argument.split("=", 1)[1].lower() in ("true", "yes", "1")
        if argument == f"--{flag}":
            value = argv[position + 1] if position + 1 < len(argv) else ""
            return value.startswith("--") or value == "" or value.lower() in ("true", "yes", "1")
    return False


# The worker pipeline's decoding processes: this process's share of the cores (torchrun and accelerate launch set
# LOCAL_WORLD_SIZE), at most 8.
DATALOADER_WORKERS = max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))

# TrainingArguments defaults the recipes share (each adds its own model, dataset and output folder). AdamW with a
# cosine schedule, an evaluation and a checkpoint every epoch, the best kept by validation accuracy, TensorBoard.
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 10,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy",
    "greater_is_better": True,
    "logging_steps": 10,
    "report_to": "tensorboard",
    # The lazy image transform needs the image column, which is not a model argument.
    "remove_unused_columns": False,
    "dataloader_num_workers": DATALOADER_WORKERS,
    "dataloader_pin_memory": torch.cuda.is_available(),
    "bf16": FROM_THE_DEVICE,
    "tf32": FROM_THE_DEVICE,
    # Every parameter of our models takes part in each step; DDP's search for unused ones costs a graph walk a step.
    "ddp_find_unused_parameters": False,
    # The Trainer's NaN/inf filter reads the loss on the host every step: on an accelerator, a wait per step.
    "logging_nan_inf_filter": False,
    "seed": 42,
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "aliases": ["--model_path"],
            "help": f"A preset built from scratch ({describe_model_presets()}), "
            "a local directory or Hub id (ours, transformers', timm/... checkpoints), or a timm architecture name.",
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input size; defaults to the preset's or the checkpoint's."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields for presets/timm names as JSON, e.g. '{\"num_hidden_layers\": 4}'."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Allow a checkpoint whose head has another number of labels: a new head is trained."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "sdpa or eager, for models with attention (default: the model's). eager is faster for short "
            "sequences on CPU under --bf16."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code shipped with a checkpoint."})
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id (uoft-cs/cifar10, zalando-datasets/fashion_mnist, ...), a local dataset "
            "folder, or an imagefolder directory."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir for load_dataset (e.g. imagefolder)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column; detected when not given."})
    label_column: str | None = field(default=None, metadata={"help": "Label column; detected when not given."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Validation split; carved from train (stratified, seeded) if absent."}
    )
    test_split: str | None = field(default=None, metadata={"help": "Test split; 'test' when the dataset has one."})
    validation_size: float = field(default=0.1, metadata={"help": "Share of train carved out for validation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation/test images."})
    on_bad_image: str = field(
        default="error",
        metadata={
            "help": "Undecodable images: 'error' stops at the first, naming its row; 'skip' drops them all up front "
            "and counts them."
        },
    )
    check_images: bool = field(
        default=False,
        metadata={"help": "Decode every image once before training, to list (error) or drop (skip) all bad rows."},
    )
    crop: str = field(default="auto", metadata={"help": "Train crop: auto, random_resized, pad or none."})
    crop_padding: int | None = field(
        default=None,
        metadata={"help": "Reflect padding of --crop pad in pixels, the largest shift (default: an eighth of the "
                  "shorter side, 4 at 32 pixels)."},
    )  # fmt: skip
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips in training."})
    color_jitter: float = field(default=0.0, metadata={"help": "Colour jitter strength (0 disables)."})
    auto_augment: str | None = field(
        default=None, metadata={"help": "randaugment, trivialaugment or autoaugment (torchvision)."}
    )
    random_erasing: float = field(default=0.0, metadata={"help": "Probability of random erasing."})
    input_pipeline: str = field(
        default="auto",
        metadata={
            "help": "tensors: decode each split once into memory (cached on disk) and augment whole batches on the "
            "training device; workers: decode and augment each image in dataloader workers; decode_on_device: "
            "workers read the encoded JPEGs, the training device decodes (nvJPEG on a GPU) and augments whole "
            "batches (for large JPEG images when the CPU cores cannot decode as fast as the GPU trains); auto: "
            "tensors when the images share one size, fit in 2 GiB and no per-image augmentation (--auto_augment, "
            "--color_jitter, --random_erasing) is asked for, else workers."
        },
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp alpha (0 disables)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (0 disables)."})


def random_augmentations(data_args: DataArguments) -> list[str]:
    """The data arguments that make training batches random (empty when the train transform is deterministic)."""
    flags = {
        "--crop": data_args.crop != "none",
        "--horizontal_flip": data_args.horizontal_flip,
        "--color_jitter": data_args.color_jitter > 0,
        "--auto_augment": data_args.auto_augment is not None,
        "--random_erasing": data_args.random_erasing > 0,
        "--mixup_alpha": data_args.mixup_alpha > 0,
        "--cutmix_alpha": data_args.cutmix_alpha > 0,
    }
    return [flag for flag, random in flags.items() if random]


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh even if --output_dir holds checkpoints (by default the run resumes)."},
    )
    export: str | None = field(
        default=None,
        metadata={"help": "onnx: also export the trained model to <output_dir>/onnx/model.onnx (its ONNX Runtime "
                  "logits checked against PyTorch's; pushed with the model). Needs the export extra."},
    )  # fmt: skip

    def __post_init__(self):
        if self.export is None:
            return
        if self.export != "onnx":
            raise ValueError(f"--export {self.export!r} is not supported; pass --export onnx, or leave it out.")
        missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:  # said now, not after training
            raise ValueError(
                f"--export onnx needs {missing}: pip install 'hf_vision_distill[export]' (or leave --export out)."
            )


ONNX_FOLDER = "onnx"


def export_output(training_args: TrainingArguments, run_args: RunArguments, trust_remote_code: bool = False) -> None:
    """`--export onnx`: the saved model in the output folder exported to `onnx/` beside it (`export.export_classifier`,
    the folder layout of the Hub's ONNX repos), and a line in the output folder's model card; main process only."""
    if run_args.export is None or not training_args.should_save:
        return
    from .export import ONNX_FILE_NAME, export_classifier, write_card_line

    output_dir = Path(training_args.output_dir)
    exported = export_classifier(output_dir, output_dir / ONNX_FOLDER, trust_remote_code=trust_remote_code)
    height, width = exported.specification.image_size
    write_card_line(
        output_dir,
        f"`{ONNX_FOLDER}/{ONNX_FILE_NAME}`: this model at {height}x{width} in ONNX (opset {exported.opset}, dynamic "
        f"batch; input `pixel_values`, output `logits`); ONNX Runtime's float32 logits match PyTorch's to "
        f"{exported.max_abs_difference:.1e}. Quantise it with `examples/export.py --quantize int8`.",
    )
    logger.info("Exported to %s (ONNX Runtime matches PyTorch to %.1e).", exported.onnx_path,
                exported.max_abs_difference)  # fmt: skip


def parse_arguments(dataclass_types: tuple[type, ...], defaults: dict[str, Any], argv: list[str] | None) -> tuple:
    """Command-line arguments, or a single YAML/JSON file, over a recipe's `defaults` (fields of the dataclasses).

    A file's values go through the same parser as the command line, so they are converted and checked by the
    fields' types (YAML reads `3e-4` as a string, and `one` is no number). Flags must be spelled out in full: a
    prefix (`--num_train_epoch`) is an error, not silently taken for the flag it begins. A run that would train
    nothing (no epochs or steps, a learning rate <= 0) is refused here.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)
    source = "the command line"
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        source, argv = argv[0], _file_arguments(argv[0])
    defaults = resolve_precision_defaults(defaults, user_fp16=_asks_for(argv, "fp16"))
    if launched_on_cpu() and any(TrainingArguments in getattr(kind, "__mro__", ()) for kind in dataclass_types):
        # transformers would refuse --bf16 on a GPU-less launch unless use_cpu is set too: the launch already says so.
        defaults = {**defaults, "use_cpu": True}
    prefix = []
    for name, value in defaults.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            prefix += [f"--{name}", *map(str, value)]
        else:
            prefix += [f"--{name}", str(value)]
    if source == "the command line":
        # argparse keeps the last occurrence, so anything the user passes overrides the defaults placed first.
        parsed = parser.parse_args_into_dataclasses(args=prefix + argv)
    else:
        parser.exit_on_error = False  # a file's bad value becomes an error naming the file, not a usage message
        try:
            parsed = parser.parse_args_into_dataclasses(args=prefix + argv)
        except (argparse.ArgumentError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err
    for group in parsed:
        if isinstance(group, TrainingArguments):
            _check_training_budget(group, source)
    check_shipped_defaults(parsed)
    return parsed


def check_shipped_defaults(groups: Iterable[Any]) -> None:
    """Refuses an argument that is still a default from the project's repository (`SHIPPED_SAMPLE`,
    `SHIPPED_TEACHER`) when that folder is missing, as it is under a wheel install: the error names the flag to pass
    and where the default lives."""
    for group in groups:
        if not dataclasses.is_dataclass(group):
            continue
        for item in dataclasses.fields(group):
            value = getattr(group, item.name, None)
            if not isinstance(value, str) or value not in SHIPPED_DEFAULTS or Path(value).exists():
                continue
            what, where, instead = SHIPPED_DEFAULTS[value]
            raise FileNotFoundError(
                f"--{item.name} defaults to {what} that lives in the project's repository ({where}), and {value} "
                f"does not exist: an installed package (a wheel) does not include {where.split('/')[0]}/. Pass "
                f"--{item.name} ({instead}), or run the recipe from a clone of the project's repository."
            )


def _file_arguments(path: str) -> list[str]:
    """A YAML/JSON file's mapping as command-line arguments (lists as several values, mappings as JSON)."""
    import yaml

    with open(path) as file:
        values = yaml.safe_load(file) or {}  # YAML is a superset of JSON
    if not isinstance(values, dict):
        raise ValueError(f"{path} must map argument names to values, got a {type(values).__name__}.")
    argv = []
    for name, value in values.items():
        if value is None:  # the field's default
            continue
        if isinstance(value, bool):
            argv += [f"--{name}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *(json.dumps(item) if isinstance(item, dict) else str(item) for item in value)]
        elif isinstance(value, dict):
            argv += [f"--{name}", json.dumps(value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def _check_training_budget(training_args: TrainingArguments, source: str) -> None:
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ValueError(
            f"--num_train_epochs {training_args.num_train_epochs} (from {source}) trains nothing; pass a positive "
            "number of epochs, or --max_steps N."
        )
    if training_args.learning_rate <= 0:
        raise ValueError(
            f"--learning_rate {training_args.learning_rate} (from {source}) leaves the model as it starts; pass a "
            "positive learning rate, e.g. 1e-3 from scratch or 5e-5 to fine-tune."
        )


def setup_logging(training_args: TrainingArguments) -> None:
    """Info on the main process, warnings only on the others (TrainingArguments' log_level / log_level_replica)."""
    level = training_args.get_process_log_level()
    if training_args.log_level == "passive" and training_args.should_log:
        # transformers' example scripts do the same: "passive" would keep the library's default, warnings only, and
        # hide what the run decided (input pipeline, resumption, model and data).
        level = logging.INFO
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    for name in ("hf_vision_distill", "__main__"):
        logging.getLogger(name).setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def setup_run(training_args: TrainingArguments) -> None:
    """Logging (`setup_logging`), and cuDNN's autotuner on GPUs: it picks the fastest convolution kernels for the
    first batch's shapes, which stay the same for a whole run (turned off by --full_determinism). Warns, before any
    work, of bf16 autocast on a CPU that only emulates bf16."""
    setup_logging(training_args)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = not training_args.full_determinism
    if training_args.bf16 and training_args.device.type == "cpu" and cpu_multiplies_bf16() is False:
        logger.warning(
            "--bf16 on a CPU without bf16 arithmetic (neither AMX nor AVX512-BF16): PyTorch emulates it, and a "
            "CNN's forward ran 4 (channels-last) to 29 (contiguous) times slower than in float32 on such a CPU "
            "(benchmarks/RESULTS.md). Leave out --bf16 here; it pays on CPUs with AMX or AVX512-BF16 and on GPUs."
        )


def cpu_multiplies_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16), from its flags; `None` where they cannot
    be read (not Linux)."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & {"amx_bf16", "avx512_bf16"})


def load_model(model_args: ModelArguments, id2label: dict[int, str], token: str | None = None) -> LoadedClassifier:
    """The recipe's model (`--model_name_or_path` and the other model arguments) for the dataset's labels.

    A convolutional model is put in channels-last memory format: oneDNN (CPU) and cuDNN (GPU) run their fastest
    convolutions on it, and the tensor pipeline's crops come out in that layout.
    """
    loaded = load_image_classifier(
        model_args.model_name_or_path,
        id2label=id2label,
        image_size=model_args.image_size,
        config_overrides=json.loads(model_args.config_overrides) if model_args.config_overrides else None,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        token=token,
    )
    if is_convolutional(loaded.model):
        loaded.model.to(memory_format=torch.channels_last)
    return loaded


def load_data(data_args: DataArguments, training_args: TrainingArguments) -> ImageClassificationData:
    """The dataset, loaded and checked by the main process first (the other ranks then read its cache)."""
    if not data_args.dataset_name:
        raise ValueError("no dataset: pass --dataset_name (a Hub dataset id or a local folder).")
    with training_args.main_process_first(desc="dataset loading"):
        data = load_image_classification_dataset(
            data_args.dataset_name,
            config_name=data_args.dataset_config_name,
            data_dir=data_args.data_dir,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            train_split=data_args.train_split,
            validation_split=data_args.validation_split,
            test_split=data_args.test_split,
            validation_size=data_args.validation_size,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            seed=training_args.seed,
            token=training_args.hub_token,
        )
        # Skipping scans once up front (cached by datasets), so no training batch can end up empty. Otherwise the
        # evaluation splits are scanned (they are small, and a bad image there would stop the run after a whole
        # epoch of training); the training split's first bad image stops the lazy transform, naming its row.
        if data_args.check_images or data_args.on_bad_image == "skip":
            data = drop_undecodable_images(data, on_bad_image=data_args.on_bad_image,
                                           num_proc=_scan_processes(data, list(data.dataset)))  # fmt: skip
        else:
            evaluation_splits = [split for split in data.dataset if split != "train"]
            data = drop_undecodable_images(data, num_proc=_scan_processes(data, evaluation_splits),
                                           splits=evaluation_splits)  # fmt: skip
    names = [data.id2label[index] for index in sorted(data.id2label)]
    logger.info("Dataset %s: %s images; %d classes (%s%s)", data_args.dataset_name,
                ", ".join(f"{split} {len(rows)}" for split, rows in data.dataset.items()), data.num_labels,
                ", ".join(names[:8]), ", ..." if len(names) > 8 else "")  # fmt: skip
    return data


def optimizer_steps(train_images: int, training_args: TrainingArguments) -> int:
    """A run's optimizer steps as the Trainer counts them: batches per process per epoch, accumulated, times epochs
    (or `--max_steps`)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(train_images / (training_args.per_device_train_batch_size * training_args.world_size))
    per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
    return math.ceil(per_epoch * training_args.num_train_epochs)


def log_often_enough(
    training_args: TrainingArguments, train_images: int, argv: list[str] | None, points: int = 20
) -> TrainingArguments:
    """`--logging_steps` lowered so that a run's loss curves get about `points` points (every step for short runs;
    `evaluation.logging_steps_for_curves`), unless the user set it."""
    if user_gave(argv, "logging_steps"):
        return training_args
    steps = optimizer_steps(train_images, training_args)
    logging_steps = logging_steps_for_curves(steps, points, at_most=int(training_args.logging_steps))
    return dataclasses.replace(training_args, logging_steps=logging_steps)


def reported_split(eval_splits: Iterable[str]) -> tuple[str, str] | None:
    """The split a run's results are reported on, and its metric prefix: the test split, else the validation split
    (a dataset without a test split), else `None`."""
    splits = set(eval_splits)
    if "test" in splits:
        return "test", "test"
    if "validation" in splits:
        return "validation", "eval"
    return None


def _scan_processes(data: ImageClassificationData, splits: list[str]) -> int | None:
    # Worker processes pay for their start-up only on large splits.
    rows = sum(len(data.dataset[split]) for split in splits)
    return DATALOADER_WORKERS if DATALOADER_WORKERS > 1 and rows > 20_000 else None


def evaluation_settings_for(data: ImageClassificationData, training_args: TrainingArguments) -> TrainingArguments:
    """Without a validation split there is nothing to evaluate during training or to pick a best checkpoint by."""
    evaluates = training_args.eval_strategy != "no" or training_args.load_best_model_at_end
    if "validation" in data.dataset or not evaluates:
        return training_args
    logger.warning("No validation split (validation_size=0?): evaluating at the end only, keeping the last model.")
    return dataclasses.replace(training_args, eval_strategy="no", load_best_model_at_end=False)


def build_datasets(
    data: ImageClassificationData,
    data_args: DataArguments,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    row_outputs: dict[str, dict] | None = None,
    interpolation: str = "bilinear",
    normalize: bool = True,
) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
    """The training split with augmentation and the validation/test splits with the eval transform, all lazy.

    `row_outputs` maps a split name to per-row arrays (e.g. cached teacher logits) its batches carry;
    `interpolation` is the model's resize interpolation (`LoadedClassifier.interpolation`); `normalize=False` leaves
    images uint8 for collators that normalise on the device (`build_collators(..., mean=, std=)`).
    """
    train_transform = build_transforms(
        image_size,
        train=True,
        mean=mean,
        std=std,
        crop=data_args.crop,
        crop_padding=data_args.crop_padding,
        horizontal_flip=data_args.horizontal_flip,
        color_jitter=data_args.color_jitter,
        auto_augment=data_args.auto_augment,
        random_erasing=data_args.random_erasing,
        interpolation=interpolation,
        normalize=normalize,
    )
    eval_transform = build_transforms(
        image_size, train=False, mean=mean, std=std, interpolation=interpolation, normalize=normalize
    )

    def prepare(split: str, transform) -> datasets.Dataset:
        return with_image_transform(
            data.dataset[split],
            transform,
            on_bad_image=data_args.on_bad_image,
            source_split=data.source_splits[split],
            row_outputs=(row_outputs or {}).get(split),
        )

    eval_splits = [split for split in ("validation", "test") if split in data.dataset]
    return prepare("train", train_transform), {split: prepare(split, eval_transform) for split in eval_splits}


def build_collators(
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> tuple[ImageClassificationCollator, ImageClassificationCollator, TrainingArguments]:
    """Training and evaluation collators, and the training arguments to use with them.

    Mixed batches carry soft targets, which the Trainer's label smoother cannot take: with mixup/cutmix the label
    smoothing moves into the training collator. With `mean` and `std` the collators take uint8 images and normalise
    (and mix) them on the training device.
    """
    label_smoothing, training_args = smoothing_in_the_collator(data_args, training_args)
    train_collator = ImageClassificationCollator(
        num_labels=data.num_labels,
        mixup_alpha=data_args.mixup_alpha,
        cutmix_alpha=data_args.cutmix_alpha,
        label_smoothing=label_smoothing,
        mean=mean,
        std=std,
    )
    return train_collator, ImageClassificationCollator(mean=mean, std=std), training_args


def smoothing_in_the_collator(
    data_args: DataArguments, training_args: TrainingArguments
) -> tuple[float, TrainingArguments]:
    """Mixed batches carry soft targets, which the Trainer's label smoother cannot take: with mixup/cutmix the label
    smoothing moves from the training arguments into the training collator. Returns the collator's smoothing and the
    training arguments to use with it."""
    if data_args.mixup_alpha == 0 and data_args.cutmix_alpha == 0:
        return 0.0, training_args
    return training_args.label_smoothing_factor, dataclasses.replace(training_args, label_smoothing_factor=0.0)


INPUT_PIPELINE_CHOICES = ("auto", "tensors", "workers", "decode_on_device")


@dataclass
class RecipeInputs:
    """What a recipe trains and evaluates on: the datasets, their collators, the training arguments that go with them
    (the tensor pipeline needs no dataloader workers) and which input pipeline was chosen."""

    train_dataset: torch.utils.data.Dataset
    eval_datasets: dict[str, torch.utils.data.Dataset]
    train_collator: Callable
    eval_collator: Callable
    training_args: TrainingArguments
    pipeline: str


def choose_input_pipeline(
    data: ImageClassificationData, data_args: DataArguments, memory_budget: int = DEFAULT_MEMORY_BUDGET_BYTES
) -> str:
    """`"tensors"`, `"workers"` or `"decode_on_device"` for `--input_pipeline` (see `DataArguments.input_pipeline`),
    decided before any image is decoded but the first of each split; a forced choice that cannot work fails here,
    naming the fix."""
    requested = data_args.input_pipeline
    if requested not in INPUT_PIPELINE_CHOICES:
        raise ValueError(
            f"--input_pipeline {requested!r} is not supported; pass one of {list(INPUT_PIPELINE_CHOICES)}."
        )
    if requested == "workers":
        return "workers"
    per_image = {"--auto_augment": data_args.auto_augment is not None, "--color_jitter": data_args.color_jitter > 0,
                 "--random_erasing": data_args.random_erasing > 0}  # fmt: skip
    per_image = [flag for flag, on in per_image.items() if on]
    if per_image:
        if requested in ("tensors", "decode_on_device"):
            raise ValueError(
                f"--input_pipeline {requested} cannot apply {per_image}: they transform one PIL image at a time in "
                "the dataloader workers. Pass --input_pipeline workers (or auto), or leave them out."
            )
        logger.info("Input pipeline: workers (%s run per image in dataloader workers).", ", ".join(per_image))
        return "workers"
    if requested == "decode_on_device":
        for split, images in data.dataset.items():
            if not split_is_jpeg(images):
                raise ValueError(
                    f"--input_pipeline decode_on_device decodes JPEG images, and split '{split}' stores others (its "
                    f"first image: {describe_first_image(images)}). Pass --input_pipeline workers (or auto)."
                )
        return "decode_on_device"
    try:
        size = sum(estimated_bytes(split) for split in data.dataset.values())
    except Exception as err:  # an undecodable first image: the worker pipeline reports it with its row
        if requested == "tensors":
            raise
        logger.info("Input pipeline: workers (the first image of a split did not decode: %r).", err)
        return "workers"
    if size > memory_budget:
        message = (f"the decoded splits would take {size / 2**30:.1f} GiB, over the tensor pipeline's budget of "
                   f"{memory_budget / 2**30:.1f} GiB")  # fmt: skip
        if requested == "tensors":
            raise ValueError(f"--input_pipeline tensors: {message}. Pass --input_pipeline workers (or auto).")
        logger.info("Input pipeline: workers (%s).", message)
        return "workers"
    return "tensors"


def build_inputs(
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    interpolation: str = "bilinear",
    row_outputs: dict[str, dict] | None = None,
) -> RecipeInputs:
    """The datasets and collators for a model's input (`image_size`, `mean`, `std`, `interpolation`, from
    `LoadedClassifier`), on the input pipeline `choose_input_pipeline` picks.

    Tensor pipeline: every split decoded once (by the main process first; the others read its cache file), batches
    augmented on `training_args.device`, no dataloader workers. Worker pipeline: `build_datasets` and
    `build_collators`. `row_outputs` maps a split to per-row arrays (cached teacher logits) its batches carry.
    """
    pipeline = choose_input_pipeline(data, data_args)
    if pipeline == "tensors":
        decoded, error = {}, None
        with training_args.main_process_first(desc="decoding images"):
            try:
                decoded = {split: decode_images(data.dataset[split], on_bad_image=data_args.on_bad_image,
                                                source_split=data.source_splits[split])
                           for split in data.dataset}  # fmt: skip
            except MixedImageSizesError as err:  # raised on every process alike, after the barrier
                error = err
        if error is not None:
            if data_args.input_pipeline == "tensors":
                raise error
            logger.info("Input pipeline: workers (%s)", str(error).split(", so ")[0])
            pipeline = "workers"
    if pipeline == "decode_on_device":
        return _decode_on_device_inputs(data, data_args, training_args, image_size, mean, std, interpolation,
                                        row_outputs)  # fmt: skip
    if pipeline == "workers":
        # uint8 images leave the workers (a quarter of float32's bytes) and are normalised on the device, unless
        # random erasing, which erases normalised images to the mean colour, must run in the workers.
        normalize_on_device = data_args.random_erasing == 0
        train_dataset, eval_datasets = build_datasets(
            data, data_args, image_size, mean, std, row_outputs=row_outputs, interpolation=interpolation,
            normalize=not normalize_on_device,
        )  # fmt: skip
        statistics = {"mean": mean, "std": std} if normalize_on_device else {}
        train_collator, eval_collator, training_args = build_collators(data, data_args, training_args, **statistics)
        # Workers kept from epoch to epoch (and from one evaluation to the next) instead of started afresh each time;
        # batches in pinned memory copied to the device without waiting for the copy.
        persistent = training_args.dataloader_num_workers > 0
        accelerator_config = training_args.accelerator_config
        if training_args.dataloader_pin_memory:
            accelerator_config = dataclasses.replace(accelerator_config, non_blocking=True)
        training_args = dataclasses.replace(training_args, dataloader_persistent_workers=persistent,
                                            accelerator_config=accelerator_config)  # fmt: skip
        logger.info("Input pipeline: workers (%d per process, persistent: %s).",
                    training_args.dataloader_num_workers, persistent)  # fmt: skip
        return RecipeInputs(train_dataset, eval_datasets, train_collator, eval_collator, training_args, "workers")
    return _tensor_inputs(decoded, data, data_args, training_args, image_size, mean, std, interpolation, row_outputs)


def initialize_from_data(loaded: LoadedClassifier, inputs: RecipeInputs, device: torch.device,
                         num_images: int = 5000) -> None:  # fmt: skip
    """Data-dependent initialisation of a model built from scratch that asks for it (`init_from_data(pixel_values)`,
    e.g. AirbenchCNN's whitening filters): the first `num_images` training images through the evaluation transform.
    Every process reads the same images, so every replica starts alike; a resumed run then loads its checkpoint."""
    model = loaded.model
    if not loaded.from_scratch or not callable(getattr(model, "init_from_data", None)):
        return
    dataset = inputs.train_dataset
    subset = torch.utils.data.Subset(dataset, range(min(num_images, len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=500, collate_fn=inputs.eval_collator)
    pixel_values = torch.cat(
        [on_device(inputs.eval_collator, send_to_device(batch, device))["pixel_values"].float() for batch in loader]
    )
    model.init_from_data(pixel_values.to(model.device))
    logger.info("Initialised %s from %d training images.", type(model).__name__, len(pixel_values))


def _device_collators(
    collator_class: type[DeviceImageTransform],
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    interpolation: str,
    train_only: dict[str, Any] | None = None,
    **extra: Any,
) -> tuple[DeviceImageTransform, DeviceImageTransform, TrainingArguments]:
    """The training and evaluation collators of a pipeline that augments on the device (`extra` arguments for both,
    `train_only` for the training one), and the training arguments with label smoothing moved into the collator
    (`smoothing_in_the_collator`)."""
    label_smoothing, training_args = smoothing_in_the_collator(data_args, training_args)
    common = {"mean": mean, "std": std, "interpolation": interpolation, "device": training_args.device,
              "seed": training_args.data_seed if training_args.data_seed is not None else training_args.seed,
              **extra}  # fmt: skip
    train_collator = collator_class(
        image_size, train=True, crop=data_args.crop, crop_padding=data_args.crop_padding,
        horizontal_flip=data_args.horizontal_flip,
        num_labels=data.num_labels, mixup_alpha=data_args.mixup_alpha, cutmix_alpha=data_args.cutmix_alpha,
        label_smoothing=label_smoothing, **common, **(train_only or {}),
    )  # fmt: skip
    return train_collator, collator_class(image_size, train=False, **common), training_args


def _tensor_inputs(
    decoded: dict[str, DecodedImages],
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    interpolation: str,
    row_outputs: dict[str, dict] | None,
) -> RecipeInputs:
    device = training_args.device
    train_collator, eval_collator, training_args = _device_collators(
        DeviceImageTransform, data, data_args, training_args, image_size, mean, std, interpolation
    )
    # Batches are one indexing operation in the main process and come out on the device: workers would only add
    # processes, and pinning applies to host memory. The collator takes whole batches, which the Trainer's column
    # remover (for datasets that are not a datasets.Dataset) would take for lists of examples.
    changes = {"remove_unused_columns": False, "dataloader_num_workers": 0, "dataloader_pin_memory": False,
               "dataloader_persistent_workers": False, "dataloader_prefetch_factor": None}  # fmt: skip
    training_args = dataclasses.replace(training_args, **changes)
    datasets_by_split = {split: TensorImageDataset(images, (row_outputs or {}).get(split))
                         for split, images in decoded.items()}  # fmt: skip
    first = next(iter(decoded.values()))
    logger.info(
        "Input pipeline: tensors (%s images of %dx%d decoded once, %.2f GiB; batches augmented on %s).",
        " + ".join(f"{split} {len(images)}" for split, images in decoded.items()), *first.image_size,
        sum(images.images.numel() for images in decoded.values()) / 2**30, device,
    )  # fmt: skip
    eval_datasets = {split: dataset for split, dataset in datasets_by_split.items() if split != "train"}
    return RecipeInputs(datasets_by_split["train"], eval_datasets, train_collator, eval_collator, training_args,
                        "tensors")  # fmt: skip


def _decode_on_device_inputs(
    data: ImageClassificationData,
    data_args: DataArguments,
    training_args: TrainingArguments,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    interpolation: str,
    row_outputs: dict[str, dict] | None,
) -> RecipeInputs:
    train_collator, eval_collator, training_args = _device_collators(
        DeviceJpegTransform, data, data_args, training_args, image_size, mean, std, interpolation,
        train_only={"source_split": data.source_splits.get("train")}, on_bad_image=data_args.on_bad_image,
    )  # fmt: skip
    datasets_by_split = {split: EncodedImageDataset(images, (row_outputs or {}).get(split))
                         for split, images in data.dataset.items()}  # fmt: skip
    # Workers read files and EXIF headers only; the batch holds encoded bytes, which the Trainer's column remover
    # (for datasets that are not a datasets.Dataset) would take for examples, and pinning does not apply to.
    accelerator_config = dataclasses.replace(training_args.accelerator_config, non_blocking=True)
    training_args = dataclasses.replace(
        training_args, remove_unused_columns=False, dataloader_pin_memory=False, accelerator_config=accelerator_config,
        dataloader_persistent_workers=training_args.dataloader_num_workers > 0,
    )  # fmt: skip
    logger.info("Input pipeline: decode_on_device (%d workers per process read encoded images; %s decodes them).",
                training_args.dataloader_num_workers, training_args.device)  # fmt: skip
    eval_datasets = {split: dataset for split, dataset in datasets_by_split.items() if split != "train"}
    return RecipeInputs(datasets_by_split["train"], eval_datasets, train_collator, eval_collator, training_args,
                        "decode_on_device")  # fmt: skip


def hyperparameters_for_card(data_args: DataArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The training settings a model card repeats: budget, optimisation, augmentation, precision."""
    augmentations = [flag.removeprefix("--") for flag in random_augmentations(data_args)]
    settings = {
        "epochs": training_args.num_train_epochs if training_args.max_steps <= 0 else None,
        "max_steps": training_args.max_steps if training_args.max_steps > 0 else None,
        "batch size (all devices, per update)": training_args.per_device_train_batch_size
        * training_args.world_size
        * training_args.gradient_accumulation_steps,
        "optimizer": str(training_args.optim.value if hasattr(training_args.optim, "value") else training_args.optim),
        "learning rate": training_args.learning_rate,
        "schedule": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warm-up (steps, or share of them when < 1)": training_args.warmup_steps,
        "weight decay": training_args.weight_decay,
        "label smoothing": training_args.label_smoothing_factor,
        "augmentations": augmentations
        + [f"{name}={value}" for name, value in (("auto_augment", data_args.auto_augment),) if value],
        "mixed precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        "seed": training_args.seed,
    }
    return {name: value for name, value in settings.items() if value is not None}


def write_model_card(
    trainer: Trainer,
    loaded: LoadedClassifier,
    *,
    recipe: str,
    argv: list[str] | None,
    model_args: ModelArguments,
    data_args: DataArguments,
    metrics: dict[str, float],
    extra_hyperparameters: dict[str, Any] | None = None,
    **card_fields: Any,
) -> None:
    """Renders the run's model card (`hub.build_model_card`) into the output folder's README.md, on the main
    process, and makes it the trainer's `model_card`; `card_fields` adds the teacher, distillation settings and
    comparison of a distillation run."""
    args = trainer.args
    if not args.should_save:
        return
    card = build_model_card(
        loaded.model,  # the model itself, not the trainer's (a distillation trains it with its adapters)
        repo_id=args.hub_model_id or args.output_dir,
        dataset_name=data_args.dataset_name,
        recipe=recipe,
        results=results_from_metrics(metrics),
        hyperparameters={**hyperparameters_for_card(data_args, args), **(extra_hyperparameters or {})},
        input_size=loaded.image_size,
        image_mean=loaded.image_mean,
        image_std=loaded.image_std,
        command=recipe_command(recipe, argv),
        base_model=None if loaded.from_scratch else model_args.model_name_or_path,
        **card_fields,
    )
    trainer.model_card = card  # the card the Trainer writes in place of its own (ImageClassificationTrainer)
    card.save(Path(args.output_dir) / "README.md")


def recipe_command(script: str, argv: list[str] | None) -> str:
    """The command line that ran a recipe, for its model card."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *(shlex.quote(argument) for argument in arguments)])


def check_hub_access(training_args: TrainingArguments) -> None:
    """With `--push_to_hub`, fail before training rather than after it: a malformed `--hub_model_id`, or no token
    the Hub accepts, each gives an error that says what to do."""
    if not training_args.push_to_hub:
        return
    if training_args.hub_model_id:
        try:
            validate_repo_id(training_args.hub_model_id)
        except HFValidationError as err:
            raise ValueError(
                f"--hub_model_id {training_args.hub_model_id!r} is not a valid repo id: {err} Use 'user_or_org/name'."
            ) from err
    try:
        HfApi().whoami(token=training_args.hub_token)
    except LocalTokenNotFoundError as err:
        raise ValueError(
            "--push_to_hub needs a Hub token: log in with `hf auth login`, set HF_TOKEN, or pass --hub_token."
        ) from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise ValueError(
                "--push_to_hub: the Hub rejected the token (401). Log in again with `hf auth login`, or set a valid "
                "HF_TOKEN / --hub_token (it needs write access)."
            ) from err
        raise


def push_output(trainer: Trainer) -> None:
    """Uploads the run's output folder (the model, its image processor, the card `write_model_card` rendered) to
    `--hub_model_id` the way `hub.push_classifier` uploads a model (`hub.upload_classifier_folder`: one commit, then
    the card pinned to it), from the main process, after any checkpoint upload still in flight. A failure says the
    trained model is safe on disk and how to push it again."""
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    try:
        if getattr(trainer, "push_in_progress", None) is not None:
            trainer.push_in_progress.wait_until_done()  # the Trainer's checkpoint pushes (hub_strategy)
        upload_classifier_folder(
            args.output_dir,
            trainer.hub_model_id,
            private=args.hub_private_repo,
            token=args.hub_token,
            revision=args.hub_revision,
            commit_message="End of training",
            ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"],  # no checkpoints, no recipe-private files
        )
    except Exception as err:
        raise RuntimeError(
            f"pushing {args.output_dir} to the Hub repo {trainer.hub_model_id} failed: {err}\nThe trained model is "
            f"saved in {args.output_dir}; push it again with: hf upload {trainer.hub_model_id} {args.output_dir} "
            "--exclude '_*' --exclude 'checkpoint-*'"
        ) from err


def run_recipe(main: Callable[[], Any]) -> None:
    """Runs a recipe's `main` as a script, then tears down the process group that a distributed launch (torchrun,
    `accelerate launch`) started: left to the interpreter's exit, Gloo's worker threads can outlive it and abort the
    process ("terminate called without an active exception", SIGABRT) after the run has finished."""
    try:
        main()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# What a run's output folder records of the arguments that made it, to compare a rerun's with.
RUN_ARGUMENTS_NAME = "run_arguments.json"
# Arguments that may change when a run is resumed: where and how it logs, reports, saves, loads data and runs,
# not what it trains. Names, or prefixes ending in "_".
FREE_TO_CHANGE = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_", "log_", "log_level", "report_to",
    "run_name", "project", "trackio_", "push_to_hub", "hub_", "dataloader_", "per_device_eval_batch_size",
    "max_eval_samples", "eval_accumulation_steps", "eval_use_gather_object", "eval_do_concat_batches", "eval_on_start",
    "eval_delay", "batch_eval_metrics", "disable_tqdm", "save_", "input_pipeline", "num_overlay_images",
    "check_images", "export",
    "use_cpu", "bf16", "bf16_", "fp16", "fp16_", "tf32", "torch_compile", "torch_compile_", "torch_empty_cache_steps",
    "ddp_", "local_rank", "include_", "skip_memory_metrics", "debug", "do_train", "do_eval", "do_predict",
    "trust_remote_code", "enable_jit_checkpoint", "restore_callback_states_from_checkpoint", "ignore_data_skip",
    "auto_find_batch_size", "gradient_checkpointing", "gradient_checkpointing_", "activation_checkpointing",
    "activation_checkpointing_", "use_cache", "use_liger_kernel", "liger_", "remove_unused_columns", "accelerator_",
    "fsdp", "fsdp_", "deepspeed", "parallelism_config", "average_tokens_across_devices",
)  # fmt: skip
# The budget: a finished run may be extended (it continues from its last checkpoint), not shortened.
BUDGET_ARGUMENTS = ("num_train_epochs", "max_steps")


@dataclass
class OutputFolder:
    """What `prepare_output_dir` found: the checkpoint to resume from (`None`: train from the start) and whether the
    folder holds this very run, finished (`results` then has its saved metrics, and nothing is to be done).

    `record_arguments()`, called as training starts, writes the run's arguments for the next rerun to compare with:
    not earlier, so a run refused for a bad argument leaves nothing behind.
    """

    checkpoint: str | None
    finished: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict, repr=False)
    record_path: Path | None = None
    should_save: bool = True

    def record_arguments(self) -> None:
        if not self.should_save or self.record_path is None:
            return
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.record_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.record, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.record_path)  # whole or not at all


def arguments_record(groups: tuple) -> dict[str, Any]:
    """A run's parsed arguments as one JSON-ready mapping (TrainingArguments' own `to_dict`, with tokens hidden)."""
    record = {}
    for group in groups:
        values = group.to_dict() if isinstance(group, TrainingArguments) else dataclasses.asdict(group)
        record.update(values)
    return json.loads(json.dumps(record, default=str))


def _free_to_change(name: str) -> bool:
    return any(name.startswith(free) if free.endswith("_") else name == free for free in FREE_TO_CHANGE)


def prepare_output_dir(
    groups: tuple, training_args: TrainingArguments, run_args: RunArguments, results_name: str = "all_results.json"
) -> OutputFolder:
    """Decides, before any expensive work, what a recipe does with its output folder.

    - `--overwrite_output_dir`: starts afresh; earlier `checkpoint-N` folders are removed (a later rerun would
      otherwise resume from one of them).
    - `--resume_from_checkpoint DIR`: that checkpoint, refused with the reason if any of its files is incomplete.
    - Otherwise the last complete checkpoint (`training.last_complete_checkpoint`, which passes over incomplete ones
      naming why). The arguments of the run that made the folder (`run_arguments.json`) are compared with these:
      any change to what is trained (model, data, optimisation, augmentation, seed, ...) is refused, naming the
      arguments and `--overwrite_output_dir`; a longer budget (`--num_train_epochs`, `--max_steps`) continues the run,
      said loudly; a shorter one is refused. A rerun of a finished run (its last checkpoint at its last step, and
      `results_name` written) is `finished`: the recipe trains, evaluates and writes nothing.

    `groups` are the recipe's parsed argument dataclasses, recorded by `OutputFolder.record_arguments`.
    """
    output_dir = Path(training_args.output_dir)
    record_path = output_dir / RUN_ARGUMENTS_NAME
    record = arguments_record(groups)

    def folder(**found) -> OutputFolder:
        return OutputFolder(**found, record=record, record_path=record_path, should_save=training_args.should_save)

    if run_args.overwrite_output_dir:
        # Also in side runs' folders ("_baseline"): they resume by themselves.
        stale = sorted(
            [*output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), *output_dir.glob(f"_*/{PREFIX_CHECKPOINT_DIR}-*")]
        )
        if stale and training_args.should_save:
            logger.info("--overwrite_output_dir: removing %d earlier checkpoint(s) in %s.", len(stale), output_dir)
            for stale_folder in stale:
                shutil.rmtree(stale_folder, ignore_errors=True)
        return folder(checkpoint=None)
    if training_args.resume_from_checkpoint is not None:
        problem = checkpoint_problem(training_args.resume_from_checkpoint)
        if problem:
            raise ValueError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: {problem}. Pass an earlier "
                "checkpoint, or leave the flag out to resume from the last complete one in --output_dir."
            )
        return folder(checkpoint=training_args.resume_from_checkpoint)
    checkpoint = last_complete_checkpoint(str(output_dir))
    if checkpoint is None:
        return folder(checkpoint=None)
    if not record_path.is_file():
        logger.warning("Resuming from %s, which has no record of the arguments that made it (%s); pass "
                       "--overwrite_output_dir to start afresh.", checkpoint, RUN_ARGUMENTS_NAME)  # fmt: skip
        return folder(checkpoint=checkpoint)
    previous = json.loads(record_path.read_text(encoding="utf-8"))
    changed = {name: (previous.get(name), value) for name, value in record.items()
               if previous.get(name) != value and not _free_to_change(name)}  # fmt: skip
    budget = {name: change for name, change in changed.items() if name in BUDGET_ARGUMENTS}
    others = {name: change for name, change in changed.items() if name not in BUDGET_ARGUMENTS}
    if others:
        described = "; ".join(f"--{name} {new!r} (the run there: {old!r})" for name, (old, new) in others.items())
        raise ValueError(
            f"{output_dir} holds a run made with other arguments: {described}. Pass --overwrite_output_dir to train "
            "afresh there, or another --output_dir."
        )
    shorter = {name: (old, new) for name, (old, new) in budget.items()
               if isinstance(old, (int, float)) and isinstance(new, (int, float)) and 0 < new < old}  # fmt: skip
    if shorter:
        described = "; ".join(f"--{name} {new} (the run there: {old})" for name, (old, new) in shorter.items())
        raise ValueError(
            f"{output_dir} holds a run with a longer budget: {described}. Pass --overwrite_output_dir to train the "
            "shorter run afresh, or another --output_dir."
        )
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    step, last_step = state.get("global_step", 0), state.get("max_steps", 0)
    if budget:
        described = ", ".join(f"--{name} {old} -> {new}" for name, (old, new) in budget.items())
        logger.warning("Continuing the run in %s from %s (epoch %.2f, step %d) with a longer budget: %s.",
                       output_dir, checkpoint, state.get("epoch") or 0.0, step, described)  # fmt: skip
        return folder(checkpoint=checkpoint)
    results_path = output_dir / results_name
    if last_step and step >= last_step and results_path.is_file():
        logger.warning(
            "%s holds this run, finished (step %d of %d); nothing to train. Its results are in %s. Pass "
            "--overwrite_output_dir to train it again, or a larger --num_train_epochs to continue it.",
            output_dir, step, last_step, results_path,
        )  # fmt: skip
        return folder(checkpoint=checkpoint, finished=True,
                      results=json.loads(results_path.read_text(encoding="utf-8")))  # fmt: skip
    logger.info("Resuming from %s at epoch %.2f (step %d of %d); pass --overwrite_output_dir to start afresh.",
                checkpoint, state.get("epoch") or 0.0, step, last_step)  # fmt: skip
    return folder(checkpoint=checkpoint)


def checkpoint_to_resume(training_args: TrainingArguments, run_args: RunArguments) -> str | None:
    """`--resume_from_checkpoint` if given, else the last complete checkpoint in the output folder (unless
    `--overwrite_output_dir`): for a side run inside a recipe's folder (distill.py's baseline), which the recipe's
    `prepare_output_dir` has checked."""
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if run_args.overwrite_output_dir:
        return None
    checkpoint = last_complete_checkpoint(training_args.output_dir)
    if checkpoint:
        logger.info("Resuming from %s; pass --overwrite_output_dir to start afresh.", checkpoint)
    return checkpoint


__all__ = [
    "SHIPPED_SAMPLE",
    "SHIPPED_TEACHER",
    "TRAINING_DEFAULTS",
    "DataArguments",
    "ModelArguments",
    "RunArguments",
    "RecipeInputs",
    "OutputFolder",
    "prepare_output_dir",
    "build_collators",
    "build_inputs",
    "choose_input_pipeline",
    "build_datasets",
    "check_hub_access",
    "check_shipped_defaults",
    "checkpoint_to_resume",
    "evaluation_settings_for",
    "export_output",
    "hyperparameters_for_card",
    "load_data",
    "load_model",
    "log_often_enough",
    "optimizer_steps",
    "reported_split",
    "parse_arguments",
    "push_output",
    "random_augmentations",
    "recipe_command",
    "is_convolutional",
    "setup_logging",
    "setup_run",
    "user_gave",
    "write_model_card",
]
