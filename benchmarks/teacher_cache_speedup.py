"""Cached teacher logits against a live teacher, in the same process, with the prediction from FLOPs.

A live-teacher step costs a student forward and backward (about 3 F_student) plus a teacher forward (F_teacher); a
cached step only the former, so the predicted speedup is 1 + F_teacher / (3 F_student). FLOPs are counted with
torch.utils.flop_counter on one batch; steps are timed as in distill_overhead.py (steady-state steps, alternating
rounds, medians). Loss: labels + soft KD, the terms a cache can serve.

    python benchmarks/teacher_cache_speedup.py --batch_size 128 --steps 20 --rounds 3

With `--views K`, the offline teacher with augmentation on the tensor input pipeline instead: the same uint8 images
and batches, augmented by pad-and-crop and flip, against the live teacher (a fresh view each step, the teacher run on
it) and the cached views (`cache_teacher_views`: the teacher's top-k logits on K views per image, computed once,
replayed by `TeacherViewDataset` and `DeviceImageTransform.with_replayed_views`). Reported as training images/s, plus
the one-time cost of the cache (K teacher forwards per image, which E epochs of the live teacher also pay when E = K).

    python benchmarks/teacher_cache_speedup.py --views 10 --top_k 10 --batch_size 128 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from distill_overhead import StepClock, collate, models
from torch.utils.flop_counter import FlopCounterMode

from hf_vision_distill.distillation import (
    DistillationConfig,
    DistillationTrainer,
    TeacherViewDataset,
    TeacherViewEpochCallback,
    cache_teacher_views,
)
from hf_vision_distill.tensor_data import DecodedImages, DeviceImageTransform, TensorImageDataset

REPO = Path(__file__).resolve().parents[1]


def forward_flops(model: torch.nn.Module, pixel_values: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values)
    return counter.get_total_flops()


def seconds_per_step(
    rows: list[dict], batch_size: int, steps: int, device: str, offline: bool, output_dir: str
) -> float:
    teacher, student = models(device)
    args = DistillationConfig(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps + 1, learning_rate=1e-3,
        label_loss_weight=0.5, soft_loss_weight=0.5, offline_teacher=offline, report_to="none", save_strategy="no",
        logging_steps=10_000, dataloader_num_workers=0, use_cpu=device == "cpu", disable_tqdm=True,
    )  # fmt: skip
    clock = StepClock()
    DistillationTrainer(model=student, teacher=None if offline else teacher, args=args, train_dataset=rows,
                        data_collator=collate, callbacks=[clock]).train()  # fmt: skip
    return (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)


def augmented_seconds_per_step(
    decoded: DecodedImages,
    batch_size: int,
    steps: int,
    device: str,
    cache_dir: str | None,
    output_dir: str,
    num_views: int = 0,
    top_k: int = 10,
) -> float:
    """Seconds per steady-state step on the tensor pipeline with pad-and-crop and flip: the live teacher on fresh
    views (`cache_dir` None), or the cached views of `cache_dir` (computed there beforehand)."""
    teacher, student = models(device)
    transform = DeviceImageTransform(32, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, crop="pad", device=device)
    clock = StepClock()
    callbacks = [clock]
    if cache_dir is None:
        dataset, collator = TensorImageDataset(decoded), transform
    else:
        cache = cache_teacher_views(teacher, decoded, transform, num_views=num_views, top_k=top_k, cache_dir=cache_dir)
        dataset, collator = TeacherViewDataset(decoded, cache), transform.with_replayed_views()
        callbacks.append(TeacherViewEpochCallback(dataset))
    args = DistillationConfig(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps + 1, learning_rate=1e-3,
        label_loss_weight=0.5, soft_loss_weight=0.5, offline_teacher=cache_dir is not None, report_to="none",
        save_strategy="no", logging_steps=10_000, dataloader_num_workers=0, dataloader_pin_memory=False,
        remove_unused_columns=False, use_cpu=device == "cpu", disable_tqdm=True,
    )  # fmt: skip
    DistillationTrainer(model=student, teacher=None if cache_dir is not None else teacher, args=args,
                        train_dataset=dataset, data_collator=collator, callbacks=callbacks).train()  # fmt: skip
    return (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)


def compare_views(args: argparse.Namespace, device: str) -> dict:
    """Live teacher on fresh augmented views against cached views (--views K), on the same images and batches."""
    generator = torch.Generator().manual_seed(0)
    rows = 4 * args.batch_size
    decoded = DecodedImages(
        images=torch.randint(0, 256, (rows, 3, 32, 32), generator=generator, dtype=torch.uint8),
        labels=torch.randint(0, 10, (rows,), generator=generator),
        row_index=torch.arange(rows),
    )
    teacher, _ = models(device)
    transform = DeviceImageTransform(32, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, crop="pad", device=device)
    live_times, cached_times = [], []
    with tempfile.TemporaryDirectory() as cache_dir, tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        cache_teacher_views(teacher, decoded, transform, num_views=args.views, top_k=args.top_k,
                            batch_size=args.batch_size, cache_dir=cache_dir)  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        caching_seconds = time.perf_counter() - start
        for _ in range(args.rounds):
            live_times.append(augmented_seconds_per_step(decoded, args.batch_size, args.steps, device, None,
                                                         output_dir))  # fmt: skip
            cached_times.append(augmented_seconds_per_step(decoded, args.batch_size, args.steps, device, cache_dir,
                                                           output_dir, args.views, args.top_k))  # fmt: skip
    live_step, cached_step = statistics.median(live_times), statistics.median(cached_times)
    cache_bytes = rows * args.views * (4 * 2 + 1 + args.top_k * 4 + 2)  # boxes, flip, top-k values and classes, tail
    result = {
        "live_images_per_second": args.batch_size / live_step,
        "cached_images_per_second": args.batch_size / cached_step,
        "speedup": live_step / cached_step,
        "caching_images_per_second": rows * args.views / caching_seconds,
        "caching_seconds": caching_seconds,
        "cache_bytes_per_image": cache_bytes / rows,
        "live_rounds": live_times,
        "cached_rounds": cached_times,
        "views": args.views,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": device,
    }
    print(json.dumps(result, indent=2))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    with open(args.results, "a") as file:
        file.write(
            f"\n## Cached augmented views vs live teacher, {datetime.date.today()}, {name}, "
            f"torch {torch.__version__}\n\n"
            f"    python benchmarks/teacher_cache_speedup.py --views {args.views} --top_k {args.top_k} --batch_size "
            f"{args.batch_size} --steps {args.steps} --rounds {args.rounds}\n\n"
            f"vit-cifar teacher -> compact-cnn student, loss labels + soft KD, tensor pipeline with pad-and-crop and "
            f"flip, batch {args.batch_size}, median of {args.rounds} alternating rounds of {args.steps} steady-state "
            f"steps: live teacher on fresh views {result['live_images_per_second']:.0f} images/s, cached views "
            f"({args.views} per image, top-{args.top_k} logits) {result['cached_images_per_second']:.0f} images/s, "
            f"speedup **{result['speedup']:.2f}x**. The cache itself ran the teacher at "
            f"{result['caching_images_per_second']:.0f} views/s ({args.views} per image, once) and keeps "
            f"{result['cache_bytes_per_image']:.0f} bytes per image.\n"
        )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--views", type=int, default=0, help="Cached augmented views per image (0: no augmentation).")
    parser.add_argument("--top_k", type=int, default=10, help="Teacher logits kept per view, with --views.")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.views:
        return compare_views(args, device)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(4 * args.batch_size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (4 * args.batch_size,), generator=generator)
    teacher, student = models(device)
    with torch.no_grad():
        teacher_logits = torch.cat([teacher(pixel_values=chunk.to(device)).logits.cpu()
                                    for chunk in pixel_values.split(args.batch_size)])  # fmt: skip
    probe = pixel_values[: args.batch_size].to(device)
    teacher_flops, student_flops = forward_flops(teacher, probe), forward_flops(student, probe)
    predicted = 1 + teacher_flops / (3 * student_flops)
    live_rows = [{"pixel_values": p, "labels": y} for p, y in zip(pixel_values, labels)]
    cached_rows = [{**row, "teacher_logits": logits} for row, logits in zip(live_rows, teacher_logits)]

    live_times, cached_times = [], []
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(args.rounds):
            live_times.append(seconds_per_step(live_rows, args.batch_size, args.steps, device, False, output_dir))
            cached_times.append(seconds_per_step(cached_rows, args.batch_size, args.steps, device, True, output_dir))
    live_step, cached_step = statistics.median(live_times), statistics.median(cached_times)
    result = {
        "live_seconds_per_step": live_step,
        "cached_seconds_per_step": cached_step,
        "speedup": live_step / cached_step,
        "predicted_speedup": predicted,
        "teacher_forward_flops": teacher_flops,
        "student_forward_flops": student_flops,
        "live_rounds": live_times,
        "cached_rounds": cached_times,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": device,
    }
    print(json.dumps(result, indent=2))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    with open(args.results, "a") as file:
        file.write(
            f"\n## Cached vs live teacher, {datetime.date.today()}, {name}, torch {torch.__version__}\n\n"
            f"    python benchmarks/teacher_cache_speedup.py --batch_size {args.batch_size} --steps {args.steps} "
            f"--rounds {args.rounds}\n\n"
            f"vit-cifar teacher ({teacher_flops / args.batch_size / 1e9:.3f} GFLOP per image forward) -> compact-cnn "
            f"student ({student_flops / args.batch_size / 1e9:.3f} GFLOP), loss labels + soft KD, batch "
            f"{args.batch_size}, median of {args.rounds} alternating rounds of {args.steps} steady-state steps: live "
            f"{live_step * 1000:.1f} ms/step, cached {cached_step * 1000:.1f} ms/step, "
            f"speedup **{result['speedup']:.2f}x** against the predicted 1 + F_t / (3 F_s) = {predicted:.2f}x.\n"
        )
    return result


if __name__ == "__main__":
    main()
