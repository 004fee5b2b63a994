"""Train the CIFAR ViT preset and SimpleCNN on CIFAR-10 with examples/train.py, then measure what the foundation
issue asks for, all in one run:

1. test accuracy, macro-F1, training time and training images/s of each model under the same budget;
2. the trained ViT at 48x48 (position embeddings interpolated) against 32x32, on the same test images;
3. training throughput of our ViT against timm's `VisionTransformer` at the same configuration (alternating
   rounds in the same process, median of each; the ratio is the figure that counts).

    python benchmarks/train_cifar10.py --dataset ../shared/datasets/cifar10 --max_train_samples 10000 --epochs 6

Arguments this script does not know go to examples/train.py unchanged (e.g. `--mixup_alpha 0.8
--label_smoothing_factor 0.1` for a full-length GPU run). Each run trains in a fresh output folder. Results are
appended to benchmarks/RESULTS.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_recipe", REPO / "examples" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def train(model_name: str, args: argparse.Namespace, recipe_arguments: list[str], output_dir: Path) -> dict:
    arguments = [
        "--model_name_or_path", model_name, "--dataset_name", args.dataset, "--output_dir", str(output_dir),
        "--overwrite_output_dir",
        "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--dataloader_num_workers", str(args.workers),
        "--report_to", "none", "--save_total_limit", "1", "--auto_augment", "trivialaugment",
    ]  # fmt: skip
    if args.max_train_samples:
        arguments += ["--max_train_samples", str(args.max_train_samples)]
    if args.max_eval_samples:
        arguments += ["--max_eval_samples", str(args.max_eval_samples)]
    if torch.cuda.is_available():
        arguments += ["--bf16", "true"]
    arguments += recipe_arguments  # last, so they override the above
    start = time.perf_counter()
    metrics = load_recipe().main(arguments)
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics


@torch.no_grad()
def accuracy_at(model_dir: Path, dataset_path: str, image_size: int, max_samples: int | None, workers: int) -> float:
    """Test accuracy with images resized to `image_size`, interpolating position embeddings when it differs."""
    from hf_vision_distill.data import (
        ImageClassificationCollator,
        load_image_classification_dataset,
        with_image_transform,
    )
    from hf_vision_distill.models import load_image_classifier

    data = load_image_classification_dataset(dataset_path, max_eval_samples=max_samples, validation_size=0.0)
    loaded = load_image_classifier(str(model_dir), id2label=data.id2label)
    model = loaded.model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
    transform = loaded.input_specification.with_size(image_size).eval_transform()
    test = with_image_transform(data.dataset["test"], transform)
    loader = DataLoader(test, batch_size=256, num_workers=workers, collate_fn=ImageClassificationCollator())
    correct = total = 0
    resized = image_size != loaded.input_specification.image_size[0]
    for batch in loader:
        pixel_values = batch["pixel_values"].to(model.device)
        logits = model(pixel_values, interpolate_pos_encoding=resized).logits
        correct += (logits.argmax(-1).cpu() == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return correct / total


def throughput_ours_vs_timm(batch_size: int, rounds: int, steps: int) -> dict:
    """Training images/s (forward, backward, AdamW step) of our vit-cifar and timm's ViT of the same shape."""
    import timm

    from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = VisionTransformerConfig.from_preset("vit-cifar", num_labels=10)
    ours = VisionTransformerForImageClassification(config).to(device).train()
    theirs = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=256, depth=7, num_heads=4,
        mlp_ratio=2.0, num_classes=10, drop_path_rate=config.drop_path_rate,
    ).to(device).train()  # fmt: skip
    parameters = {name: sum(p.numel() for p in m.parameters()) for name, m in (("ours", ours), ("timm", theirs))}
    assert parameters["ours"] == parameters["timm"], parameters

    pixel_values = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step_fn(model, optimizer, is_ours):
        with autocast:
            logits = model(pixel_values).logits if is_ours else model(pixel_values)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    runs = {"ours": (ours, torch.optim.AdamW(ours.parameters()), True),
            "timm": (theirs, torch.optim.AdamW(theirs.parameters()), False)}  # fmt: skip
    for model, optimizer, is_ours in runs.values():  # warm-up
        for _ in range(2):
            step_fn(model, optimizer, is_ours)
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, optimizer, is_ours) in runs.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                step_fn(model, optimizer, is_ours)
            if device == "cuda":
                torch.cuda.synchronize()
            rates[name].append(batch_size * steps / (time.perf_counter() - start))
    ours_rate, timm_rate = statistics.median(rates["ours"]), statistics.median(rates["timm"])
    return {"ours_images_per_second": ours_rate, "timm_images_per_second": timm_rate, "ratio": ours_rate / timm_rate,
            "parameters": parameters["ours"], "batch_size": batch_size, "rounds": rounds, "steps": steps}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    parser.add_argument("--max_train_samples", type=int, default=10000)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=["vit-cifar", "simple-cnn"])
    parser.add_argument("--throughput_rounds", type=int, default=5)
    parser.add_argument("--throughput_steps", type=int, default=5)
    parser.add_argument("--output_dir", default=str(REPO / "outputs" / "benchmark_cifar10"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args, recipe_arguments = parser.parse_known_args(argv)
    output_dir = Path(args.output_dir) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    command = "python benchmarks/train_cifar10.py " + " ".join(sys.argv[1:] if argv is None else argv)

    results = {"command": command, "recipe_arguments": recipe_arguments, "models": {}}
    for model_name in args.models:
        metrics = train(model_name, args, recipe_arguments, output_dir / model_name)
        results["models"][model_name] = metrics
        if model_name.startswith("vit"):
            results["interpolation"] = {
                size: accuracy_at(output_dir / model_name, args.dataset, size, args.max_eval_samples, args.workers)
                for size in (32, 48)
            }
    results["throughput"] = throughput_ours_vs_timm(args.batch_size, args.throughput_rounds, args.throughput_steps)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    write_results(results, args)
    print(json.dumps(results, indent=2))
    return results


def write_results(results: dict, args: argparse.Namespace) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"\n## CIFAR-10 from scratch, {datetime.date.today()}, {device}, torch {torch.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "",
        f"    {results['command']}",
        "",
        f"Budget: {args.max_train_samples or 'all 45,000'} training images (after a stratified 10% of the 50,000 "
        f"was held out for validation, of which {args.max_eval_samples or 'all 5,000'} are used), "
        f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.learning_rate}, cosine schedule, "
        "TrivialAugment + pad-crop + flip"
        f"{' + ' + ' '.join(results['recipe_arguments']) if results['recipe_arguments'] else ''}; test set: "
        f"{args.max_eval_samples or 'all 10,000'} images. Training time and images/s are the Trainer's, which "
        "include the per-epoch validation.",
        "",
        "| model | parameters | test accuracy | test macro-F1 | training time (s) | training images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, metrics in results["models"].items():
        lines.append(
            f"| {name} | {metrics['num_parameters'] / 1e6:.2f}M | {metrics['test_accuracy']:.4f} | "
            f"{metrics['test_f1_macro']:.4f} | {metrics['train_runtime']:.0f} | "
            f"{metrics['train_samples_per_second']:.1f} |"
        )
    if "interpolation" in results:
        interpolation = results["interpolation"]
        lines += [
            "",
            f"ViT trained at 32x32, evaluated on the same test images resized to 48x48 with interpolated position "
            f"embeddings: {interpolation[48]:.4f} (at 32x32: {interpolation[32]:.4f}; chance: 0.10).",
        ]
    throughput = results["throughput"]
    lines += [
        "",
        f"Training throughput, our vit-cifar vs timm `VisionTransformer` of the same shape "
        f"({throughput['parameters'] / 1e6:.2f}M parameters each), batch {throughput['batch_size']}, median of "
        f"{throughput['rounds']} alternating rounds of {throughput['steps']} steps: ours "
        f"{throughput['ours_images_per_second']:.1f} images/s, "
        f"timm {throughput['timm_images_per_second']:.1f} images/s, "
        f"ratio **{throughput['ratio']:.3f}x**.",
        "",
    ]
    path = Path(args.results)
    if not path.exists():
        path.write_text("# Benchmark results\n\nEach section: the command, the machine, the figures it printed.\n")
    with path.open("a") as file:
        file.write("\n".join(lines))


if __name__ == "__main__":
    main()
