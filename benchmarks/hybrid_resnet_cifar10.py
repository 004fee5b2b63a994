"""Hybrid TransformerConv-ResNet on CIFAR-10: conversion, stage 1, stage 2 and the random-init ablation, one table.

    # the teacher: a ResNet-18 layout CNN trained with the training recipe, e.g. (CPU budget, half width)
    python examples/train.py --model_name_or_path resnet18-cifar \
        --config_overrides '{"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256]}' \
        --dataset_name ../shared/datasets/cifar10 --num_train_epochs 8 --learning_rate 2e-3 --bf16 --use_cpu \
        --output_dir outputs/hybrid/teacher
    python benchmarks/hybrid_resnet_cifar10.py --teacher outputs/hybrid/teacher --output_dir outputs/hybrid \
        -- --bf16 --use_cpu

Runs, in this process, `examples/layerwise_distill.py` (conversion + stage 1), `examples/finetune.py` on its
result (stage 2) and `examples/finetune.py` on a randomly initialised hybrid of the same layout (the ablation: as many
epochs as stages 1 and 2 together, at a from-scratch learning rate), then writes `hybrid_results.md` beside them.
Arguments after `--` go to all three recipes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the recipe is being imported
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The trained ResNet-18-layout CNN (folder or Hub id).")
    parser.add_argument("--dataset_name", default="../shared/datasets/cifar10")
    parser.add_argument("--output_dir", default="outputs/hybrid")
    parser.add_argument("--stage1_epochs", type=float, default=1)
    parser.add_argument("--stage2_epochs", type=float, default=2)
    parser.add_argument("--stage2_learning_rate", type=float, default=3e-4)
    parser.add_argument("--scratch_learning_rate", type=float, default=2e-3)
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    output_dir = Path(args.output_dir)
    common = ["--dataset_name", args.dataset_name, "--overwrite_output_dir", *extra]

    report = recipe("layerwise_distill").main([
        "--teacher_model_name_or_path", args.teacher, "--output_dir", str(output_dir / "stage1"),
        "--num_train_epochs", str(args.stage1_epochs), *common,
    ])  # fmt: skip
    stage2 = recipe("finetune").main([
        "--model_path", str(output_dir / "stage1"), "--output_dir", str(output_dir / "stage2"),
        "--num_train_epochs", str(args.stage2_epochs), "--learning_rate", str(args.stage2_learning_rate), *common,
    ])  # fmt: skip
    # the converted hybrid's layout (the teacher may be a timm/transformers/torchvision ResNet)
    hybrid_config = json.loads((output_dir / "stage1" / "config.json").read_text())
    layout = {name: hybrid_config[name] for name in ("embedding_size", "hidden_sizes", "depths", "stem")}
    scratch_epochs = args.stage1_epochs + args.stage2_epochs
    scratch = recipe("finetune").main([
        "--model_path", "hybrid-resnet18", "--config_overrides", json.dumps({**layout, "block_types":
        report["block_types"]}), "--output_dir", str(output_dir / "scratch"),
        "--num_train_epochs", str(scratch_epochs), "--learning_rate", str(args.scratch_learning_rate), *common,
    ])  # fmt: skip

    def epochs(count: float) -> str:
        return f"{count:g} epoch" + ("" if count == 1 else "s")

    accuracy, parameters = report["accuracy"], report["parameters"]
    rows = [
        ("teacher (CNN)", accuracy["teacher_test"], parameters["teacher"]),
        ("hybrid, right after conversion", accuracy["converted_test"], parameters["hybrid"]),
        (f"hybrid, after stage 1 ({epochs(args.stage1_epochs)})", accuracy["stage1_test"], parameters["hybrid"]),
        (f"hybrid, after stage 2 ({epochs(args.stage2_epochs)})", stage2["test_accuracy"], parameters["hybrid"]),
        (f"hybrid from random init ({epochs(scratch_epochs)})", scratch["test_accuracy"], parameters["hybrid"]),
    ]
    lines = ["| model | test accuracy | share of teacher's | parameters |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {value:.4f} | {value / accuracy['teacher_test']:.1%} | {count:,} |"
              for name, value, count in rows]  # fmt: skip
    errors = report["block_relative_error"]
    lines += ["", "| block | relative error, converted | after stage 1 |", "| --- | --- | --- |"]
    lines += [
        f"| {name} | {errors['converted'][name]:.4f} | {errors['stage1'][name]:.4f} |" for name in errors["stage1"]
    ]
    lines += [
        "",
        "| parameters | total | " + " | ".join(f"stage {i + 1}" for i in range(4)) + " |",
        "| --- " * 6 + "|",
    ]
    for name in ("teacher", "hybrid"):
        per_stage = " | ".join(f"{count:,}" for count in parameters[f"{name}_per_stage"])
        lines.append(f"| {name} | {parameters[name]:,} | {per_stage} |")
    text = "\n".join(lines) + "\n"
    (output_dir / "hybrid_results.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
