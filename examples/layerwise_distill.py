"""Turn a trained ResNet-18 into a hybrid TransformerConv-ResNet: convert it, then distill it block by block (stage 1).

    # from our CIFAR ResNet-18 (trained with examples/train.py --model_name_or_path resnet18-cifar)
    python examples/layerwise_distill.py --teacher_model_name_or_path outputs/resnet18 \
        --dataset_name uoft-cs/cifar10 --output_dir outputs/hybrid-stage1
    # from timm's or transformers' ResNet-18 fine-tuned on your labels; stages 2-4 as transformer blocks
    accelerate launch examples/layerwise_distill.py --teacher_model_name_or_path my-user/resnet18-cifar10 \
        --block_types conv transformer transformer transformer
    python examples/layerwise_distill.py my_run.yaml      # every argument from a YAML/JSON file
    # stage 2: end-to-end fine-tuning of the result (cross-entropy, augmentation, AdamW, cosine schedule) ...
    python examples/finetune.py --model_path outputs/hybrid-stage1 --dataset_name uoft-cs/cifar10
    # ... or with logit distillation from the CNN as well
    python examples/distill.py --model_name_or_path outputs/hybrid-stage1 \
        --teacher_model_name_or_path outputs/resnet18 --feature_loss_weight 0 --temperature 4

The teacher is any ResNet-18-style CNN `load_image_classifier` loads (ours, a timm `resnet18` and its CIFAR
variants, transformers' `microsoft/resnet-18`) with a head for the dataset's labels. Its stem, shortcuts, norms,
head and the stages that stay convolutional are copied; each TransformerConv block starts as its BasicBlock
(`hybrid_from_resnet`). Stage 1 trains only the TransformerConv blocks, each to reproduce its teacher block's output
from the teacher's input to that block, all in one pass (`LayerwiseDistillationTrainer`).

Writes the hybrid (loadable with `from_pretrained`), its image processor and model card, and `layerwise_report.md`
/ `.json`: parameters of teacher and hybrid (total and per stage), accuracy of the teacher, of the hybrid right after
conversion and after stage 1, and each block's relative error on the validation images before and after stage 1;
`block_errors.png` plots the per-block losses during training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from hf_vision_distill.distillation import LayerwiseDistillationTrainer, block_names
from hf_vision_distill.evaluation import markdown_table, plot_log_history
from hf_vision_distill.models.hybrid_resnet import HybridResNetConfig
from hf_vision_distill.models.hybrid_resnet.convert_hybrid_resnet import hybrid_from_resnet, resnet_as_hybrid
from hf_vision_distill.recipes import (
    SHIPPED_SAMPLE,
    SPLIT_PREFIXES,
    TRAINING_DEFAULTS,
    DataArguments,
    ModelArguments,
    Recipe,
    RunArguments,
    load_model,
    run_recipe,
)

logger = logging.getLogger(__name__)

_HYBRID = HybridResNetConfig()
DEFAULTS = {
    **TRAINING_DEFAULTS,
    "dataset_name": SHIPPED_SAMPLE,
    "output_dir": "outputs/hybrid-stage1",
    "num_train_epochs": 2,
    "learning_rate": 1e-3,
    # the blocks are judged by how well they copy the teacher, not by accuracy
    "metric_for_best_model": "loss",
    "greater_is_better": False,
}


@dataclass
class HybridArguments:
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The trained ResNet-18-style CNN: a local folder or Hub id (ours, timm, transformers)."},
    )
    block_types: list[str] = field(
        default_factory=lambda: list(_HYBRID.block_types),
        metadata={"help": "conv or transformer, one per stage (4 for ResNet-18)."},
    )
    value_dim_ratio: float = field(
        default=_HYBRID.value_dim_ratio,
        metadata={"help": "Value width per head / channels: the rank each conv tap keeps (1.0 copies exactly)."},
    )
    key_dim: int = field(default=_HYBRID.key_dim, metadata={"help": "Query/key width per head."})
    mlp_ratio: float = field(default=_HYBRID.mlp_ratio, metadata={"help": "Feed-forward width / channels (0: none)."})
    locality_strength: float = field(
        default=_HYBRID.locality_strength,
        metadata={"help": "Initial position bias of each head on its offset (higher: closer to the convolution)."},
    )


def stage_parameters(model) -> list[int]:
    return [sum(parameter.numel() for parameter in stage.parameters()) for stage in model.base_model.stages]


ARGUMENTS = (HybridArguments, DataArguments, RunArguments, TrainingArguments)


def main(argv: list[str] | None = None) -> dict:
    recipe = Recipe.start("examples/layerwise_distill.py", ARGUMENTS, DEFAULTS, argv)
    if recipe.output.finished:
        return recipe.output.results
    hybrid_args, data_args, _, _ = recipe.arguments
    if not hybrid_args.teacher_model_name_or_path:
        raise ValueError("no teacher: pass --teacher_model_name_or_path (a trained ResNet-18 folder or Hub id).")
    data = recipe.load_data(data_args)

    # ---- conversion ----
    teacher_args = ModelArguments(model_name_or_path=hybrid_args.teacher_model_name_or_path)
    loaded = load_model(teacher_args, data.id2label, token=recipe.training_args.hub_token)
    if loaded.from_scratch:
        raise ValueError(
            f"{hybrid_args.teacher_model_name_or_path!r} names an architecture, not a trained model; pass the folder "
            "or Hub id of a trained ResNet-18."
        )
    teacher = resnet_as_hybrid(loaded.model)
    hybrid_fields = {name: getattr(hybrid_args, name) for name in
                     ("block_types", "value_dim_ratio", "key_dim", "mlp_ratio", "locality_strength")}  # fmt: skip
    specification = loaded.input_specification  # the hybrid takes the teacher's input
    hybrid = hybrid_from_resnet(teacher, **hybrid_fields, image_size=specification.image_size[0])
    names = block_names(hybrid)
    inputs = recipe.prepare_inputs(loaded)
    eval_datasets = inputs.eval_datasets

    def evaluate(model_trainer, prefix: str, teacher=None) -> dict[str, float]:
        """`{prefix}_{split}_{metric}` for every evaluation split (logged under the Trainer's eval_/test_ names): the
        trainer's model, or the teacher as the trainer runs it."""
        metrics = {}
        for split, dataset in eval_datasets.items():
            key = SPLIT_PREFIXES[split]
            if teacher is None:
                results = model_trainer.evaluate(dataset, metric_key_prefix=key)
            else:
                results = model_trainer.evaluate_forward(teacher, dataset, metric_key_prefix=key)
            metrics.update({f"{prefix}_{split}_{name.removeprefix(key + '_')}": value
                            for name, value in results.items() if name.startswith(key + "_")})  # fmt: skip
        return metrics

    trainer = LayerwiseDistillationTrainer(model=hybrid, teacher=teacher, **recipe.trainer_arguments(loaded))
    trained = [names[index] for index in trainer.blocks]
    logger.info("Hybrid: %s; training blocks %s.", hybrid_args.block_types, trained)

    # The teacher as the trainer runs it (float32 weights under the run's autocast), then the converted hybrid.
    metrics = evaluate(trainer, "teacher", teacher=trainer.teacher)
    metrics.update(evaluate(trainer, "converted"))

    # ---- stage 1 ----
    metrics.update(recipe.train(trainer))
    metrics.update(evaluate(trainer, "stage1"))
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)

    report = write_report(teacher, hybrid, metrics, trained, list(eval_datasets), hybrid_args)
    output_dir = Path(recipe.training_args.output_dir)
    if recipe.training_args.should_save:
        save_report(report, list(eval_datasets), trained, output_dir)
        plot_log_history(trainer.state.log_history, [f"mse_{name}" for name in trained],
                         str(output_dir / "block_errors.png"), "Stage 1: relative squared error")  # fmt: skip
    # the card's results under the Trainer's names (eval_accuracy, test_accuracy, ...)
    results = {key.removeprefix("stage1_").replace("validation_", "eval_", 1): value
               for key, value in metrics.items() if key.startswith("stage1_")}  # fmt: skip
    recipe.publish(trainer, loaded, results, model_args=teacher_args, extra_hyperparameters=hybrid_fields)
    return report


def write_report(teacher, hybrid, metrics: dict, trained: list[str], splits: list[str], hybrid_args) -> dict:
    """Parameters, accuracies at each step, per-block errors before and after stage 1."""
    teacher_parameters, hybrid_parameters = teacher.num_parameters(), hybrid.num_parameters()
    report = {
        "teacher": hybrid_args.teacher_model_name_or_path,
        "block_types": hybrid_args.block_types,
        "parameters": {
            "teacher": teacher_parameters,
            "hybrid": hybrid_parameters,
            "hybrid_share": hybrid_parameters / teacher_parameters,
            "teacher_per_stage": stage_parameters(teacher),
            "hybrid_per_stage": stage_parameters(hybrid),
        },
        "accuracy": {
            f"{step}_{name}": metrics.get(f"{step}_{name}_accuracy")
            for step in ("teacher", "converted", "stage1")
            for name in splits
        },
        # sqrt of the validation average of ||student - teacher||^2 / ||teacher||^2 per block
        "block_relative_error": {
            step: {name: metrics[f"{step}_{splits[0]}_mse_{name}"] ** 0.5 for name in trained}
            for step in ("converted", "stage1")
        },
    }
    return report


def save_report(report: dict, splits: list[str], trained: list[str], output_dir: Path) -> None:
    """layerwise_report.json and a readable layerwise_report.md."""
    teacher_parameters, hybrid_parameters = report["parameters"]["teacher"], report["parameters"]["hybrid"]
    split = "test" if "test" in splits else splits[0]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "layerwise_report.json").write_text(json.dumps(report, indent=2))
    stages = range(len(report["parameters"]["teacher_per_stage"]))
    parameter_rows = [
        {"model": name, "total": f"{report['parameters'][name]:,}",
         **{f"stage {i + 1}": f"{report['parameters'][f'{name}_per_stage'][i]:,}" for i in stages}}
        for name in ("teacher", "hybrid")
    ]  # fmt: skip
    accuracy_rows = [
        {"model": label, **{name: f"{report['accuracy'][f'{step}_{name}']:.4f}" for name in splits}}
        for step, label in (("teacher", "teacher (CNN)"), ("converted", "hybrid, converted"),
                            ("stage1", "hybrid, after stage 1"))
    ]  # fmt: skip
    error_rows = [
        {
            "block": name,
            **{step: f"{report['block_relative_error'][step][name]:.4f}" for step in ("converted", "stage1")},
        }
        for name in trained
    ]
    text = "\n\n".join([
        f"# Layer-wise distillation of {report['teacher']}",
        f"Hybrid stages: {report['block_types']}; parameters {hybrid_parameters:,} = "
        f"{100 * hybrid_parameters / teacher_parameters:.1f}% of the teacher's {teacher_parameters:,}.",
        markdown_table(parameter_rows, [(key, key) for key in parameter_rows[0]]),
        f"Accuracy ({', '.join(splits)}; stage 2 is the fine-tuning run that follows):",
        markdown_table(accuracy_rows, [(key, key) for key in accuracy_rows[0]]),
        "Relative error of each trained block against its teacher block, given the teacher's input, on the "
        f"{splits[0]} images:",
        markdown_table(error_rows, [("block", "block"), ("converted", "converted"), ("stage1", "after stage 1")]),
    ])  # fmt: skip
    (output_dir / "layerwise_report.md").write_text(text + "\n")
    logger.info("Accuracy on %s: teacher %.4f, converted %.4f, after stage 1 %.4f", split,
                report["accuracy"][f"teacher_{split}"], report["accuracy"][f"converted_{split}"],
                report["accuracy"][f"stage1_{split}"])  # fmt: skip


if __name__ == "__main__":
    run_recipe(main)
