"""A recipe's output folder: what a rerun may change, resuming from the last complete checkpoint, and refusing
to overwrite another run's results."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..training import checkpoint_problem, last_complete_checkpoint
from .command_line import RunArguments

logger = logging.getLogger(__name__)

# What a run's output folder records of the arguments that made it, to compare a rerun's with.
RUN_ARGUMENTS_NAME = "run_arguments.json"
# Arguments that may change when a run is resumed: where and how it logs, reports, saves, loads data and runs,
# not what it trains. Names, or prefixes ending in "_".
FREE_TO_CHANGE = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_", "log_", "log_level", "report_to",
    "run_name", "project", "trackio_", "push_to_hub", "hub_", "dataloader_", "per_device_eval_batch_size",
    "max_eval_samples", "eval_accumulation_steps", "eval_use_gather_object", "eval_do_concat_batches", "eval_on_start",
    "eval_delay", "batch_eval_metrics", "disable_tqdm", "save_", "input_pipeline", "num_overlay_images",
    "check_images", "export",
    "use_cpu", "bf16", "bf16_", "fp16", "fp16_", "tf32", "torch_compile", "torch_compile_", "torch_empty_cache_steps",
    "ddp_", "local_rank", "include_", "skip_memory_metrics", "debug", "do_train", "do_eval", "do_predict",
    "trust_remote_code", "enable_jit_checkpoint", "restore_callback_states_from_checkpoint", "ignore_data_skip",
    "auto_find_batch_size", "gradient_checkpointing", "gradient_checkpointing_", "activation_checkpointing",
    "activation_checkpointing_", "use_cache", "use_liger_kernel", "liger_", "remove_unused_columns", "accelerator_",
    "fsdp", "fsdp_", "deepspeed", "parallelism_config", "average_tokens_across_devices",
)  # fmt: skip
# The budget: a finished run may be extended (it continues from its last checkpoint), not shortened.
BUDGET_ARGUMENTS = ("num_train_epochs", "max_steps")


@dataclass
class OutputFolder:
    """What `prepare_output_dir` found: the checkpoint to resume from (`None`: train from the start) and whether the
    folder holds this very run, finished (`results` then has its saved metrics, and nothing is to be done).

    `record_arguments()`, called as training starts, writes the run's arguments for the next rerun to compare with:
    not earlier, so a run refused for a bad argument leaves nothing behind.
    """

    checkpoint: str | None
    finished: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict, repr=False)
    record_path: Path | None = None
    should_save: bool = True

    def record_arguments(self) -> None:
        if not self.should_save or self.record_path is None:
            return
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.record_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.record, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.record_path)  # whole or not at all


def arguments_record(groups: tuple) -> dict[str, Any]:
    """A run's parsed arguments as one JSON-ready mapping (TrainingArguments' own `to_dict`, with tokens hidden)."""
    record = {}
    for group in groups:
        values = group.to_dict() if isinstance(group, TrainingArguments) else dataclasses.asdict(group)
        record.update(values)
    return json.loads(json.dumps(record, default=str))


def named_in(name: str, names: tuple[str, ...]) -> bool:
    """Whether the argument `name` is one of `names`: names, or prefixes ending in "_" (as FREE_TO_CHANGE)."""
    return any(name.startswith(each) if each.endswith("_") else name == each for each in names)


def prepare_output_dir(
    groups: tuple, training_args: TrainingArguments, run_args: RunArguments, results_name: str = "all_results.json"
) -> OutputFolder:
    """Decides, before any expensive work, what a recipe does with its output folder.

    - `--overwrite_output_dir`: starts afresh; earlier `checkpoint-N` folders are removed (a later rerun would
      otherwise resume from one of them).
    - `--resume_from_checkpoint DIR`: that checkpoint, refused with the reason if any of its files is incomplete.
    - Otherwise the last complete checkpoint (`training.last_complete_checkpoint`, which passes over incomplete ones
      naming why). The arguments of the run that made the folder (`run_arguments.json`) are compared with these:
      any change to what is trained (model, data, optimisation, augmentation, seed, ...) is refused, naming the
      arguments and `--overwrite_output_dir`; a longer budget (`--num_train_epochs`, `--max_steps`) continues the run,
      said loudly; a shorter one is refused. A rerun of a finished run (its last checkpoint at its last step, and
      `results_name` written) is `finished`: the recipe trains, evaluates and writes nothing.

    `groups` are the recipe's parsed argument dataclasses, recorded by `OutputFolder.record_arguments`.
    """
    output_dir = Path(training_args.output_dir)
    record_path = output_dir / RUN_ARGUMENTS_NAME
    record = arguments_record(groups)

    def folder(**found) -> OutputFolder:
        return OutputFolder(**found, record=record, record_path=record_path, should_save=training_args.should_save)

    if run_args.overwrite_output_dir:
        # Also in side runs' folders ("_baseline"): they resume by themselves.
        stale = sorted(
            [*output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), *output_dir.glob(f"_*/{PREFIX_CHECKPOINT_DIR}-*")]
        )
        if stale and training_args.should_save:
            logger.info("--overwrite_output_dir: removing %d earlier checkpoint(s) in %s.", len(stale), output_dir)
            for stale_folder in stale:
                shutil.rmtree(stale_folder, ignore_errors=True)
        return folder(checkpoint=None)
    if training_args.resume_from_checkpoint is not None:
        problem = checkpoint_problem(training_args.resume_from_checkpoint)
        if problem:
            raise ValueError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: {problem}. Pass an earlier "
                "checkpoint, or leave the flag out to resume from the last complete one in --output_dir."
            )
        return folder(checkpoint=training_args.resume_from_checkpoint)
    checkpoint = last_complete_checkpoint(str(output_dir))
    if checkpoint is None:
        return folder(checkpoint=None)
    if not record_path.is_file():
        logger.warning("Resuming from %s, which has no record of the arguments that made it (%s); pass "
                       "--overwrite_output_dir to start afresh.", checkpoint, RUN_ARGUMENTS_NAME)  # fmt: skip
        return folder(checkpoint=checkpoint)
    previous = json.loads(record_path.read_text(encoding="utf-8"))
    changed = {name: (previous.get(name), value) for name, value in record.items()
               if previous.get(name) != value and not named_in(name, FREE_TO_CHANGE)}  # fmt: skip
    budget = {name: change for name, change in changed.items() if name in BUDGET_ARGUMENTS}
    others = {name: change for name, change in changed.items() if name not in BUDGET_ARGUMENTS}
    if others:
        described = "; ".join(f"--{name} {new!r} (the run there: {old!r})" for name, (old, new) in others.items())
        raise ValueError(
            f"{output_dir} holds a run made with other arguments: {described}. Pass --overwrite_output_dir to train "
            "afresh there, or another --output_dir."
        )
    shorter = {name: (old, new) for name, (old, new) in budget.items()
               if isinstance(old, (int, float)) and isinstance(new, (int, float)) and 0 < new < old}  # fmt: skip
    if shorter:
        described = "; ".join(f"--{name} {new} (the run there: {old})" for name, (old, new) in shorter.items())
        raise ValueError(
            f"{output_dir} holds a run with a longer budget: {described}. Pass --overwrite_output_dir to train the "
            "shorter run afresh, or another --output_dir."
        )
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    step, last_step = state.get("global_step", 0), state.get("max_steps", 0)
    if budget:
        described = ", ".join(f"--{name} {old} -> {new}" for name, (old, new) in budget.items())
        logger.warning("Continuing the run in %s from %s (epoch %.2f, step %d) with a longer budget: %s.",
                       output_dir, checkpoint, state.get("epoch") or 0.0, step, described)  # fmt: skip
        return folder(checkpoint=checkpoint)
    results_path = output_dir / results_name
    if last_step and step >= last_step and results_path.is_file():
        logger.warning(
            "%s holds this run, finished (step %d of %d); nothing to train. Its results are in %s. Pass "
            "--overwrite_output_dir to train it again, or a larger --num_train_epochs to continue it.",
            output_dir, step, last_step, results_path,
        )  # fmt: skip
        return folder(checkpoint=checkpoint, finished=True,
                      results=json.loads(results_path.read_text(encoding="utf-8")))  # fmt: skip
    logger.info("Resuming from %s at epoch %.2f (step %d of %d); pass --overwrite_output_dir to start afresh.",
                checkpoint, state.get("epoch") or 0.0, step, last_step)  # fmt: skip
    return folder(checkpoint=checkpoint)


def checkpoint_to_resume(training_args: TrainingArguments, run_args: RunArguments) -> str | None:
    """`--resume_from_checkpoint` if given, else the last complete checkpoint in the output folder (unless
    `--overwrite_output_dir`): for a side run inside a recipe's folder (distill.py's baseline), which the recipe's
    `prepare_output_dir` has checked."""
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if run_args.overwrite_output_dir:
        return None
    checkpoint = last_complete_checkpoint(training_args.output_dir)
    if checkpoint:
        logger.info("Resuming from %s; pass --overwrite_output_dir to start afresh.", checkpoint)
    return checkpoint
