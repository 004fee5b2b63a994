"""The GPU check: what the project can only learn on a GPU, in one call of at most 8 minutes on one H200.

    python benchmarks/gpu_check.py                       # on the GPU machine (benchmarks/README.md: the exact call)
    python benchmarks/gpu_check.py --device cpu --quick  # dry mode: every section, tiny sizes, on CPU (tested)
    python benchmarks/gpu_check.py --sections throughput attention -- --dataloader_num_workers 8

Sections, in priority order; each is timed and wrapped, so a failure records its error and the next one runs:

1. environment: torch, CUDA, transformers, timm, accelerate, datasets, evaluate versions; the GPU, bf16 support.
2. distillation: `examples/distill.py` on the shipped sample under `--bf16` (finishes, every logged loss finite;
   teacher and student test accuracy beside the README's CPU figures).
3. throughput: the measured bf16 matmul peak, then each model's bare training step, images/s and MFU
   (3 x forward FLOPs x images/s / peak), channels_last and contiguous for the CNNs
   (benchmarks/training_throughput.py).
4. vit_vs_timm: our ViT against timm's `VisionTransformer` of the same dimensions, alternating rounds.
5. attention: our ViT with SDPA against eager attention at 197 tokens (vit-tiny at 224).
6. data_path: the recipe's training dataloader (built as examples/train.py builds it, from the Trainer) for
   `--input_pipeline auto` (tensors on CIFAR) and `workers` with 2 and 8 processes: images/s of batches on the
   device, against the model's bare-step images/s (CIFAR-10 from .device_data/ when carried, else the sample).
7. fp16_teacher: `examples/distill.py` for a few steps under `--fp16` with the ViT teacher: every loss finite, the
   saved student finite.
8. torch_compile: vit-cifar's bare step through `torch.compile` (first-step seconds, steady images/s against eager),
   then the recipe with `--torch_compile` for a few steps.
9. jpeg_decode: photograph-sized JPEGs (CIFAR images upscaled to 224-384 px, written at the start) at vit-tiny's
   224 px: `--input_pipeline workers` (8 processes) against `decode_on_device` (nvJPEG) with 8 and 2, images/s against
   the model's; whether decoding on the GPU pays, and so whether `auto` should choose it.
10. cnn_teacher: the CNN teacher's recipe (pretrained/make_teacher.py) for 10 epochs on the carried CIFAR-10 (the
   JPEG-compressed copy, where the CPU's runs stop at 90-91% in bf16 and float32, benchmarks/RESULTS.md): its time
   on a GPU, and whether bf16 there lands where the CPU did.

Results go to `$OUT/gpu_check.json` (or `--output_dir`) after every section, so a run cut off by its timeout still
returns what it measured, and to `gpu_check.md` (the tables printed at the end). No section starts after
`--time_budget` seconds. Arguments after `--` go to every recipe this script runs (distillation, data path, fp16,
compile), e.g. an input-pipeline flag. Needs `datasets` and `evaluate`, which the GPU machine lacks: carry them as
wheels (benchmarks/prepare_gpu_carry.sh).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from training_throughput import (
    NO_EVALUATION_OR_CHECKPOINTS,
    REPO,
    compare_vit_implementations,
    default_dataset,
    load_recipe,
    machine_description,
    matmul_peak,
    measure_model,
    recipe_device_arguments,
    resolve_device,
    synchronize,
    throughput_table,
)

# CIFAR-10 copied beside the checkout by prepare_gpu_carry.sh, so it travels to the GPU machine with the call.
DEVICE_DATA_CIFAR10 = REPO / ".device_data" / "cifar10"
# `make demo` on 2 CPU cores (10 epochs on the shipped sample): the teacher's test accuracy and the students' means
# over 5 seeds at their best checkpoint, in float32 (benchmarks/RESULTS.md; README.md quotes them).
README_CPU_ACCURACY = {"teacher": 0.912, "distilled student": 0.588, "baseline student": 0.567}
# The ViT -> CNN recipe (the shipped ViT teacher, its attention, soft labels at T 4): fp16 overflows in attention
# first, so fp16_teacher runs it rather than the main job's CNN teacher.
VIT_TEACHER_RECIPE = [
    "--teacher_model_name_or_path", str(REPO / "pretrained" / "vit-cifar-teacher"), "--temperature", "4",
    "--feature_loss_weight", "0", "--attention_loss_weight", "0.1",
]  # fmt: skip
LOSS_KEYS = ("loss", "eval_loss", "grad_norm")
# The dry mode's recipe runs: a few images, small batches, no worker processes.
QUICK_RECIPE_ARGUMENTS = [
    "--max_train_samples", "64", "--max_eval_samples", "16", "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "16", "--dataloader_num_workers", "0",
]  # fmt: skip


@dataclass
class Sizes:
    """How big each section runs: the GPU check's sizes, or tiny ones for the CPU dry mode."""

    batch_size: int
    warmup: int
    rounds: int
    steps: int
    matmul_size: int | None
    matmul_repeats: int
    # (preset, config overrides) per model of the throughput section
    models: list[tuple[str, dict | None]]
    vit_presets: list[tuple[str, dict | None]]
    attention_preset: tuple[str, dict | None]
    distill_epochs: float
    # extra arguments for every recipe run (sample size, batch sizes)
    recipe_arguments: list[str] = field(default_factory=list)
    # memory layouts of the convolutional models in the throughput section
    layouts: tuple[str, ...] = ("channels_last", "contiguous")
    # (--input_pipeline, --dataloader_num_workers) per variant of the data-path section
    input_pipelines: list[tuple[str, int]] = field(default_factory=lambda: [("auto", 2), ("workers", 2)])
    data_batches: int = 60
    # the jpeg_decode section: images per split, the model (at its own size unless given), the variants
    jpeg_images: int = 1536
    jpeg_model: str = "vit-tiny"
    jpeg_image_size: int | None = None
    jpeg_pipelines: list[tuple[str, int]] = field(
        default_factory=lambda: [("workers", 8), ("decode_on_device", 8), ("decode_on_device", 2)]
    )
    fp16_steps: int = 5
    teacher_epochs: float = 10
    compile_backend: str = "inductor"
    compile_steps: int = 10


def full_sizes(args: argparse.Namespace) -> Sizes:
    return Sizes(
        batch_size=args.batch_size,
        warmup=5,
        rounds=5,
        steps=10,
        matmul_size=None,
        matmul_repeats=10,
        models=[
            (name, None)
            for name in ("compact-cnn", "resnet18-cifar", "vit-cifar", "simple-cnn", "hybrid-resnet18", "vit-tiny")
        ],
        vit_presets=[("vit-cifar", None), ("vit-tiny", None)],
        attention_preset=("vit-tiny", None),
        distill_epochs=args.distill_epochs,
        recipe_arguments=["--dataloader_num_workers", "8"],
        input_pipelines=[("auto", 2), ("workers", 2), ("workers", 8)],
        compile_backend=args.compile_backend or "inductor",
    )


def quick_sizes(compile_backend: str | None = None) -> Sizes:
    # narrow versions of the presets: the dry mode checks that every path runs, not how fast
    two_layers = {"num_hidden_layers": 2}
    narrow_resnet = {"embedding_size": 16, "hidden_sizes": [16, 32, 64, 128]}
    return Sizes(
        batch_size=8,
        layouts=("channels_last",),  # the recipes' layout for CNNs; every first step of a new shape costs seconds here
        warmup=1,
        rounds=1,
        steps=1,
        matmul_size=1024,
        matmul_repeats=2,
        models=[
            ("compact-cnn", {"hidden_sizes": [16, 32, 64]}),
            ("resnet18-cifar", narrow_resnet),
            ("vit-cifar", two_layers),
            ("simple-cnn", {"hidden_sizes": [16, 32, 64], "classifier_hidden_size": 64}),
            ("hybrid-resnet18", narrow_resnet),
            ("vit-tiny", two_layers),
        ],
        vit_presets=[("vit-cifar", two_layers)],
        attention_preset=("vit-tiny", {"num_hidden_layers": 1}),
        distill_epochs=1,
        recipe_arguments=QUICK_RECIPE_ARGUMENTS,
        data_batches=3,
        jpeg_images=24,
        jpeg_model="compact-cnn",
        jpeg_image_size=64,
        jpeg_pipelines=[("workers", 0), ("decode_on_device", 0)],
        fp16_steps=2,
        teacher_epochs=1,
        compile_backend=compile_backend or "aot_eager",
        compile_steps=2,
    )


@dataclass
class Check:
    """What every section sees: the arguments, the device, the sizes, a scratch folder, and the results so far."""

    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    work_dir: Path
    recipe_arguments: list[str]
    results: dict

    def timing(self) -> dict:
        sizes = self.sizes
        return {"warmup": sizes.warmup, "rounds": sizes.rounds, "steps": sizes.steps}

    def peak(self) -> float | None:
        throughput = self.results["sections"].get("throughput", {})
        return throughput.get("peak", {}).get("flops_per_second")

    def run_recipe(self, name: str, arguments: list[str], precision: str = "bf16") -> dict:
        """examples/<name>.py's main in this process, on the check's device in `precision`, with the sizes' and the
        user's arguments last (they win)."""
        arguments = [
            *arguments, "--report_to", "none", "--disable_tqdm", "true",
            *recipe_device_arguments(self.device, precision), *self.sizes.recipe_arguments, *self.recipe_arguments,
        ]  # fmt: skip
        return load_recipe(name).main(arguments)


def finite_history(output_dir: Path) -> dict[str, list[float]]:
    """Every loss term, evaluation loss and gradient norm the run logged (trainer_state.json), by name."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    names = sorted({key for entry in history for key in entry if key.startswith("loss") or key in LOSS_KEYS})
    return {name: [entry[name] for entry in history if name in entry] for name in names}


def non_finite(values: dict[str, list[float]], skip: tuple[str, ...] = ()) -> dict[str, list[float]]:
    return {
        name: series
        for name, series in values.items()
        if name not in skip and not all(math.isfinite(value) for value in series)
    }


def throughput_row(check: Check, model_name: str, config_overrides: dict | None) -> dict | None:
    """The throughput section's fastest row for this model (eager, this batch size), if it measured one."""
    rows = [row for row in check.results["sections"].get("throughput", {}).get("rows", [])
            if row["model"] == model_name and row["config_overrides"] == config_overrides
            and row["batch_size"] == check.sizes.batch_size]  # fmt: skip
    return max(rows, key=lambda row: row["images_per_second"], default=None)


# ---- the sections ----


def environment(check: Check) -> dict:
    import accelerate
    import timm
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
    }
    for name in ("datasets", "evaluate", "pyarrow", "huggingface_hub", "fsspec", "dill", "multiprocess", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    figures = {
        "versions": versions,
        "machine": machine_description(check.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if check.device.type == "cuda":
        properties = torch.cuda.get_device_properties(check.device)
        figures.update(
            gpu=properties.name,
            capability=f"{properties.major}.{properties.minor}",
            memory_gib=round(properties.total_memory / 2**30, 1),
            multiprocessors=properties.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # oneDNN's bf16 kernels (AVX512-BF16 or AMX)
        figures.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), bf16=bf16)
    missing = [name for name in ("datasets", "evaluate") if versions[name] is None]
    if missing:
        raise RuntimeError(f"{missing} not installed: carry them as wheels (bash benchmarks/prepare_gpu_carry.sh).")
    import hf_vision_distill.recipes  # noqa: F401  (the library imports with these versions)

    figures["summary"] = (
        f"{figures.get('gpu', figures['machine'])}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, bf16 {figures['bf16']}"
    )
    return figures


def distillation(check: Check) -> dict:
    output_dir = check.work_dir / "distill"
    epochs = check.sizes.distill_epochs
    summary = check.run_recipe(
        "distill", ["--output_dir", str(output_dir), "--overwrite_output_dir", "--num_train_epochs", str(epochs)]
    )
    history = finite_history(output_dir)
    bad = non_finite(history)
    if bad:
        raise AssertionError(f"non-finite values logged: {bad}")
    accuracy = {row["model"].split(" (")[0]: row.get("test_accuracy") for row in summary["models"]}
    figures = {
        "epochs": epochs,
        "test_accuracy": accuracy,
        "readme_cpu_accuracy_10_epochs": README_CPU_ACCURACY,
        "train_runtime": next(row for row in summary["models"] if row["model"].startswith("distilled")).get(
            "train_runtime"
        ),
        "last_logged": {name: series[-1] for name, series in history.items()},
        "losses_finite": True,
    }
    figures["summary"] = (
        f"{epochs:g} epochs: teacher {accuracy.get('teacher', 0):.4f} (README "
        f"{README_CPU_ACCURACY['teacher']}), student {accuracy.get('distilled student', 0):.4f} "
        f"(README {README_CPU_ACCURACY['distilled student']} after 10)"
    )
    return figures


def throughput(check: Check) -> dict:
    peak = matmul_peak(check.device, size=check.sizes.matmul_size, repeats=check.sizes.matmul_repeats)
    rows, errors = [], {}
    for model_name, overrides in check.sizes.models:
        try:
            rows += measure_model(
                model_name,
                check.device,
                batch_size=check.sizes.batch_size,
                layouts=check.sizes.layouts,
                config_overrides=overrides,
                peak=peak["flops_per_second"],
                **check.timing(),
            )
        except Exception as error:  # one model's failure leaves the others' figures
            errors[model_name] = f"{type(error).__name__}: {error}"
    best = {}
    for row in rows:
        if row["images_per_second"] > best.get(row["model"], {}).get("images_per_second", 0):
            best[row["model"]] = row
    summary = ", ".join(f"{name} {row['mfu']:.1%}" for name, row in best.items())
    return {
        "peak": peak,
        "rows": rows,
        "table": throughput_table(rows, check.device),
        "errors": errors,
        "summary": f"peak {peak['flops_per_second'] / 1e12:.1f} TFLOP/s; best MFU: {summary}",
    }


def vit_vs_timm(check: Check) -> dict:
    comparisons = {}
    for preset, overrides in check.sizes.vit_presets:
        result = compare_vit_implementations(
            preset,
            check.device,
            {"ours": {}, "timm": {"timm": True}},
            batch_size=check.sizes.batch_size,
            config_overrides=overrides,
            peak=check.peak(),
            **check.timing(),
        )
        candidates = result["candidates"]
        result["ratio"] = candidates["ours"]["images_per_second"] / candidates["timm"]["images_per_second"]
        comparisons[preset] = result
    summary = ", ".join(f"{preset} ours/timm {result['ratio']:.3f}x" for preset, result in comparisons.items())
    return {"comparisons": comparisons, "summary": summary}


def attention(check: Check) -> dict:
    preset, overrides = check.sizes.attention_preset
    implementations = {"sdpa": {"attn_implementation": "sdpa"}, "eager": {"attn_implementation": "eager"}}
    result = compare_vit_implementations(
        preset,
        check.device,
        implementations,
        batch_size=check.sizes.batch_size,
        config_overrides=overrides,
        peak=check.peak(),
        **check.timing(),
    )
    candidates = result["candidates"]
    result["sdpa_speedup"] = candidates["sdpa"]["images_per_second"] / candidates["eager"]["images_per_second"]
    result["summary"] = (
        f"{preset} at {result['tokens']} tokens: sdpa {candidates['sdpa']['images_per_second']:.0f}"
        f", eager {candidates['eager']['images_per_second']:.0f} images/s "
        f"({result['sdpa_speedup']:.2f}x)"
    )
    return result


def time_training_batches(
    check: Check, dataset: str, model_name: str, pipeline: str, workers: int, extra: list[str] = ()
) -> dict:
    """Images/s of the recipe's training batches as its Trainer serves them (decoding, augmentation, collation, the
    collator's device step) for one `--input_pipeline` and worker count, built as examples/train.py builds them."""
    from hf_vision_distill.recipes import (
        DataArguments,
        ModelArguments,
        build_inputs,
        final_training_arguments,
        load_data,
        load_model,
    )
    from hf_vision_distill.training import ImageClassificationTrainer, on_device

    argv = [
        "--model_name_or_path", model_name, "--dataset_name", dataset,
        "--output_dir", str(check.work_dir / "data_path"), "--report_to", "none",
        *recipe_device_arguments(check.device), *NO_EVALUATION_OR_CHECKPOINTS,  # only the training dataloader
        *check.sizes.recipe_arguments, "--per_device_train_batch_size", str(check.sizes.batch_size),
        "--input_pipeline", pipeline, "--dataloader_num_workers", str(workers), *extra, *check.recipe_arguments,
    ]  # fmt: skip
    parsed = load_recipe("train").parse(argv)
    # picked by type: the recipe may grow more argument groups
    model_args = next(group for group in parsed if isinstance(group, ModelArguments))
    data_args = next(group for group in parsed if isinstance(group, DataArguments))
    data = load_data(data_args, parsed[-1])
    loaded = load_model(model_args, data.id2label)
    start = time.perf_counter()
    inputs = build_inputs(data, data_args, parsed[-1], loaded.input_specification)
    build_seconds = time.perf_counter() - start  # decoding a split once, for the tensor pipeline
    training_args = final_training_arguments(parsed[-1], data=data, inputs=inputs, argv=argv)
    trainer = ImageClassificationTrainer(
        model=loaded.model,
        args=training_args,
        train_dataset=inputs.train_dataset,
        data_collator=inputs.train_collator,
    )

    def device_batch(batch: dict) -> dict:
        # As the Trainer places it (encoded images stay on the host), then the collator's device step (the worker
        # pipeline's uint8 batches are normalised and mixed there, encoded ones decoded).
        placed = {name: value.to(check.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                  for name, value in batch.items()}  # fmt: skip
        return on_device(inputs.train_collator, placed)

    loader = trainer.get_train_dataloader()
    start = time.perf_counter()
    batches = iter(loader)
    first = device_batch(next(batches))["pixel_values"]
    synchronize(check.device)
    first_batch_seconds = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for batch in itertools.islice(batches, min(check.sizes.data_batches, len(loader) - 1)):
        images += len(device_batch(batch)["pixel_values"])
    synchronize(check.device)
    seconds = time.perf_counter() - start
    return {
        "requested": pipeline,
        "pipeline": inputs.pipeline,
        "workers": training_args.dataloader_num_workers,
        "images_per_second": images / seconds if images else None,
        "images": images,
        "build_seconds": build_seconds,
        "first_batch_seconds": first_batch_seconds,
        "batch_shape": list(first.shape),
        "batch_device": str(first.device),
    }


def against_the_model(check: Check, model_name: str, pipelines: dict[str, dict]) -> tuple[float, str]:
    """The model's bare-step images/s (the throughput section's fastest, or measured now), each pipeline's
    `data_over_model` filled in, and a one-line summary."""
    model_overrides = dict(check.sizes.models).get(model_name)
    row = throughput_row(check, model_name, model_overrides)
    if row is None:
        row = max(measure_model(model_name, check.device, batch_size=check.sizes.batch_size,
                                config_overrides=model_overrides, **check.timing()),
                  key=lambda row: row["images_per_second"])  # fmt: skip
    model_images_per_second = row["images_per_second"]
    for figures in pipelines.values():
        rate = figures["images_per_second"]
        figures["data_over_model"] = rate / model_images_per_second if rate else None
    summary = "; ".join(
        f"{name}: {figures['images_per_second'] or 0:.0f} images/s ({figures['data_over_model'] or 0:.2f}x the model)"
        for name, figures in pipelines.items()
    )
    return model_images_per_second, f"{summary}; model {model_images_per_second:.0f} images/s"


def data_path(check: Check) -> dict:
    """The recipe's training batches as its Trainer serves them (decoding, augmentation, collation, on the device),
    per input pipeline, against what the model consumes."""
    dataset = str(DEVICE_DATA_CIFAR10) if DEVICE_DATA_CIFAR10.is_dir() else default_dataset()
    model_name = "compact-cnn"  # the recipe's default student
    pipelines = {}
    for pipeline, workers in check.sizes.input_pipelines:
        figures = time_training_batches(check, dataset, model_name, pipeline, workers)
        pipelines[f"{pipeline}, {figures['workers']} workers"] = figures
    model_images_per_second, summary = against_the_model(check, model_name, pipelines)
    return {"dataset": dataset, "model": model_name, "model_images_per_second": model_images_per_second,
            "pipelines": pipelines, "summary": summary}  # fmt: skip


def write_jpeg_folder(root: Path, sources: list, images_per_split: int, seed: int = 0) -> Path:
    """An image folder of photograph-sized JPEGs (`root/{train,test}/<class>/<n>.jpg`, 224 to 384 pixels a side,
    quality 90), each a CIFAR image upscaled: what decoding costs for ImageNet-like data, with nothing to download."""
    import random

    import PIL.Image

    draw = random.Random(seed)
    for split in ("train", "test"):
        for number in range(images_per_split):
            image, label = sources[draw.randrange(len(sources))]
            size = (draw.randint(224, 384), draw.randint(224, 384))
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").resize(size, PIL.Image.BICUBIC).save(folder / f"{number}.jpg", quality=90)
    return root


def jpeg_decode(check: Check) -> dict:
    """Large JPEGs at vit-tiny's 224 px: the worker pipeline (PIL decodes in the workers) against decoding on the
    device (`--input_pipeline decode_on_device`), each against the model's bare step."""
    import datasets

    source = str(DEVICE_DATA_CIFAR10) if DEVICE_DATA_CIFAR10.is_dir() else default_dataset()
    split = datasets.load_dataset(source, split="test")
    image_column = "img" if "img" in split.column_names else "image"
    rows = split.select(range(min(len(split), 500)))
    sources = list(zip(rows[image_column], rows["label"]))
    start = time.perf_counter()
    folder = write_jpeg_folder(check.work_dir / "jpeg", sources, check.sizes.jpeg_images)
    write_seconds = time.perf_counter() - start
    model_name = check.sizes.jpeg_model
    extra = ["--image_size", str(check.sizes.jpeg_image_size)] if check.sizes.jpeg_image_size else []
    pipelines = {}
    for pipeline, workers in check.sizes.jpeg_pipelines:
        figures = time_training_batches(check, str(folder), model_name, pipeline, workers, extra)
        pipelines[f"{pipeline}, {figures['workers']} workers"] = figures
    model_images_per_second, summary = against_the_model(check, model_name, pipelines)
    return {"dataset": f"{check.sizes.jpeg_images} JPEGs of 224-384 px per split, written in {write_seconds:.0f} s",
            "model": model_name, "model_images_per_second": model_images_per_second, "pipelines": pipelines,
            "summary": summary}  # fmt: skip


def fp16_teacher(check: Check) -> dict:
    from safetensors.torch import load_file

    output_dir = check.work_dir / "fp16"
    steps = check.sizes.fp16_steps
    arguments = ["--output_dir", str(output_dir), "--overwrite_output_dir", "--max_steps", str(steps),
                 "--logging_steps", "1", "--num_overlay_images", "0", *NO_EVALUATION_OR_CHECKPOINTS,
                 *VIT_TEACHER_RECIPE]  # fmt: skip
    check.run_recipe("distill", arguments, precision="fp16")
    history = finite_history(output_dir)
    # The fp16 gradient scaler skips the steps whose gradients overflow (their norm is logged as inf/nan by design).
    bad = non_finite(history, skip=("grad_norm",))
    if bad:
        raise AssertionError(f"non-finite losses under fp16: {bad}")
    weights = load_file(str(output_dir / "model.safetensors"))
    bad_weights = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if bad_weights:
        raise AssertionError(f"non-finite student weights after fp16 steps: {bad_weights[:5]}")
    losses = history.get("loss", [])
    return {
        "steps": steps,
        "losses": history,
        "losses_finite": True,
        "student_weights_finite": True,
        "summary": f"{steps} steps, loss {losses[0] if losses else float('nan'):.3f} -> "
        f"{losses[-1] if losses else float('nan'):.3f}, all finite",
    }


CPU_TEACHER_ACCURACY = 0.9083  # benchmarks/RESULTS.md: 20 epochs in bf16 on 2 CPU cores, flip_translate


def cnn_teacher(check: Check) -> dict:
    """The CNN teacher's recipe on the carried CIFAR-10 (JPEG-compressed): its time on the GPU, and whether bf16 there
    lands where the CPU's runs did (90.8% with flip_translate; airbench94's own loop there too)."""
    dataset = str(DEVICE_DATA_CIFAR10) if DEVICE_DATA_CIFAR10.is_dir() else default_dataset()
    epochs = check.sizes.teacher_epochs
    # pretrained/make_teacher.py's recipe, with this check's data, budget and device.
    spec = importlib.util.spec_from_file_location("make_teacher", REPO / "pretrained" / "make_teacher.py")
    make_teacher = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(make_teacher)
    arguments = [*make_teacher.CNN_TEACHER_RECIPE, "--dataset_name", dataset, "--num_train_epochs", str(epochs),
                 "--output_dir", str(check.work_dir / "cnn_teacher"), "--overwrite_output_dir"]  # fmt: skip
    metrics = check.run_recipe("train", arguments)
    accuracy = metrics.get("test_accuracy", float("nan"))
    return {
        "dataset": dataset,
        "epochs": epochs,
        "test_accuracy_flip_translate": accuracy,
        "train_runtime": metrics.get("train_runtime"),
        "cpu_bf16_test_accuracy_20_epochs": CPU_TEACHER_ACCURACY,
        "summary": f"{epochs:g} epochs: test {accuracy:.4f} with flip_translate in "
        f"{metrics.get('train_runtime', float('nan')):.0f} s (CPU bf16, 20 epochs: {CPU_TEACHER_ACCURACY})",
    }


def torch_compile(check: Check) -> dict:
    backend = check.sizes.compile_backend
    preset, overrides = check.sizes.vit_presets[0]
    settings = {"batch_size": check.sizes.batch_size, "config_overrides": overrides, "peak": check.peak()}
    eager = (
        throughput_row(check, preset, overrides)
        or measure_model(preset, check.device, **settings, **check.timing())[0]
    )
    compiled = measure_model(preset, check.device, compile_backend=backend, **settings, **check.timing())[0]
    output_dir = check.work_dir / "compile"
    arguments = [
        "--model_name_or_path", preset, "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--torch_compile", "true", "--torch_compile_backend", backend, "--max_steps", str(check.sizes.compile_steps),
        *NO_EVALUATION_OR_CHECKPOINTS, *(["--config_overrides", json.dumps(overrides)] if overrides else []),
    ]  # fmt: skip
    metrics = check.run_recipe("train", arguments)
    if not math.isfinite(metrics.get("train_loss", float("nan"))):
        raise AssertionError(f"the recipe under --torch_compile logged a non-finite loss: {metrics}")
    speedup = compiled["images_per_second"] / eager["images_per_second"]
    return {
        "backend": backend,
        "model": preset,
        "compile_seconds": compiled["first_step_seconds"],
        "eager_first_step_seconds": eager["first_step_seconds"],
        "eager_images_per_second": eager["images_per_second"],
        "compiled_images_per_second": compiled["images_per_second"],
        "speedup": speedup,
        "compiled_mfu": compiled["mfu"],
        "recipe_train_runtime": metrics.get("train_runtime"),
        "recipe_train_loss": metrics.get("train_loss"),
        "recipe_steps": check.sizes.compile_steps,
        "summary": f"{backend}: first step {compiled['first_step_seconds']:.1f} s, "
        f"{compiled['images_per_second']:.0f} vs eager {eager['images_per_second']:.0f} images/s "
        f"({speedup:.2f}x); recipe --torch_compile ran",
    }


SECTIONS: dict[str, Callable[[Check], dict]] = {
    "environment": environment,
    "distillation": distillation,
    "throughput": throughput,
    "vit_vs_timm": vit_vs_timm,
    "attention": attention,
    "data_path": data_path,
    "fp16_teacher": fp16_teacher,
    "torch_compile": torch_compile,
    "jpeg_decode": jpeg_decode,
    "cnn_teacher": cnn_teacher,
}


def report(results: dict) -> str:
    lines = [
        f"## GPU check, {results['date']}, {results['machine']}, torch {torch.__version__}",
        "",
        f"    {results['command']}",
        "",
        *([f"**{results['error']}**", ""] if results.get("error") else []),
        "| section | status | seconds | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for name, section in results["sections"].items():
        figures = section.get("summary") or section.get("error") or section.get("reason") or ""
        lines.append(f"| {name} | {section['status']} | {section.get('seconds', 0):.1f} | {figures} |")
    table = results["sections"].get("throughput", {}).get("table")
    if table:
        lines += ["", table]
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (output_dir / "gpu_check.md").write_text(report(results))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    recipe_arguments = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and few steps: the dry mode.")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument(
        "--output_dir", default=None, help="Where the JSON goes; default $OUT, else outputs/gpu_check."
    )
    parser.add_argument("--work_dir", default=None, help="Scratch folder for the recipes' runs; default a temp dir.")
    parser.add_argument(
        "--time_budget", type=float, default=360, help="No section starts after this many seconds (8-minute call)."
    )
    parser.add_argument("--batch_size", type=int, default=128, help="Batch of the timed training steps.")
    parser.add_argument("--distill_epochs", type=float, default=10, help="README's figures are after 10 epochs.")
    parser.add_argument("--compile_backend", default=None, help="Default inductor (aot_eager with --quick).")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the recipes set it: the fastest kernels for fixed shapes
    output_dir = Path(args.output_dir or os.environ.get("OUT") or REPO / "outputs" / "gpu_check")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check-"))
    sizes = quick_sizes(args.compile_backend) if args.quick else full_sizes(args)
    results = {
        "command": "python benchmarks/gpu_check.py " + " ".join(argv),
        "date": str(datetime.date.today()),
        "machine": machine_description(device),
        "quick": args.quick,
        "sections": {},
    }
    check = Check(args, device, sizes, work_dir, recipe_arguments, results)

    sections = args.sections
    if device.type == "cpu" and args.device == "auto" and not args.quick:
        # the full sizes would spend the whole call on the CPU; the environment section says what torch sees
        results["error"] = "no CUDA device visible to torch: only the environment section ran"
        sections = ["environment"]
        print(f"[gpu_check] {results['error']}", flush=True)
    started = time.perf_counter()
    for name in sections:
        elapsed = time.perf_counter() - started
        if elapsed > args.time_budget:
            results["sections"][name] = {
                "status": "skipped",
                "ok": False,
                "reason": f"time budget: {elapsed:.0f} s > {args.time_budget:.0f} s",
            }
            write_results(results, output_dir)
            continue
        print(f"[gpu_check] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            section = SECTIONS[name](check)
            section["status"] = "error" if section.get("errors") else "ok"
            if section.get("errors"):
                section["error"] = "; ".join(f"{key}: {value}" for key, value in section["errors"].items())
        except Exception as error:
            section = {
                "status": "error",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-4000:],
            }
        section["ok"] = section["status"] == "ok"
        section["seconds"] = time.perf_counter() - start
        results["sections"][name] = section
        write_results(results, output_dir)  # after every section: a timeout still returns what was measured
        print(
            f"[gpu_check] {name}: {section['status']} in {section['seconds']:.1f} s; "
            f"{section.get('summary') or section.get('error')}",
            flush=True,
        )
    results["seconds"] = time.perf_counter() - started
    write_results(results, output_dir)
    print(report(results))
    return results


if __name__ == "__main__":
    main()
