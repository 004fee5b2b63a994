"""Training throughput where users train: the machine's bf16 matmul peak, each model's bare training step (images/s
and model FLOPs utilisation), and optionally the training recipe end to end against that bare step, in one run.

    python benchmarks/training_throughput.py                                   # CPU (or the GPU, when there is one)
    python benchmarks/training_throughput.py --end_to_end --max_train_samples 10000
    python benchmarks/training_throughput.py --end_to_end -- --dataloader_num_workers 0   # arguments for the recipe

What it measures:

- peak: the median rate of large square bf16 matrix products (random data) on the device, in FLOP/s; on CPU with
  `torch.get_num_threads()` threads (AMX multiplies bf16 in hardware; bf16 autocast is the recipes' fast CPU mode).
- bare step: forward, cross-entropy, backward and the Trainer's default optimizer (fused AdamW) on in-memory random
  batches, under bf16 autocast; channels_last and/or contiguous for the convolutional models (`--layouts`); warm-up
  steps, then the median of `--rounds` rounds of `--steps` steps. Forward FLOPs per image come from
  `torch.utils.flop_counter` (matmuls and convolutions); MFU = 3 x forward FLOPs x images/s / peak (a backward pass
  costs about two forwards).
- end to end (`--end_to_end`): `examples/train.py` run in this process on a real dataset (`--bf16`, plus
  `--use_cpu` on CPU; the recipe's defaults otherwise: validation and a checkpoint every epoch), its
  `train_samples_per_second` (all of that included, as the Trainer reports it), and ratio = that /
  the model's fastest bare step. Arguments after `--` go to the recipe unchanged (they win over the ones above), so
  the same script measures another input pipeline or worker count.

The issue's goals (checked in the table): end-to-end ratio >= 0.85 for compact-cnn and resnet18-cifar on CIFAR-10;
on CPU, bare-step MFU >= 40% for the CNNs and >= 30% for our ViT. Prints a markdown table and writes
`training_throughput.json` to `--output_dir`. `benchmarks/gpu_check.py` reuses these functions on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.models.vit import VisionTransformerConfig
from hf_vision_distill.profiling import flops_per_image
from hf_vision_distill.recipes import SHIPPED_SAMPLE, is_convolutional

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"
CPU_MODELS = ["compact-cnn", "resnet18-cifar", "vit-cifar", "simple-cnn", "hybrid-resnet18"]
GPU_MODELS = [*CPU_MODELS, "vit-tiny"]  # vit-tiny at 224: 197 tokens, too slow for a CPU run
LABELS = {index: str(index) for index in range(10)}
# The goals: bare-step MFU on CPU, and end-to-end / bare-step ratio for the recipe's main students.
CPU_MFU_GOALS = {"cnn": 0.40, "vit": 0.30}
RATIO_GOAL = 0.85
RATIO_GOAL_MODELS = ("compact-cnn", "resnet18-cifar")
# Recipe arguments for a run that only trains: no evaluation or checkpoint inside the timed loop.
NO_EVALUATION_OR_CHECKPOINTS = ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
# glibc settings that keep freed buffers in the heap (README: 6-19% faster CPU training); recorded with the figures.
MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int | None = None, repeats: int = 5
) -> dict:
    """Measured matrix-product rate: the median of `repeats` timed products of two random `size` x `size` matrices
    (after warm-up), in FLOP/s (2 size^3 per product). On CUDA each timed repeat is 10 products."""
    size = size or (8192 if device.type == "cuda" else 4096)
    products = 10 if device.type == "cuda" else 1
    generator = torch.Generator(device=device).manual_seed(0)
    # Random data: zeros multiply faster on some hardware and would overstate the peak.
    left = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    right = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    output = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(left, right, out=output)
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(products):
            torch.matmul(left, right, out=output)
        synchronize(device)
        rates.append(2 * size**3 * products / (time.perf_counter() - start))
    return {
        "flops_per_second": statistics.median(rates),
        "size": size,
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "all_flops_per_second": rates,
    }


def build_model(
    model_name: str,
    device: torch.device,
    image_size: int | None = None,
    config_overrides: dict | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> tuple[nn.Module, tuple[int, int]]:
    """A preset (or any name `load_image_classifier` takes) for 10 classes, in train mode on `device`."""
    torch.manual_seed(seed)
    loaded = load_image_classifier(
        model_name,
        id2label=LABELS,
        image_size=image_size,
        config_overrides=config_overrides,
        attn_implementation=attn_implementation,
    )
    return loaded.model.to(device).train(), loaded.input_specification.image_size


def training_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    parameters: list[nn.Parameter],
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    bf16: bool,
) -> Callable[[], None]:
    """One bare training step as a closure: forward under autocast, cross-entropy, backward, the Trainer's default
    optimizer (fused AdamW, the recipes' learning rate and weight decay)."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.05, fused=True)
    device_type = pixel_values.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(pixel_values)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def random_batch(
    batch_size: int, image_size: tuple[int, int], device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, *image_size, generator=generator).to(device)
    if channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    return pixel_values, torch.randint(0, 10, (batch_size,), generator=generator).to(device)


def time_alternating(
    steps: dict[str, Callable[[], None]],
    device: torch.device,
    warmup: int = 3,
    rounds: int = 5,
    steps_per_round: int = 5,
) -> dict[str, dict]:
    """Times several training steps in alternating rounds (so drifts of the machine hit each alike): per name, the
    first step's seconds (kernel selection, compilation), the steady seconds per step of each round, and images/s
    comes from the median of those."""
    timings = {name: {"first_step_seconds": 0.0, "seconds_per_step": []} for name in steps}
    for name, step in steps.items():
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        timings[name]["first_step_seconds"] = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()
    for _ in range(rounds):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            synchronize(device)
            timings[name]["seconds_per_step"].append((time.perf_counter() - start) / steps_per_round)
    for timing in timings.values():
        timing["median_seconds_per_step"] = statistics.median(timing["seconds_per_step"])
    return timings


def model_flops_utilisation(
    forward_flops_per_image: float, images_per_second: float, peak: float | None
) -> float | None:
    """3 x forward FLOPs x images/s over the peak: the share of the matrix units a training step keeps busy."""
    return 3 * forward_flops_per_image * images_per_second / peak if peak else None


def measure_model(
    model_name: str,
    device: torch.device,
    *,
    batch_size: int = 128,
    bf16: bool = True,
    layouts: tuple[str, ...] = ("channels_last", "contiguous"),
    image_size: int | None = None,
    config_overrides: dict | None = None,
    attn_implementation: str | None = None,
    compile_backend: str | None = None,
    peak: float | None = None,
    warmup: int = 3,
    rounds: int = 5,
    steps: int = 5,
) -> list[dict]:
    """Bare training-step throughput of one model, one row per memory layout (`layouts` apply to convolutional
    models; a ViT gets one contiguous row). `compile_backend` runs the step's model through `torch.compile`."""
    probe, size = build_model(model_name, device, image_size, config_overrides, attn_implementation)
    forward_flops = flops_per_image(probe, size)
    parameters = sum(parameter.numel() for parameter in probe.parameters())
    convolutional = is_convolutional(probe)
    layouts = layouts if convolutional else ("contiguous",)
    del probe
    step_functions = {}
    for layout in layouts:
        channels_last = layout == "channels_last"
        model, _ = build_model(model_name, device, image_size, config_overrides, attn_implementation)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        runner = torch.compile(model, backend=compile_backend) if compile_backend else model
        pixel_values, labels = random_batch(batch_size, size, device, channels_last)
        step_functions[layout] = training_step(
            lambda x, runner=runner: runner(pixel_values=x).logits,
            list(model.parameters()),
            pixel_values,
            labels,
            bf16,
        )
    timings = time_alternating(step_functions, device, warmup, rounds, steps)
    rows = []
    for layout, timing in timings.items():
        images_per_second = batch_size / timing["median_seconds_per_step"]
        rows.append(
            {
                "model": model_name,
                "layout": layout,
                "batch_size": batch_size,
                "image_size": list(size),
                "config_overrides": config_overrides,
                "bf16": bf16,
                "attn_implementation": attn_implementation,
                "compile_backend": compile_backend,
                "convolutional": convolutional,
                "parameters": parameters,
                "forward_flops_per_image": forward_flops,
                "images_per_second": images_per_second,
                "mfu": model_flops_utilisation(forward_flops, images_per_second, peak),
                "first_step_seconds": timing["first_step_seconds"],
                "round_images_per_second": [batch_size / seconds for seconds in timing["seconds_per_step"]],
            }
        )
    return rows


def timm_twin(config: VisionTransformerConfig) -> nn.Module:
    """timm's `VisionTransformer` with our ViT's dimensions (same parameter count: [CLS] token, pre-norm blocks)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
        num_classes=config.num_labels,
        drop_path_rate=config.drop_path_rate,
    )


def compare_vit_implementations(
    preset: str,
    device: torch.device,
    candidates: dict[str, dict],
    *,
    batch_size: int = 128,
    bf16: bool = True,
    config_overrides: dict | None = None,
    peak: float | None = None,
    warmup: int = 3,
    rounds: int = 5,
    steps: int = 5,
) -> dict:
    """Training steps of ViTs of one shape in alternating rounds. `candidates` maps a name to
    `{"timm": True}` (timm's `VisionTransformer` of the same dimensions) or `{"attn_implementation": "sdpa"}` (ours
    with that attention path). Returns per-candidate images/s and MFU, the token count and the parameters."""
    step_functions, parameters, size, config = {}, {}, None, None
    for name, settings in candidates.items():
        model, size = build_model(
            preset, device, config_overrides=config_overrides, attn_implementation=settings.get("attn_implementation")
        )
        config = model.config
        if settings.get("timm"):
            torch.manual_seed(0)
            model = timm_twin(config).to(device).train()
            forward = model
        else:
            forward = lambda x, model=model: model(pixel_values=x).logits  # noqa: E731
        parameters[name] = sum(parameter.numel() for parameter in model.parameters())
        pixel_values, labels = random_batch(batch_size, size, device)
        step_functions[name] = training_step(forward, list(model.parameters()), pixel_values, labels, bf16)
    if len(set(parameters.values())) != 1:
        raise ValueError(f"the candidates differ in parameters ({parameters}); they should be the same shape.")
    probe, _ = build_model(preset, device, config_overrides=config_overrides)
    forward_flops = flops_per_image(probe, size)
    del probe
    timings = time_alternating(step_functions, device, warmup, rounds, steps)
    grid = config.grid_size
    result = {
        "preset": preset,
        "tokens": grid[0] * grid[1] + 1,
        "image_size": list(size),
        "batch_size": batch_size,
        "parameters": next(iter(parameters.values())),
        "forward_flops_per_image": forward_flops,
        "candidates": {},
    }
    for name, timing in timings.items():
        images_per_second = batch_size / timing["median_seconds_per_step"]
        result["candidates"][name] = {
            "images_per_second": images_per_second,
            "mfu": model_flops_utilisation(forward_flops, images_per_second, peak),
            "first_step_seconds": timing["first_step_seconds"],
        }
    return result


def load_recipe(name: str):
    """examples/<name>.py as a module, so its `main(argv)` runs in this process."""
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the recipe is being imported
    spec.loader.exec_module(module)
    return module


def default_dataset() -> str:
    """CIFAR-10 beside the checkout when it is there, else the shipped 5,000-image sample."""
    return str(CIFAR10) if CIFAR10.is_dir() else SHIPPED_SAMPLE


def recipe_device_arguments(device: torch.device, precision: str = "bf16") -> list[str]:
    """The recipe's mixed-precision flag (`bf16` or `fp16`), and `--use_cpu` on CPU."""
    return [f"--{precision}", "true"] + (["--use_cpu", "true"] if device.type == "cpu" else [])


def end_to_end(
    model_name: str,
    device: torch.device,
    *,
    dataset: str,
    output_dir: Path,
    max_train_samples: int | None,
    epochs: float,
    batch_size: int,
    recipe_arguments: list[str] = (),
) -> dict:
    """The training recipe (`examples/train.py`) on `dataset` with its defaults, and its training images/s as the
    Trainer reports it (`train_samples_per_second`: the whole training loop, with data loading and augmentation, the
    validation after every epoch, the checkpoints and the start-up)."""
    arguments = [
        "--model_name_or_path", model_name, "--dataset_name", dataset, "--output_dir", str(output_dir),
        "--overwrite_output_dir", "--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(batch_size),
        "--report_to", "none", "--disable_tqdm", "true",
        *recipe_device_arguments(device),
    ]  # fmt: skip
    if max_train_samples:
        arguments += ["--max_train_samples", str(max_train_samples)]
    arguments += list(recipe_arguments)  # last: they override the above
    start = time.perf_counter()
    metrics = load_recipe("train").main(arguments)
    wall_seconds = time.perf_counter() - start
    if "train_samples_per_second" not in metrics:  # what the recipe saved, should its return value change
        for name in ("all_results.json", "train_results.json"):
            if (output_dir / name).is_file():
                metrics = {**json.loads((output_dir / name).read_text()), **metrics}
    return {
        "images_per_second": metrics["train_samples_per_second"],
        "train_runtime": metrics.get("train_runtime"),
        "wall_seconds": wall_seconds,
        "arguments": arguments,
    }


def goal_checks(row: dict, device: torch.device) -> list[str]:
    """The issue's goals this row can be judged by, each with 'met' or 'not met'."""
    checks = []
    if device.type == "cpu" and row.get("mfu") is not None:
        goal = CPU_MFU_GOALS["cnn" if row["convolutional"] else "vit"]
        checks.append(f"MFU >= {goal:.0%}: {'met' if row['mfu'] >= goal else 'not met'}")
    if row.get("ratio") is not None and row["model"] in RATIO_GOAL_MODELS:
        checks.append(f"ratio >= {RATIO_GOAL}: {'met' if row['ratio'] >= RATIO_GOAL else 'not met'}")
    return checks


def throughput_table(rows: list[dict], device: torch.device) -> str:
    lines = [
        "| model | layout | batch | image | GFLOPs / image (fwd) | bare step images/s | MFU | end-to-end images/s "
        "| ratio | goals |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
        e2e = f"{row['end_to_end_images_per_second']:.1f}" if row.get("end_to_end_images_per_second") else "-"
        ratio = f"{row['ratio']:.2f}" if row.get("ratio") is not None else "-"
        height, width = row["image_size"]
        lines.append(
            f"| {row['model']} | {row['layout']} | {row['batch_size']} | {height}x{width} "
            f"| {row['forward_flops_per_image'] / 1e9:.3f} | {row['images_per_second']:.1f} | {mfu} | {e2e} | {ratio} "
            f"| {'; '.join(goal_checks(row, device)) or '-'} |"
        )
    return "\n".join(lines)


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()})"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    recipe_arguments = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda.")
    parser.add_argument("--models", nargs="+", default=None, help=f"Default: {CPU_MODELS} (+ vit-tiny on GPU).")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--layouts",
        nargs="+",
        default=["channels_last", "contiguous"],
        choices=["channels_last", "contiguous"],
        help="Memory layouts for the convolutional models.",
    )
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="The bare step's autocast.")
    parser.add_argument(
        "--attn_implementation", default=None, help="sdpa or eager for the ViTs (default: the model's, SDPA)."
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="Steps per round.")
    parser.add_argument(
        "--matmul_size", type=int, default=None, help="Side of the peak's matrices (8192 GPU, 4096 CPU)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
    parser.add_argument("--end_to_end", action="store_true", help="Also run examples/train.py per model.")
    parser.add_argument(
        "--dataset",
        default=None,
        help="For --end_to_end; default ../shared/datasets/cifar10, else the shipped sample.",
    )
    parser.add_argument("--max_train_samples", type=int, default=10000)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--output_dir", default=str(REPO / "outputs" / "training_throughput"))
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the recipes set it: the fastest kernels for fixed shapes
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (GPU_MODELS if device.type == "cuda" else CPU_MODELS)
    output_dir = Path(args.output_dir)
    dataset = args.dataset or default_dataset()

    peak = matmul_peak(device, size=args.matmul_size)
    rows = []
    for model_name in models:
        model_rows = measure_model(
            model_name,
            device,
            batch_size=args.batch_size,
            bf16=args.precision == "bf16",
            layouts=tuple(args.layouts),
            attn_implementation=args.attn_implementation,
            peak=peak["flops_per_second"],
            warmup=args.warmup,
            rounds=args.rounds,
            steps=args.steps,
        )
        if args.end_to_end:
            attention = ["--attn_implementation", args.attn_implementation] if args.attn_implementation else []
            recipe = end_to_end(
                model_name,
                device,
                dataset=dataset,
                output_dir=output_dir / "runs" / model_name,
                max_train_samples=args.max_train_samples,
                epochs=args.epochs,
                batch_size=args.batch_size,
                recipe_arguments=attention + recipe_arguments,
            )
            fastest = max(row["images_per_second"] for row in model_rows)
            for row in model_rows:
                row["end_to_end_images_per_second"] = recipe["images_per_second"]
                # Against the fastest bare step: the ceiling the recipe could reach with the best layout.
                row["ratio"] = recipe["images_per_second"] / fastest
                row["end_to_end"] = recipe
        rows += model_rows

    command = "python benchmarks/training_throughput.py " + " ".join(argv)
    header = (
        f"## Training throughput, {datetime.date.today()}, {machine_description(device)}, torch "
        f"{torch.__version__}, {platform.python_implementation()} {platform.python_version()}"
    )
    peak_line = (
        f"Measured bf16 matmul peak: {peak['flops_per_second'] / 1e12:.2f} TFLOP/s ({peak['size']}^3, median of "
        f"{peak['repeats']}). Bare step: batch {args.batch_size}, {args.precision}, median of {args.rounds} rounds of "
        f"{args.steps} steps after {args.warmup} warm-up steps."
    )
    if args.end_to_end:
        extra = f", recipe arguments {' '.join(recipe_arguments)}" if recipe_arguments else ""
        peak_line += (
            f" End to end: examples/train.py on {dataset}, {args.max_train_samples or 'all'} training images, "
            f"{args.epochs:g} epoch(s){extra}; ratio = end-to-end / fastest bare step."
        )
    table = throughput_table(rows, device)
    text = f"{header}\n\n    {command}\n\n{peak_line}\n\n{table}\n"
    results = {
        "command": command,
        "device": machine_description(device),
        "torch": torch.__version__,
        "date": str(datetime.date.today()),
        "peak": peak,
        "rows": rows,
        "recipe_arguments": recipe_arguments,
        "malloc_settings": {name: os.environ.get(name) for name in MALLOC_SETTINGS},
        "table": text,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "training_throughput.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)
    return results


if __name__ == "__main__":
    main()
