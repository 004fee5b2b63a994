"""Training throughput on CPU: float32 against bf16 autocast, and SDPA against eager attention under bf16.

CPUs with AMX (Intel Sapphire Rapids and later) run bf16 matrix products in hardware, so `--bf16 --use_cpu` in the
recipes can pay off without a GPU. For our CIFAR ViT the attention kernel decides how much: PyTorch's fused CPU SDPA
backward is slow for 65-token sequences, where the plain matmul-softmax path (`--attn_implementation eager`) is not.
Each setting runs the same in-memory batches (forward, cross-entropy, backward, AdamW step); rounds alternate
between settings and the medians count.

    python benchmarks/cpu_mixed_precision.py --batch_size 128 --steps 8 --rounds 3

The figures: images per second per setting, and each setting's speedup over float32 SDPA (the default) in this run.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from hf_vision_distill.models import load_image_classifier

SETTINGS = [  # (name, bf16 autocast, attention implementation; None: the model's default, SDPA where it has one)
    ("float32", False, None),
    ("bf16 autocast", True, None),
    ("bf16 autocast, eager attention", True, "eager"),
]


def images_per_second(model_name: str, bf16: bool, attention: str | None, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    labels = {index: str(index) for index in range(10)}
    loaded = load_image_classifier(model_name, id2label=labels, attn_implementation=attention)
    model = loaded.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixel_values = torch.randn(batch_size, 3, *loaded.input_specification.image_size)
    targets = torch.randint(0, 10, (batch_size,))
    times = []
    for _ in range(steps + 1):  # the first step warms up the kernels and the allocator
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=pixel_values, labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit-cifar", "compact-cnn"])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"## CPU mixed precision, {datetime.date.today()}, CPU ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")  # fmt: skip
    print(f"    python benchmarks/cpu_mixed_precision.py --batch_size {args.batch_size} --steps {args.steps} "
          f"--rounds {args.rounds}\n")  # fmt: skip
    print("| model | setting | images/s | speedup over float32 |\n| --- | --- | ---: | ---: |")
    for model_name in args.models:
        labels = {index: str(index) for index in range(10)}
        has_attention = load_image_classifier(model_name, id2label=labels).model._supports_sdpa
        settings = [setting for setting in SETTINGS if has_attention or setting[2] is None]
        measured = {name: [] for name, _, _ in settings}
        for _ in range(args.rounds):
            for name, bf16, attention in settings:
                measured[name].append(images_per_second(model_name, bf16, attention, args.batch_size, args.steps))
        baseline = statistics.median(measured[SETTINGS[0][0]])
        for name, _, _ in settings:
            speed = statistics.median(measured[name])
            print(f"| {model_name} | {name} | {speed:.1f} | {speed / baseline:.2f}x |")


if __name__ == "__main__":
    main()
