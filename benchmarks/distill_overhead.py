"""DistillationTrainer against a plain PyTorch loop doing the same work, in the same process.

Both run the same steps on the same in-memory batches (no image decoding, so only the training step is timed):
student forward, teacher forward under no_grad, cross-entropy + soft KD + entropy-weighted attention alignment,
backward, gradient clipping, AdamW. Each side is timed from the end of its first step to the end of its last, so
start-up (dataloader, optimizer creation) is left out of both. Rounds alternate; the medians count.

    python benchmarks/distill_overhead.py --batch_size 128 --steps 20 --rounds 3

The figure: overhead = Trainer seconds per step / loop seconds per step - 1 (goal: at most 5%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_vision_distill import (
    CompactCNNConfig,
    CompactCNNForImageClassification,
    VisionTransformerConfig,
    VisionTransformerForImageClassification,
)
from hf_vision_distill.distillation import DistillationConfig, DistillationTrainer
from hf_vision_distill.losses import (
    attention_alignment_loss,
    attention_entropy,
    cls_attention_map,
    entropy_layer_weights,
    soft_distillation_loss,
)
from hf_vision_distill.training import classification_loss

REPO = Path(__file__).resolve().parents[1]


def models(device: str):
    torch.manual_seed(0)
    teacher = VisionTransformerForImageClassification(VisionTransformerConfig.from_preset("vit-cifar", num_labels=10))
    teacher.set_attn_implementation("eager")  # attention maps: what the trainer switches the teacher to by itself
    student = CompactCNNForImageClassification(CompactCNNConfig(num_labels=10))
    return teacher.to(device).eval().requires_grad_(False), student.to(device)


class StepClock(TrainerCallback):
    """Seconds from the end of the first step to the end of the last: steady-state steps only."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def trainer_seconds_per_step(batches: list[dict], steps: int, device: str, output_dir: str) -> float:
    teacher, student = models(device)
    args = DistillationConfig(
        output_dir=output_dir, per_device_train_batch_size=len(batches[0]["labels"]), max_steps=steps + 1,
        learning_rate=1e-3, label_loss_weight=0.5, soft_loss_weight=0.3, attention_loss_weight=0.7,
        student_attention="learned", layer_weighting="entropy", report_to="none", save_strategy="no",
        logging_steps=10_000, dataloader_num_workers=0, use_cpu=device == "cpu", disable_tqdm=True,
    )  # fmt: skip
    rows = [{"pixel_values": pixel_values, "labels": label} for batch in batches
            for pixel_values, label in zip(batch["pixel_values"], batch["labels"])]  # fmt: skip
    clock = StepClock()
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=rows,
                                  data_collator=collate, callbacks=[clock])  # fmt: skip
    trainer.train()
    return (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)


def loop_seconds_per_step(batches: list[dict], steps: int, device: str) -> float:
    """The same work by hand: what the trainer's step would cost with no framework around it."""
    teacher, student = models(device)
    # The same adapter the trainer builds: a 1x1-conv attention projection onto the teacher's 8x8 grid.
    from hf_vision_distill.distillation.adapters import AttentionProjection

    projection = AttentionProjection(256, (8, 8)).to(device)
    student.to(device).train()
    optimizer = torch.optim.AdamW([*student.parameters(), *projection.parameters()], lr=1e-3)
    times = []
    for step in range(steps + 1):
        batch = batches[step % len(batches)]
        pixel_values, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        outputs = student(pixel_values=pixel_values, output_hidden_states=True)
        with torch.no_grad():
            teacher_outputs = teacher(pixel_values=pixel_values, output_attentions=True)
        student_map = projection(outputs.hidden_states[-1])
        teacher_maps = [cls_attention_map(attention, (8, 8)) for attention in teacher_outputs.attentions]
        entropies = torch.stack([attention_entropy(teacher_map).mean() for teacher_map in teacher_maps])
        layer_weights = entropy_layer_weights(entropies, 0.1, max_entropy=math.log(64))
        alignment = torch.stack([attention_alignment_loss(student_map, teacher_map) for teacher_map in teacher_maps])
        loss = (
            0.5 * classification_loss(outputs.logits, labels)
            + 0.3 * soft_distillation_loss(outputs.logits, teacher_outputs.logits, 4.0)
            + 0.7 * (layer_weights * alignment).sum()
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # the Trainer clips at max_grad_norm=1.0 too
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return (times[-1] - times[0]) / (len(times) - 1)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks every field of in-memory rows (pixel values, labels, cached teacher logits) into a batch."""
    return {name: torch.stack([torch.as_tensor(row[name]) for row in rows]) for name in rows[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "pixel_values": torch.randn(args.batch_size, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, 10, (args.batch_size,), generator=generator),
        }
        for _ in range(4)
    ]
    trainer_times, loop_times = [], []
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(args.rounds):
            loop_times.append(loop_seconds_per_step(batches, args.steps, device))
            trainer_times.append(trainer_seconds_per_step(batches, args.steps, device, output_dir))
    trainer_step, loop_step = statistics.median(trainer_times), statistics.median(loop_times)
    result = {"trainer_seconds_per_step": trainer_step, "loop_seconds_per_step": loop_step,
              "overhead": trainer_step / loop_step - 1, "trainer_rounds": trainer_times, "loop_rounds": loop_times,
              "batch_size": args.batch_size, "steps": args.steps, "device": device}  # fmt: skip
    print(json.dumps(result, indent=2))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    with open(args.results, "a") as file:
        file.write(
            f"\n## DistillationTrainer overhead, {datetime.date.today()}, {name}, torch {torch.__version__}\n\n"
            f"    python benchmarks/distill_overhead.py --batch_size {args.batch_size} --steps {args.steps} "
            f"--rounds {args.rounds}\n\n"
            "vit-cifar teacher (3.7M) -> compact-cnn student (1.1M), batch of 32x32 images already in memory; loss: "
            "labels + soft KD + entropy-weighted attention alignment with the learned projection. Median of "
            f"{args.rounds} alternating rounds of {args.steps} steady-state steps: Trainer {trainer_step * 1000:.1f} "
            f"ms/step, plain loop {loop_step * 1000:.1f} ms/step, overhead **{result['overhead'] * 100:+.1f}%**.\n"
        )
    return result


if __name__ == "__main__":
    main()
