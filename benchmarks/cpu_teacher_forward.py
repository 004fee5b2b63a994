"""A frozen CNN teacher's forward on CPU: float32 against bf16 autocast, contiguous against channels-last weights.

What a live teacher costs per distillation step, in the four settings `distillation.Teacher` can run it in. bf16 pays
only on CPUs that multiply it in hardware (AMX, AVX512-BF16); elsewhere PyTorch emulates it, which `setup_run` warns
of. Each setting runs the same in-memory batch under `torch.no_grad()`; rounds alternate between settings and the
medians count.

    python benchmarks/cpu_teacher_forward.py --batch_size 128 --steps 2 --rounds 3

The figures: milliseconds per batch per setting, and each setting's time over float32 contiguous in this run.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch

from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.recipes import cpu_multiplies_bf16

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # (name, bf16 autocast, channels-last)
    ("float32, contiguous", False, False),
    ("float32, channels-last", False, True),
    ("bf16 autocast, contiguous", True, False),
    ("bf16 autocast, channels-last", True, True),
]


def seconds_per_batch(model: torch.nn.Module, pixel_values: torch.Tensor, bf16: bool, steps: int) -> float:
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(steps + 1):  # the first call warms up the kernels
            start = time.perf_counter()
            model(pixel_values=pixel_values)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[str(REPO_ROOT / "pretrained" / "cnn-cifar10-teacher"),
                                                        "compact-cnn"])  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"## A CNN teacher's forward on CPU, {datetime.date.today()}, CPU ({torch.get_num_threads()} threads, "
          f"bf16 in hardware: {cpu_multiplies_bf16()}), torch {torch.__version__}\n")  # fmt: skip
    print(f"    python benchmarks/cpu_teacher_forward.py --batch_size {args.batch_size} --steps {args.steps} "
          f"--rounds {args.rounds}\n")  # fmt: skip
    print("| model | setting | ms per batch | time over float32 contiguous |\n| --- | --- | ---: | ---: |")
    labels = {index: str(index) for index in range(10)}
    for name in args.models:
        model = load_image_classifier(name, id2label=None if Path(name).is_dir() else labels).model.float().eval()
        pixel_values = torch.randn(args.batch_size, 3, 32, 32)
        measured = {setting: [] for setting, _, _ in SETTINGS}
        for _ in range(args.rounds):
            for setting, bf16, channels_last in SETTINGS:
                memory_format = torch.channels_last if channels_last else torch.contiguous_format
                model.to(memory_format=memory_format)
                inputs = pixel_values.contiguous(memory_format=memory_format)
                measured[setting].append(seconds_per_batch(model, inputs, bf16, args.steps))
        baseline = statistics.median(measured[SETTINGS[0][0]])
        for setting, _, _ in SETTINGS:
            seconds = statistics.median(measured[setting])
            print(f"| {Path(name).name} | {setting} | {1000 * seconds:.0f} | {seconds / baseline:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
