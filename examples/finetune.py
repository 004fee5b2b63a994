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

from transformers import TrainingArguments, set_seed

from hf_vision_distill.evaluation import build_compute_metrics
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
    RunArguments,
    build_inputs,
    check_hub_access,
    evaluation_settings_for,
    export_output,
    load_data,
    load_model,
    log_often_enough,
    parse_arguments,
    prepare_output_dir,
    push_output,
    run_recipe,
    setup_run,
    write_model_card,
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
    """What an overfitting check changes: few images, nothing random or regularising, evaluation on them."""
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
    training_args = dataclasses.replace(
        training_args, weight_decay=0.0, label_smoothing_factor=0.0, warmup_steps=0, lr_scheduler_type="constant"
    )
    return data_args, finetuning_args, training_args


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, finetuning_args, sanity_args, run_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, FineTuningArguments, SanityArguments, RunArguments, TrainingArguments),
        DEFAULTS,
        argv,
    )
    setup_run(training_args)
    check_hub_access(training_args)
    output = prepare_output_dir((model_args, data_args, finetuning_args, sanity_args, training_args), training_args,
                                run_args)  # fmt: skip
    if output.finished:
        return output.results
    if not model_args.model_name_or_path:
        raise ValueError(
            "no backbone: pass --model_name_or_path (a Hub id such as google/vit-base-patch16-224 or "
            "timm/resnet18.a1_in1k, a local folder, or a timm name)."
        )
    if sanity_args.overfit_batches:
        data_args, finetuning_args, training_args = sanity_settings(
            data_args, finetuning_args, training_args, sanity_args.overfit_batches
        )
    set_seed(training_args.seed)
    data = load_data(data_args, training_args)
    training_args = evaluation_settings_for(data, training_args)

    loaded = load_model(model_args, data.id2label, token=training_args.hub_token)
    model = loaded.model
    apply_strategy(model, finetuning_args)
    trainable = describe_trainable(model)
    logger.info(
        "%s: %s, %d blocks, input %s; strategy %s: %d of %d parameters train (%.2f%%).",
        model_args.model_name_or_path, type(model).__name__, len(block_groups(model)[1]), loaded.image_size,
        finetuning_args.strategy, trainable["trainable_parameters"], trainable["total_parameters"],
        100 * trainable["trainable_share"],
    )  # fmt: skip

    inputs = build_inputs(data, data_args, training_args, loaded.image_size, loaded.image_mean, loaded.image_std,
                          interpolation=loaded.interpolation)  # fmt: skip
    train_dataset, eval_datasets, training_args = inputs.train_dataset, inputs.eval_datasets, inputs.training_args
    training_args = log_often_enough(training_args, len(train_dataset), argv)
    if sanity_args.overfit_batches:  # augmentation is off, so the training images double as the evaluation set
        eval_datasets = {"validation": train_dataset}
    callbacks = [GradualUnfreezing(model, finetuning_args.unfreeze_every_epochs)]
    trainer = FineTuningTrainer(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets.get("validation"),
        data_collator=inputs.train_collator,
        eval_data_collator=inputs.eval_collator,
        compute_metrics=build_compute_metrics(),
        processing_class=loaded.image_processor,
        callbacks=callbacks if finetuning_args.strategy == "gradual" else None,
    )
    output.record_arguments()  # training starts: what a rerun is compared with
    train_result = trainer.train(resume_from_checkpoint=output.checkpoint)
    trainer.save_model(_internal_call=True)  # not pushed yet: push_output does, with the card
    trainer.save_state()
    final_trainable = describe_trainable(model)["trainable_parameters"]
    metrics = {**train_result.metrics, **trainable, "trainable_parameters_at_end": final_trainable}
    for split, dataset in eval_datasets.items():
        metrics.update(trainer.evaluate(dataset, metric_key_prefix="eval" if split == "validation" else split))
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)
    if sanity_args.overfit_batches:
        logger.info("Sanity check: accuracy %.4f on the %d training images it trained on (expect ~1.0).",
                    metrics["eval_accuracy"], len(train_dataset))  # fmt: skip

    if not sanity_args.overfit_batches:
        hyperparameters = {
            "strategy": finetuning_args.strategy,
            "layer decay": finetuning_args.layer_decay,
            "head learning rate": finetuning_args.head_learning_rate or training_args.learning_rate,
            "trainable parameters at the start": f"{trainable['trainable_parameters']:,} "
            f"({100 * trainable['trainable_share']:.2f}%)",
        }
        write_model_card(trainer, loaded, recipe="examples/finetune.py", argv=argv, model_args=model_args,
                         data_args=data_args, metrics=metrics, extra_hyperparameters=hyperparameters)  # fmt: skip
        export_output(training_args, run_args, model_args.trust_remote_code)
    if training_args.push_to_hub:
        push_output(trainer)
    return metrics


if __name__ == "__main__":
    run_recipe(main)
