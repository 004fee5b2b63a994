"""int8 against float32 logits with full-range and 7-bit (`reduce_range`) weights, on this CPU.

x86 CPUs without VNNI run ONNX Runtime's uint8 x int8 convolutions with VPMADDUBSW, whose int16 sums of two products
saturate on full-range weights; 7-bit weights avoid that. For each seed: a compact-cnn moved off its initialisation
(as tests/test_export.py does), exported to ONNX, quantised both ways on 64 training images of the shipped sample,
and compared with its float32 model on 16 of them: ||int8 - fp32|| / ||fp32 - mean(fp32)||.

    python benchmarks/int8_reduce_range.py --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np
import torch

from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.export import (
    calibration_set_from_dataset,
    export_classifier,
    int8_needs_reduced_range,
    onnx_logits,
    onnx_session,
    quantize_int8,
)
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.profiling import cpu_flags

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    data = load_image_classification_dataset(str(REPO_ROOT / "data" / "cifar10-sample"), max_train_samples=200)
    vnni = sorted((cpu_flags() or set()) & {"avx512_vnni", "avx_vnni", "amx_int8"})
    print(f"## int8 weights: full range against reduce_range, {datetime.date.today()}, CPU with avx2: "
          f"{'avx2' in (cpu_flags() or set())}, VNNI flags: {vnni or 'none'} (reduced range chosen here: "
          f"{int8_needs_reduced_range()})\n")  # fmt: skip
    print(f"    python benchmarks/int8_reduce_range.py --seeds {' '.join(map(str, args.seeds))}\n")
    print("| seed | full-range weights | 7-bit weights (reduce_range) |\n| ---: | ---: | ---: |")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as scratch:
            torch.manual_seed(seed)
            loaded = load_image_classifier("compact-cnn", id2label=data.id2label)
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for parameter in loaded.model.parameters():
                    parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
            loaded.model.save_pretrained(Path(scratch) / "model")
            loaded.image_processor.save_pretrained(Path(scratch) / "model")
            exported = export_classifier(Path(scratch) / "model", Path(scratch) / "onnx")
            calibration = calibration_set_from_dataset(data.dataset["train"], exported.specification, num_images=64)
            pixel_values = calibration.pixel_values[:16]
            fp32 = onnx_logits(onnx_session(exported.onnx_path), pixel_values)
            errors = []
            for reduce_range in (False, True):
                path = Path(scratch) / f"int8-{reduce_range}.onnx"
                quantize_int8(exported.onnx_path, path, calibration, exported.specification, reduce_range=reduce_range)
                int8 = onnx_logits(onnx_session(path), pixel_values)
                errors.append(np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32 - fp32.mean(axis=0)))
        print(f"| {seed} | {errors[0]:.3f} | {errors[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
