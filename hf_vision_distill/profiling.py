"""What a model costs: FLOPs per image (inference and training), inference latency and throughput with their spread,
and a `torch.profiler` trace with its operator table. Used by examples/compare.py; each function takes a model and an
input size, nothing else."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def training_flops_per_image(model: nn.Module, image_size: tuple[int, int]) -> int:
    """Forward and backward FLOPs for one training image, as the model's parameters stand: the backward pass is
    counted as autograd runs it for the parameters that require gradients, so a frozen backbone (a linear probe)
    costs about one forward pass, and a fully trained model about three (the backward pass computes gradients of both
    the activations and the weights). Counted in eval mode (no BatchNorm statistics updated); `.grad` is not touched.
    Returns the forward FLOPs alone when no parameter trains."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            logits = model(pixel_values=_input(model, 1, image_size)).logits
            if trainable:
                torch.autograd.grad(logits.float().sum(), trainable, allow_unused=True)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags (`avx2`, `avx512_bf16`, `amx_bf16`, `avx512_vnni`, ...) from /proc/cpuinfo; `None`
    where that file does not exist (not Linux)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


@dataclass
class Timing:
    """Wall times of repeated forward passes (seconds): the median and the 10th and 90th percentiles of `calls`
    timed calls, taken after `warmup_calls` untimed ones."""

    median_s: float
    p10_s: float
    p90_s: float
    calls: int
    warmup_calls: int


@torch.no_grad()
def time_forward(
    model: nn.Module,
    image_size: tuple[int, int],
    batch_size: int,
    seconds: float = 1.0,
    min_calls: int = 10,
    max_calls: int = 1000,
    warmup_seconds: float = 0.25,
    min_warmup_calls: int = 3,
) -> Timing:
    """Times forward passes in eval mode (CUDA synchronised around each call).

    The first calls are slow for reasons that say nothing about the model (oneDNN and cuDNN pick and build their
    kernels, caches and the allocator fill), so at least `min_warmup_calls` and `warmup_seconds` of calls run untimed.
    Then calls are timed until `seconds` have passed and at least `min_calls` were taken (at most `max_calls`): a fast
    model gets hundreds of samples, whose median a busy, shared machine moves far less than it moves a handful.

    Args:
        seconds (`float`, *optional*, defaults to 1.0):
            Time budget of the timed calls (exceeded only to reach `min_calls`).
    """
    model.eval()
    pixel_values = _input(model, batch_size, image_size)
    synchronize = torch.cuda.synchronize if pixel_values.is_cuda else (lambda: None)

    def one_call() -> float:
        synchronize()
        start = time.perf_counter()
        model(pixel_values=pixel_values)
        synchronize()
        return time.perf_counter() - start

    warmup_calls, warmup_started = 0, time.perf_counter()
    while warmup_calls < min_warmup_calls or time.perf_counter() - warmup_started < warmup_seconds:
        one_call()
        warmup_calls += 1
    times, started = [], time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - started < seconds):
        times.append(one_call())
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return Timing(float(median), float(p10), float(p90), len(times), warmup_calls)


def seconds_per_batch(model: nn.Module, image_size: tuple[int, int], batch_size: int, seconds: float = 1.0) -> float:
    """Median wall time of one forward pass in eval mode (see `time_forward`)."""
    return time_forward(model, image_size, batch_size, seconds=seconds).median_s


def speed(
    model: nn.Module, image_size: tuple[int, int], batch_size: int = 64, seconds: float = 1.0
) -> dict[str, float | int]:
    """Latency at batch 1 (milliseconds: median, 10th and 90th percentile, and the number of timed calls) and
    throughput at `batch_size` (images per second at the median batch time, and at the 90th and 10th percentile
    times), in eval mode; each measured for about `seconds` after a warm-up (see `time_forward`)."""
    latency = time_forward(model, image_size, 1, seconds=seconds)
    batch = time_forward(model, image_size, batch_size, seconds=seconds, min_calls=5)
    return {
        "latency_ms": 1000 * latency.median_s,
        "latency_p10_ms": 1000 * latency.p10_s,
        "latency_p90_ms": 1000 * latency.p90_s,
        "latency_calls": latency.calls,
        "throughput_images_per_s": batch_size / batch.median_s,
        "throughput_p10_images_per_s": batch_size / batch.p90_s,
        "throughput_p90_images_per_s": batch_size / batch.p10_s,
        "throughput_calls": batch.calls,
    }


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


__all__ = [
    "Timing",
    "flops_per_image",
    "profile_inference",
    "seconds_per_batch",
    "speed",
    "time_forward",
    "training_flops_per_image",
]
