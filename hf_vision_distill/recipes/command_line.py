"""The recipes' command line: argument dataclasses, parsing over per-recipe defaults (YAML/JSON files too), the
checks made before any work, precision defaults from the device, logging, and the entry point."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from ..models.loading import describe_model_presets
from ..profiling import cpu_flags

logger = logging.getLogger(__name__)

# What a clone of the project's repository holds beside the package and a wheel does not (too large to ship): the
# CIFAR-10 sample in data/, every recipe's default dataset so each runs with no download, and the CNN teacher in
# pretrained/ that examples/distill.py distils by default (its README.md says how it was made). A recipe whose
# argument is still one of these and finds it missing stops before any work (`check_shipped_defaults`).
REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED_SAMPLE = str(REPOSITORY / "data" / "cifar10-sample")
SHIPPED_TEACHER = str(REPOSITORY / "pretrained" / "cnn-cifar10-teacher")
SHIPPED_DEFAULTS = {
    SHIPPED_SAMPLE: ("the CIFAR-10 sample", "data/cifar10-sample", "a Hub dataset id or a local dataset folder"),
    SHIPPED_TEACHER: ("the CNN teacher", "pretrained/cnn-cifar10-teacher", "a Hub model id or a model folder"),
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


def _given_values(argv: list[str] | None, name: str) -> list[str | bool]:
    """The values the command line (or its single YAML/JSON file, read as `parse_arguments` reads it) gives the
    argument `name` under any of the parser's spellings (`--name`, `--name-with-dashes`, an alias), in order; a
    flag with no value (before another flag or at the end) gives True. A file's `name: null` gives nothing."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = _file_arguments(argv[0])
    spellings = {f"--{name}", f"--{name.replace('_', '-')}", *_aliases().get(name, ())}
    values = []
    for position, argument in enumerate(argv):
        flag, equals, value = argument.partition("=")
        if flag not in spellings:
            continue
        if equals:
            values.append(value)
        else:
            following = argv[position + 1] if position + 1 < len(argv) else "--"
            values.append(True if following.startswith("--") else following)
    return values


@functools.cache
def _aliases() -> dict[str, list[str]]:
    """The other spellings (`"aliases"` in a field's metadata, such as --model_path) of this module's arguments."""
    return {
        spec.name: spec.metadata["aliases"]
        for kind in (ModelArguments, DataArguments, RunArguments)
        for spec in dataclasses.fields(kind)
        if "aliases" in spec.metadata
    }


def user_gave(argv: list[str] | None, name: str) -> bool:
    """Whether the user set the argument `name` (on the command line, or in the single YAML/JSON file) rather than
    leaving it to the recipe's default."""
    return bool(_given_values(argv, name))


def asks_for(argv: list[str] | None, flag: str) -> bool:
    """Whether the command line (or the single YAML/JSON file) turns a boolean flag on: `--flag`, `--flag true`,
    `--flag=y`, ... (as HfArgumentParser reads booleans; the last occurrence wins, as in argparse). A value that is no
    boolean counts as off here: parsing refuses it with the fix."""
    values = _given_values(argv, flag)
    if not values:
        return False
    try:
        return string_to_bool(values[-1])
    except argparse.ArgumentTypeError:
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
    defaults = resolve_precision_defaults(defaults, user_fp16=asks_for(argv, "fp16"))
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
    """Whether this CPU multiplies bf16 in hardware (x86: AMX or AVX512-BF16; Arm: its BF16 extension), from its
    flags; `None` where they cannot be read (not Linux) or the CPU is neither."""
    flags = cpu_flags()
    if flags is None:
        return None
    if flags & {"amx_bf16", "avx512_bf16", "bf16"}:
        return True
    return False if "sse2" in flags or "asimd" in flags else None


def run_recipe(main: Callable[[], Any]) -> None:
    """Runs a recipe's `main` as a script, then tears down the process group that a distributed launch (torchrun,
    `accelerate launch`) started: left to the interpreter's exit, Gloo's worker threads can outlive it and abort the
    process ("terminate called without an active exception", SIGABRT) after the run has finished."""
    try:
        main()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
