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

import logging

from transformers import TrainingArguments, set_seed

from hf_vision_distill.evaluation import build_compute_metrics
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
    initialize_from_data,
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
from hf_vision_distill.training import ImageClassificationTrainer

logger = logging.getLogger(__name__)


# The recipe's defaults; anything given on the command line or in the config file wins.
DEFAULTS = {
    **TRAINING_DEFAULTS,
    "model_name_or_path": "simple-cnn",
    "dataset_name": SHIPPED_SAMPLE,
    "output_dir": "outputs/train",
}


def parse(argv: list[str] | None) -> tuple[ModelArguments, DataArguments, RunArguments, TrainingArguments]:
    return parse_arguments((ModelArguments, DataArguments, RunArguments, TrainingArguments), DEFAULTS, argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, run_args, training_args = parse(argv)
    setup_run(training_args)
    check_hub_access(training_args)
    output = prepare_output_dir((model_args, data_args, training_args), training_args, run_args)
    if output.finished:
        return output.results
    set_seed(training_args.seed)
    data = load_data(data_args, training_args)
    training_args = evaluation_settings_for(data, training_args)

    loaded = load_model(model_args, data.id2label, token=training_args.hub_token)
    model = loaded.model
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info("Model %s: %s, %.2fM parameters, input %s", model_args.model_name_or_path,
                type(model).__name__, num_parameters / 1e6, loaded.image_size)  # fmt: skip

    inputs = build_inputs(data, data_args, training_args, loaded.image_size, loaded.image_mean, loaded.image_std,
                          interpolation=loaded.interpolation)  # fmt: skip
    train_dataset, eval_datasets, training_args = inputs.train_dataset, inputs.eval_datasets, inputs.training_args
    training_args = log_often_enough(training_args, len(train_dataset), argv)
    initialize_from_data(loaded, inputs, training_args.device)
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets.get("validation"),
        data_collator=inputs.train_collator,
        eval_data_collator=inputs.eval_collator,
        compute_metrics=build_compute_metrics(),
        processing_class=loaded.image_processor,
    )
    output.record_arguments()  # training starts: what a rerun is compared with
    train_result = trainer.train(resume_from_checkpoint=output.checkpoint)
    trainer.save_model(_internal_call=True)  # the best model and its processor; pushed at the end, with the card
    trainer.save_state()
    metrics = {**train_result.metrics, "num_parameters": num_parameters}
    for split, dataset in eval_datasets.items():
        metrics.update(trainer.evaluate(dataset, metric_key_prefix="eval" if split == "validation" else split))
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)

    write_model_card(trainer, loaded, recipe="examples/train.py", argv=argv, model_args=model_args,
                     data_args=data_args, metrics=metrics)  # fmt: skip
    export_output(training_args, run_args, model_args.trust_remote_code)
    if training_args.push_to_hub:
        push_output(trainer)  # the model, its image processor and the card above
    return metrics


if __name__ == "__main__":
    run_recipe(main)
