"""Train an image classifier from scratch or fine-tune one, on any image-classification dataset, with the Trainer.

    accelerate launch examples/train.py                                   # simple-cnn on the shipped CIFAR-10 sample
    accelerate launch examples/train.py --model_name_or_path vit-cifar --dataset_name uoft-cs/cifar10
    accelerate launch examples/train.py --model_name_or_path google/vit-base-patch16-224 \
        --dataset_name zalando-datasets/fashion_mnist --ignore_mismatched_sizes --learning_rate 5e-5
    python examples/train.py my_run.yaml                                  # every argument from a YAML/JSON file

The model is a preset (`vit-cifar`, `vit-tiny`, `vit-small`, `vit-base`, `simple-cnn`, `compact-cnn`), a local
directory or Hub id, or a timm architecture name. The run keeps the best checkpoint by validation accuracy, writes
TensorBoard logs, `all_results.json`, the model, its image processor and its model card (README.md) to
`--output_dir`, resumes from the last complete checkpoint there (unless `--overwrite_output_dir`), and pushes all of
it to the Hub with `--push_to_hub` (`--hub_model_id user/name`).
"""

from __future__ import annotations

from transformers import TrainingArguments

from hf_vision_distill.recipes import (
    SHIPPED_SAMPLE,
    TRAINING_DEFAULTS,
    DataArguments,
    ModelArguments,
    Recipe,
    RunArguments,
    parse_arguments,
    run_recipe,
)
from hf_vision_distill.training import ImageClassificationTrainer

# The recipe's defaults; anything given on the command line or in the config file wins.
DEFAULTS = {
    **TRAINING_DEFAULTS,
    "model_name_or_path": "simple-cnn",
    "dataset_name": SHIPPED_SAMPLE,
    "output_dir": "outputs/train",
}
ARGUMENTS = (ModelArguments, DataArguments, RunArguments, TrainingArguments)


def parse(argv: list[str] | None) -> tuple[ModelArguments, DataArguments, RunArguments, TrainingArguments]:
    return parse_arguments(ARGUMENTS, DEFAULTS, argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    recipe = Recipe.start("examples/train.py", ARGUMENTS, DEFAULTS, argv)
    if recipe.output.finished:
        return recipe.output.results
    model_args, data_args, _, _ = recipe.arguments
    loaded, _ = recipe.prepare(model_args, data_args)
    trainer = ImageClassificationTrainer(model=loaded.model, **recipe.trainer_arguments(loaded))
    metrics = recipe.train(trainer)
    metrics["num_parameters"] = sum(parameter.numel() for parameter in loaded.model.parameters())
    metrics.update(recipe.evaluate(trainer))
    recipe.finish(trainer, loaded, metrics)
    return metrics


if __name__ == "__main__":
    run_recipe(main)
