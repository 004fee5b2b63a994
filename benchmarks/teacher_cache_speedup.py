"""Cached teacher logits against a live teacher, in the same process, with the prediction from FLOPs.

A live-teacher step costs a student forward and backward (about 3 F_student) plus a teacher forward (F_teacher); a
cached step only the former, so the predicted speedup is 1 + F_teacher / (3 F_student). FLOPs are counted with
torch.utils.flop_counter on one batch; steps are timed as in distill_overhead.py (steady-state steps, alternating
rounds, medians). Loss: labels + soft KD, the terms a cache can serve.

    python benchmarks/teacher_cache_speedup.py --batch_size 128 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
from pathlib import Path

import torch
from distill_overhead import StepClock, collate, models
from torch.utils.flop_counter import FlopCounterMode

from hf_vision_distill.distillation import DistillationConfig, DistillationTrainer

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
    DistillationTrainer(model=student, teacher_model=None if offline else teacher, args=args, train_dataset=rows,
                        data_collator=collate, callbacks=[clock]).train()  # fmt: skip
    return (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
