"""Inference speed where a student is served: PyTorch eager, `torch.compile`, ONNX Runtime float32 and ONNX Runtime
int8 on this CPU, for each model, in one run (issue 15, section 3).

    python benchmarks/deploy_latency.py                                             # the four presets, random weights
    python benchmarks/deploy_latency.py --models outputs/demo pretrained/vit-cifar-teacher --threads 2

What it measures, with `--threads` intra-op threads everywhere (`torch.set_num_threads`, ONNX Runtime's
`intra_op_num_threads`):

- latency at batch 1: `--calls` (at least 200) timed calls after `--warmup` untimed ones, median and 90th percentile,
  in milliseconds;
- throughput at batch `--batch_size` (64): images per second from the median of `--throughput_calls` timed calls;
- file sizes of `model.onnx` and `model_int8.onnx`.

A model is a preset (built with random weights: speed does not depend on them) or a folder a recipe wrote. Each is
exported with `hf_vision_distill.export.export_classifier` and quantised with `quantize_int8` (calibrated on
`--num_calibration_images` training images of `--dataset_name`) into `--output_dir/<name>/`. Accuracy is not measured
here: `examples/export.py --quantize int8` measures it on trained models. Prints a markdown table and writes
`deploy_latency.json` to `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_vision_distill.data import load_image_classification_dataset  # noqa: E402
from hf_vision_distill.export import (  # noqa: E402
    INT8_FILE_NAME,
    calibration_set_from_dataset,
    export_classifier,
    onnx_session,
    quantize_int8,
)
from hf_vision_distill.models import MODEL_PRESETS, load_image_classifier  # noqa: E402
from hf_vision_distill.recipes import SHIPPED_SAMPLE  # noqa: E402

BACKENDS = ("eager", "compile", "ort-fp32", "ort-int8")


def timed_calls(run: Callable[[], object], calls: int, warmup: int) -> list[float]:
    """Wall times of `calls` calls of `run`, after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def measure(run_batch: Callable[[np.ndarray], object], image_size: tuple[int, int], args: argparse.Namespace) -> dict:
    """Batch-1 latency (median, p90) and batch-`args.batch_size` throughput of one backend."""
    generator = np.random.default_rng(0)
    single = generator.standard_normal((1, 3, *image_size), dtype=np.float32)
    batch = generator.standard_normal((args.batch_size, 3, *image_size), dtype=np.float32)
    latencies = timed_calls(lambda: run_batch(single), args.calls, args.warmup)
    batch_times = timed_calls(lambda: run_batch(batch), args.throughput_calls, max(1, args.warmup // 10))
    return {
        "latency_ms_median": 1000 * statistics.median(latencies),
        "latency_ms_p90": 1000 * float(np.percentile(latencies, 90)),
        "throughput_images_per_s": args.batch_size / statistics.median(batch_times),
    }


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], object]:
    @torch.inference_mode()
    def run(pixel_values: np.ndarray):
        return model(pixel_values=torch.from_numpy(pixel_values)).logits

    return run


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    session = onnx_session(path, num_threads=threads)
    return lambda pixel_values: session.run(["logits"], {"pixel_values": pixel_values})


def model_folder(name: str, work_dir: Path, id2label: dict[int, str]) -> Path:
    """A folder with the model: `name` itself, or the preset saved with random weights."""
    if name not in MODEL_PRESETS:
        return Path(name)
    folder = work_dir / "weights"
    loaded = load_image_classifier(name, id2label=id2label)
    loaded.model.save_pretrained(folder)
    loaded.image_processor.save_pretrained(folder)
    return folder


def benchmark_model(name: str, data, args: argparse.Namespace) -> dict:
    work_dir = Path(args.output_dir) / Path(name).name
    exported = export_classifier(model_folder(name, work_dir, data.id2label), work_dir)
    image_size = exported.specification.image_size
    row = {"model": name, "image_size": list(image_size), "fp32_mb": exported.onnx_path.stat().st_size / 1e6}
    model = load_image_classifier(str(work_dir / "weights" if name in MODEL_PRESETS else name), id2label=None).model
    model = model.float().eval()
    for backend in args.backends:
        if backend == "eager":
            run = torch_runner(model)
        elif backend == "compile":
            run = torch_runner(torch.compile(model))
        elif backend == "ort-fp32":
            run = onnx_runner(exported.onnx_path, args.threads)
        else:
            calibration = calibration_set_from_dataset(
                data.dataset["train"], exported.specification, num_images=args.num_calibration_images
            )
            int8_path = quantize_int8(
                exported.onnx_path, work_dir / INT8_FILE_NAME, calibration, exported.specification
            )
            row["int8_mb"] = int8_path.stat().st_size / 1e6
            run = onnx_runner(int8_path, args.threads)
        row[backend] = measure(run, image_size, args)
        print(f"{name} {backend}: {row[backend]}", flush=True)
    return row


def markdown_table(rows: list[dict], backends: list[str]) -> str:
    lines = [
        "| model | backend | batch-1 median (ms) | batch-1 p90 (ms) | batch-64 images/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        for backend in backends:
            result = row[backend]
            lines.append(
                f"| {row['model']} | {backend} | {result['latency_ms_median']:.3f} | {result['latency_ms_p90']:.3f} "
                f"| {result['throughput_images_per_s']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["compact-cnn", "simple-cnn", "vit-cifar", "hybrid-resnet18"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--dataset_name", default=SHIPPED_SAMPLE, help="Calibration images come from its train split.")
    parser.add_argument("--num_calibration_images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200, help="Timed batch-1 calls (200 or more for the results).")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--throughput_calls", type=int, default=20)
    parser.add_argument("--output_dir", default="outputs/deploy_latency")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_image_classification_dataset(args.dataset_name, validation_size=0)
    rows = [benchmark_model(name, data, args) for name in args.models]
    table = markdown_table(rows, args.backends)
    print(table)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    environment = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "calls": args.calls,
        "batch_size": args.batch_size,
    }
    with open(output / "deploy_latency.json", "w") as file:
        json.dump({"environment": environment, "rows": rows}, file, indent=2)
    return rows


if __name__ == "__main__":
    main()
