"""What a model costs: FLOPs per image, inference latency and throughput, and a `torch.profiler` trace with its
operator table. Used by examples/compare.py; each function takes a model and an input size, nothing else."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _input(model: nn.Module, batch_size: int, image_size: tuple[int, int]) -> torch.Tensor:
    parameter = next(model.parameters())
    return torch.randn(batch_size, 3, *image_size, device=parameter.device, dtype=parameter.dtype)


@torch.no_grad()
def flops_per_image(model: nn.Module, image_size: tuple[int, int]) -> int:
    """Forward FLOPs for one image (matmuls and convolutions, counted by `torch.utils.flop_counter`; one
    multiply-add is two FLOPs)."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=_input(model, 1, image_size))
    return int(counter.get_total_flops())


@torch.no_grad()
def seconds_per_batch(
    model: nn.Module, image_size: tuple[int, int], batch_size: int, repeats: int = 10, warmup: int = 3
) -> float:
    """Median wall time of one forward pass in eval mode (after `warmup` untimed passes; CUDA synchronised)."""
    model.eval()
    pixel_values = _input(model, batch_size, image_size)
    synchronize = torch.cuda.synchronize if pixel_values.is_cuda else (lambda: None)
    times = []
    for step in range(warmup + repeats):
        synchronize()
        start = time.perf_counter()
        model(pixel_values=pixel_values)
        synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model: nn.Module, image_size: tuple[int, int], batch_size: int = 64, repeats: int = 10) -> dict[str, float]:
    """Latency at batch 1 (milliseconds) and throughput at `batch_size` (images per second), in eval mode."""
    latency = seconds_per_batch(model, image_size, 1, repeats=repeats)
    batch_seconds = seconds_per_batch(model, image_size, batch_size, repeats=max(3, repeats // 2))
    return {"latency_ms": 1000 * latency, "throughput_images_per_s": batch_size / batch_seconds}


@torch.no_grad()
def profile_inference(
    model: nn.Module, image_size: tuple[int, int], trace_path: str | Path, batch_size: int = 16, steps: int = 3
) -> str:
    """Profiles `steps` forward passes; writes the Chrome trace JSON (open in chrome://tracing or Perfetto) to
    `trace_path` and returns the operator table (self time, top 20)."""
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    pixel_values = _input(model, batch_size, image_size)
    model(pixel_values=pixel_values)  # warm-up outside the trace
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pixel_values.is_cuda else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(steps):
            model(pixel_values=pixel_values)
    Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(trace_path))
    sort_by = "self_cuda_time_total" if pixel_values.is_cuda else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=20)


__all__ = ["flops_per_image", "profile_inference", "seconds_per_batch", "speed"]
