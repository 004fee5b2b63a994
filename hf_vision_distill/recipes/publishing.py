"""What a recipe leaves: the ONNX export, the model card and the Hub upload."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..hub import build_model_card, results_from_metrics, upload_classifier_folder
from ..models.loading import LoadedClassifier
from .command_line import DataArguments, ModelArguments, RunArguments, random_augmentations

logger = logging.getLogger(__name__)

ONNX_FOLDER = "onnx"


def export_output(training_args: TrainingArguments, run_args: RunArguments, trust_remote_code: bool = False) -> None:
    """`--export onnx`: the saved model in the output folder exported to `onnx/` beside it (`export.export_classifier`,
    the folder layout of the Hub's ONNX repos), and a line in the output folder's model card; main process only."""
    if run_args.export is None or not training_args.should_save:
        return
    from ..export import ONNX_FILE_NAME, export_classifier, write_card_line

    output_dir = Path(training_args.output_dir)
    exported = export_classifier(output_dir, output_dir / ONNX_FOLDER, trust_remote_code=trust_remote_code)
    height, width = exported.specification.image_size
    write_card_line(
        output_dir,
        f"`{ONNX_FOLDER}/{ONNX_FILE_NAME}`: this model at {height}x{width} in ONNX (opset {exported.opset}, dynamic "
        f"batch; input `pixel_values`, output `logits`); ONNX Runtime's float32 logits match PyTorch's to "
        f"{exported.max_abs_difference:.1e}. Quantise it with `examples/export.py --quantize int8`.",
    )
    logger.info("Exported to %s (ONNX Runtime matches PyTorch to %.1e).", exported.onnx_path,
                exported.max_abs_difference)  # fmt: skip


def hyperparameters_for_card(data_args: DataArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The training settings a model card repeats: budget, optimisation, augmentation, precision."""
    augmentations = [flag.removeprefix("--") for flag in random_augmentations(data_args)]
    settings = {
        "epochs": training_args.num_train_epochs if training_args.max_steps <= 0 else None,
        "max_steps": training_args.max_steps if training_args.max_steps > 0 else None,
        "batch size (all devices, per update)": training_args.per_device_train_batch_size
        * training_args.world_size
        * training_args.gradient_accumulation_steps,
        "optimizer": str(training_args.optim.value if hasattr(training_args.optim, "value") else training_args.optim),
        "learning rate": training_args.learning_rate,
        "schedule": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warm-up (steps, or share of them when < 1)": training_args.warmup_steps,
        "weight decay": training_args.weight_decay,
        "label smoothing": training_args.label_smoothing_factor,
        "augmentations": augmentations
        + [f"{name}={value}" for name, value in (("auto_augment", data_args.auto_augment),) if value],
        "mixed precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        "seed": training_args.seed,
    }
    return {name: value for name, value in settings.items() if value is not None}


def write_model_card(
    trainer: Trainer,
    loaded: LoadedClassifier,
    *,
    recipe: str,
    argv: list[str] | None,
    model_args: ModelArguments,
    data_args: DataArguments,
    metrics: dict[str, float],
    extra_hyperparameters: dict[str, Any] | None = None,
    **card_fields: Any,
) -> None:
    """Renders the run's model card (`hub.build_model_card`) into the output folder's README.md, on the main
    process, and makes it the trainer's `model_card`; `card_fields` adds the teacher, distillation settings and
    comparison of a distillation run."""
    args = trainer.args
    if not args.should_save:
        return
    card = build_model_card(
        loaded.model,  # the model itself, not the trainer's (a distillation trains it with its adapters)
        repo_id=args.hub_model_id or args.output_dir,
        dataset_name=data_args.dataset_name,
        recipe=recipe,
        results=results_from_metrics(metrics),
        hyperparameters={**hyperparameters_for_card(data_args, args), **(extra_hyperparameters or {})},
        input_specification=loaded.input_specification,
        command=recipe_command(recipe, argv),
        base_model=None if loaded.from_scratch else model_args.model_name_or_path,
        **card_fields,
    )
    trainer.model_card = card  # the card the Trainer writes in place of its own (ImageClassificationTrainer)
    card.save(Path(args.output_dir) / "README.md")


def recipe_command(script: str, argv: list[str] | None) -> str:
    """The command line that ran a recipe, for its model card."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *(shlex.quote(argument) for argument in arguments)])


def check_hub_access(training_args: TrainingArguments) -> None:
    """With `--push_to_hub`, fail before training rather than after it: a malformed `--hub_model_id`, or no token
    the Hub accepts, each gives an error that says what to do."""
    if not training_args.push_to_hub:
        return
    if training_args.hub_model_id:
        try:
            validate_repo_id(training_args.hub_model_id)
        except HFValidationError as err:
            raise ValueError(
                f"--hub_model_id {training_args.hub_model_id!r} is not a valid repo id: {err} Use 'user_or_org/name'."
            ) from err
    try:
        HfApi().whoami(token=training_args.hub_token)
    except LocalTokenNotFoundError as err:
        raise ValueError(
            "--push_to_hub needs a Hub token: log in with `hf auth login`, set HF_TOKEN, or pass --hub_token."
        ) from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise ValueError(
                "--push_to_hub: the Hub rejected the token (401). Log in again with `hf auth login`, or set a valid "
                "HF_TOKEN / --hub_token (it needs write access)."
            ) from err
        raise


def push_output(trainer: Trainer) -> None:
    """Uploads the run's output folder (the model, its image processor, the card `write_model_card` rendered) to
    `--hub_model_id` the way `hub.push_classifier` uploads a model (`hub.upload_classifier_folder`: one commit, then
    the card pinned to it), from the main process, after any checkpoint upload still in flight. A failure says the
    trained model is safe on disk and how to push it again."""
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    try:
        if getattr(trainer, "push_in_progress", None) is not None:
            trainer.push_in_progress.wait_until_done()  # the Trainer's checkpoint pushes (hub_strategy)
        upload_classifier_folder(
            args.output_dir,
            trainer.hub_model_id,
            private=args.hub_private_repo,
            token=args.hub_token,
            revision=args.hub_revision,
            commit_message="End of training",
            ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"],  # no checkpoints, no recipe-private files
        )
    except Exception as err:
        raise RuntimeError(
            f"pushing {args.output_dir} to the Hub repo {trainer.hub_model_id} failed: {err}\nThe trained model is "
            f"saved in {args.output_dir}; push it again with: hf upload {trainer.hub_model_id} {args.output_dir} "
            "--exclude '_*' --exclude 'checkpoint-*'"
        ) from err
