"""Fine-tune a pretrained image classifier on a new dataset: linear probe, the last n blocks, gradual unfreezing or
full fine-tuning, with layer-wise learning-rate decay and a head learning rate.

    # linear probe of a ViT-Small from the Hub on Fashion-MNIST (28x28 grayscale -> 224x224 RGB, ImageNet mean/std)
    accelerate launch examples/finetune.py --model_name_or_path WinKawaks/vit-small-patch16-224 \
        --dataset_name zalando-datasets/fashion_mnist --strategy linear_probe --learning_rate 1e-3
    # the last 4 blocks of a timm ResNet-18, then everything with layer-wise decay
    accelerate launch examples/finetune.py --model_name_or_path timm/resnet18.a1_in1k \
        --dataset_name uoft-cs/cifar10 --strategy last_n --num_unfrozen_blocks 4
    accelerate launch examples/finetune.py --model_name_or_path google/vit-base-patch16-224 \
        --dataset_name uoft-cs/cifar10 --strategy full --layer_decay 0.75 --head_learning_rate 1e-3
    # one more block every 2 epochs, from the head down
    python examples/finetune.py --model_name_or_path facebook/deit-tiny-patch16-224 --strategy gradual \
        --unfreeze_every_epochs 2 --num_train_epochs 8
    # sanity check: overfit 2 batches (no augmentation, no regularisation); training accuracy should reach ~100%
    python examples/finetune.py --model_name_or_path my-model --overfit_batches 2
    python examples/finetune.py my_run.yaml             # every argument from a YAML/JSON file

The backbone is any classifier `load_image_classifier` knows (a Hub id or local folder of transformers, timm or our
models, or a timm name with a pretrained tag); it gets a new head for the dataset's labels, and the input pipeline
follows its pretrained configuration (size, mean, std): small images are upsampled, grayscale becomes RGB. The run
prints the trainable-parameter count and share, saves them in `all_results.json`, and writes the model, its image
processor and model card to `--output_dir` like the training recipe. Seeded (`--seed`); `--full_determinism` makes
the kernels deterministic too, at some cost in speed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_vision_distill.finetuning import (
    FineTuningArguments,
    FineTuningTrainer,
    GradualUnfreezing,
    apply_strategy,
    block_groups,
    describe_trainable,
)
from hf_vision_distill.recipes import (
    SHIPPED_SAMPLE,
    TRAINING_DEFAULTS,
    DataArguments,
    ModelArguments,
    Recipe,
    RunArguments,
    run_recipe,
)

logger = logging.getLogger(__name__)


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "dataset_name": SHIPPED_SAMPLE,
    "output_dir": "outputs/finetune",
    "num_train_epochs": 5,
    "learning_rate": 1e-4,
    # A pretrained checkpoint usually has a head for other labels: replace it rather than fail.
    "ignore_mismatched_sizes": True,
}


@dataclass
class SanityArguments:
    overfit_batches: int = field(
        default=0,
        metadata={
            "help": "Sanity check: train on this many batches of training images only, without augmentation, "
            "weight decay or head dropout, for --num_train_epochs, and evaluate on those same images (training "
            "accuracy; it should reach ~100%). 0 turns it off."
        },
    )


def sanity_settings(data_args, finetuning_args, training_args, overfit_batches: int):
    """What an overfitting check changes: few images, nothing random or regularising, evaluation on them. Returns
    the data and fine-tuning arguments to use, and the training-argument changes (`final_training_arguments`)."""
    data_args = dataclasses.replace(
        data_args,
        max_train_samples=overfit_batches * training_args.per_device_train_batch_size * training_args.world_size,
        crop="none",
        horizontal_flip=False,
        color_jitter=0.0,
        auto_augment=None,
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    )
    finetuning_args = dataclasses.replace(finetuning_args, head_dropout=0.0)
    reason = f"--overfit_batches {overfit_batches}: nothing regularises"
    training_changes = {"weight_decay": (0.0, reason), "label_smoothing_factor": (0.0, reason),
                        "warmup_steps": (0, reason), "lr_scheduler_type": ("constant", reason)}  # fmt: skip
    return data_args, finetuning_args, training_changes


ARGUMENTS = (ModelArguments, DataArguments, FineTuningArguments, SanityArguments, RunArguments, TrainingArguments)


def check_sanity_run(arguments: tuple) -> None:
    """A sanity check's model is no model to publish: refused before the Hub is contacted."""
    sanity_args, training_args = arguments[3], arguments[5]
    if sanity_args.overfit_batches and training_args.push_to_hub:
        raise ValueError(
            f"--overfit_batches {sanity_args.overfit_batches} is a sanity check of the training loop, and its model "
            "is not published: leave out --push_to_hub (or --overfit_batches to fine-tune for real)."
        )


def main(argv: list[str] | None = None) -> dict[str, float]:
    recipe = Recipe.start("examples/finetune.py", ARGUMENTS, DEFAULTS, argv, check=check_sanity_run)
    if recipe.output.finished:
        return recipe.output.results
    model_args, data_args, finetuning_args, sanity_args, _, _ = recipe.arguments
    if not model_args.model_name_or_path:
        raise ValueError(
            "no backbone: pass --model_name_or_path (a Hub id such as google/vit-base-patch16-224 or "
            "timm/resnet18.a1_in1k, a local folder, or a timm name)."
        )
    overfit, changes = sanity_args.overfit_batches, {}
    if overfit:
        training_args = recipe.training_args
        data_args, finetuning_args, changes = sanity_settings(data_args, finetuning_args, training_args, overfit)
    recipe.load_data(data_args)
    loaded = recipe.load_model(model_args)
    inputs = recipe.prepare_inputs(loaded, changes=changes)
    model = loaded.model
    apply_strategy(model, finetuning_args)
    trainable = describe_trainable(model)
    logger.info(
        "%s: %d blocks; strategy %s: %d of %d parameters train (%.2f%%).",
        model_args.model_name_or_path, len(block_groups(model)[1]), finetuning_args.strategy,
        trainable["trainable_parameters"], trainable["total_parameters"], 100 * trainable["trainable_share"],
    )  # fmt: skip
    trainer_arguments = recipe.trainer_arguments(loaded)
    if overfit:  # augmentation is off, so the training images double as the evaluation set
        inputs.eval_datasets = {"validation": inputs.train_dataset}
        trainer_arguments["eval_dataset"] = inputs.train_dataset
    gradual = finetuning_args.strategy == "gradual"
    trainer = FineTuningTrainer(
        model=model,
        finetuning_args=finetuning_args,
        callbacks=[GradualUnfreezing(model, finetuning_args.unfreeze_every_epochs)] if gradual else None,
        **trainer_arguments,
    )
    metrics = {**recipe.train(trainer), **trainable}
    metrics["trainable_parameters_at_end"] = describe_trainable(model)["trainable_parameters"]
    metrics.update(recipe.evaluate(trainer))
    if overfit:
        logger.info("Sanity check: accuracy %.4f on the %d training images it trained on (expect ~1.0).",
                    metrics["eval_accuracy"], len(inputs.train_dataset))  # fmt: skip
    hyperparameters = {
        "strategy": finetuning_args.strategy,
        "layer decay": finetuning_args.layer_decay,
        "head learning rate": finetuning_args.head_learning_rate or recipe.training_args.learning_rate,
        "trainable parameters at the start": f"{trainable['trainable_parameters']:,} "
        f"({100 * trainable['trainable_share']:.2f}%)",
    }
    # A sanity check trains no model worth a card or an export.
    recipe.finish(trainer, loaded, metrics, card=not overfit, extra_hyperparameters=hyperparameters)
    return metrics


if __name__ == "__main__":
    run_recipe(main)
