"""A recipe as one pipeline: start (parse, set up, check, the output folder) -> prepare (data, model, datasets,
collators, the final training arguments) -> train -> finish (evaluate each split, metrics, card, export, push).

    recipe = Recipe.start("examples/train.py", (ModelArguments, DataArguments, RunArguments, TrainingArguments),
                          DEFAULTS, argv)
    if recipe.output.finished:
        return recipe.output.results
    model_args, data_args, run_args, _ = recipe.arguments
    loaded, inputs = recipe.prepare(model_args, data_args)
    trainer = ImageClassificationTrainer(model=loaded.model, **recipe.trainer_arguments(loaded))
    metrics = recipe.train(trainer)
    metrics |= recipe.evaluate(trainer)
    recipe.finish(trainer, loaded, metrics)

Every change the library makes to the parsed `TrainingArguments` happens in `final_training_arguments`, and is
logged there with its reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from transformers import Trainer, TrainingArguments, set_seed

from ..data import ImageClassificationData
from ..evaluation import build_compute_metrics, logging_steps_for_curves
from ..models.loading import LoadedClassifier
from .command_line import DataArguments, ModelArguments, RunArguments, parse_arguments, setup_run, user_gave
from .inputs import RecipeInputs, build_inputs, initialize_from_data, load_data, load_model, optimizer_steps
from .output_folder import OutputFolder, prepare_output_dir
from .publishing import check_hub_access, export_output, push_output, write_model_card

logger = logging.getLogger(__name__)

Arguments = TypeVar("Arguments")

# Evaluation splits and the metric prefixes the Trainer logs them under.
SPLIT_PREFIXES = {"validation": "eval", "test": "test"}


def final_training_arguments(
    training_args: TrainingArguments,
    *,
    data: ImageClassificationData,
    inputs: RecipeInputs,
    argv: list[str] | None,
    changes: dict[str, tuple[Any, str]] | None = None,
    curve_points: int = 20,
) -> TrainingArguments:
    """The training arguments a run trains with: the parsed ones and every change the library makes to them, here and
    nowhere else, each logged with its reason.

    - No validation split: nothing to evaluate during training or keep the best checkpoint by.
    - The input pipeline's dataloader settings (`RecipeInputs.dataloader_settings`: the tensor pipeline runs no
      workers, ...).
    - Label smoothing in the training collator for mixed batches (`inputs.collator_label_smoothing`), so the
      Trainer's is 0.
    - The recipe's own `changes`, `{name: (value, reason)}` (e.g. a distillation's attention weight for a teacher
      without attention maps).
    - `--logging_steps` lowered so the loss curves get about `curve_points` points, unless the user set it.
    """
    planned: dict[str, tuple[Any, str]] = {}
    evaluates = training_args.eval_strategy != "no" or training_args.load_best_model_at_end
    if "validation" not in data.dataset and evaluates:
        reason = "no validation split (validation_size=0?): evaluating at the end only, keeping the last model"
        planned["eval_strategy"] = ("no", reason)
        planned["load_best_model_at_end"] = (False, reason)
    for name, value in inputs.dataloader_settings.items():
        planned[name] = (value, f"the {inputs.pipeline} input pipeline")
    if inputs.label_smoothing and training_args.label_smoothing_factor:
        planned["label_smoothing_factor"] = (0.0, "mixed batches: the training collator smooths the labels")
    planned.update(changes or {})
    updated = dataclasses.replace(training_args, **{name: value for name, (value, _) in planned.items()})
    if not user_gave(argv, "logging_steps"):
        steps = optimizer_steps(len(inputs.train_dataset), updated)
        logging_steps = logging_steps_for_curves(steps, curve_points, at_most=int(updated.logging_steps))
        if logging_steps != updated.logging_steps:
            planned["logging_steps"] = (logging_steps, f"{steps} optimizer steps: about {curve_points} logged points")
            updated = dataclasses.replace(updated, logging_steps=logging_steps)
    shown = {name: (value, reason) for name, (value, reason) in planned.items()
             if getattr(training_args, name) != value and name != "accelerator_config"}  # fmt: skip
    if shown:
        logger.info("Training arguments set for this run: %s.",
                    "; ".join(f"{name}={value!r} ({reason})" for name, (value, reason) in shown.items()))  # fmt: skip
    return updated


@dataclass
class Recipe:
    """One run of a recipe (see the module's docstring).

    Attributes:
        script (`str`): the recipe, e.g. `"examples/train.py"` (for the model card).
        argv (`list[str]` or `None`): its command line (`None`: `sys.argv[1:]`).
        arguments (`tuple`): the parsed argument dataclasses, in the order the recipe gave their types.
        output (`OutputFolder`): what the output folder holds (a checkpoint to resume, a finished run).
        training_args (`TrainingArguments`): as parsed until `prepare_inputs`, the final ones after.
        data, inputs: set by `load_data` and `prepare_inputs`.
    """

    script: str
    argv: list[str] | None
    arguments: tuple
    output: OutputFolder
    training_args: TrainingArguments
    data: ImageClassificationData | None = None
    data_args: DataArguments | None = None
    inputs: RecipeInputs | None = None

    @classmethod
    def start(
        cls,
        script: str,
        argument_types: tuple[type, ...],
        defaults: dict[str, Any],
        argv: list[str] | None,
        results_name: str = "all_results.json",
        check: Callable[[tuple], None] | None = None,
    ) -> Recipe:
        """Parses the arguments over the recipe's `defaults`, sets up logging, checks Hub access and decides what to
        do with the output folder (`prepare_output_dir`; `results_name` marks a finished run), before any work.
        `check`: the recipe's own check of its parsed arguments (a tuple in `argument_types`' order), run first."""
        arguments = parse_arguments(argument_types, defaults, argv)
        if check is not None:
            check(arguments)
        training_args = _the(TrainingArguments, arguments)
        setup_run(training_args)
        check_hub_access(training_args)
        recorded = tuple(group for group in arguments if not isinstance(group, RunArguments))
        output = prepare_output_dir(recorded, training_args, _the(RunArguments, arguments), results_name)
        return cls(script, argv, arguments, output, training_args)

    def arguments_of(self, kind: type[Arguments]) -> Arguments:
        """The parsed arguments of dataclass `kind` (the final training arguments for `TrainingArguments`)."""
        if issubclass(kind, TrainingArguments):
            return self.training_args
        return _the(kind, self.arguments)

    def load_data(self, data_args: DataArguments) -> ImageClassificationData:
        """Seeds the run, then loads and checks the dataset (`inputs.load_data`)."""
        set_seed(self.training_args.seed)
        self.data, self.data_args = load_data(data_args, self.training_args), data_args
        return self.data

    def load_model(self, model_args: ModelArguments, seed: bool = False) -> LoadedClassifier:
        """The model for the dataset's labels (`inputs.load_model`), logged; `seed`: from the run's seed, so another
        call starts from the same weights (a baseline beside a distilled student)."""
        if seed:
            set_seed(self.training_args.seed)
        loaded = load_model(model_args, self.data.id2label, token=self.training_args.hub_token)
        parameters = sum(parameter.numel() for parameter in loaded.model.parameters())
        logger.info("Model %s: %s, %.2fM parameters, input %s.", model_args.model_name_or_path,
                    type(loaded.model).__name__, parameters / 1e6, loaded.input_specification)  # fmt: skip
        return loaded

    def prepare_inputs(
        self,
        loaded: LoadedClassifier,
        extra_columns: dict[str, dict] | None = None,
        changes: dict[str, tuple[Any, str]] | None = None,
    ) -> RecipeInputs:
        """The datasets and collators for the model's input (`build_inputs`), the final training arguments
        (`final_training_arguments`, with the recipe's `changes`), and the data-dependent initialisation of a model
        built from scratch that asks for it."""
        self.inputs = build_inputs(
            self.data, self.data_args, self.training_args, loaded.input_specification, extra_columns=extra_columns
        )
        self.training_args = final_training_arguments(
            self.training_args, data=self.data, inputs=self.inputs, argv=self.argv, changes=changes
        )
        initialize_from_data(loaded, self.inputs, self.training_args.device)
        return self.inputs

    def prepare(self, model_args: ModelArguments, data_args: DataArguments) -> tuple[LoadedClassifier, RecipeInputs]:
        """`load_data`, `load_model` and `prepare_inputs` in one: what a recipe with one model and no teacher needs."""
        self.load_data(data_args)
        loaded = self.load_model(model_args)
        return loaded, self.prepare_inputs(loaded)

    def trainer_arguments(self, loaded: LoadedClassifier) -> dict[str, Any]:
        """The keyword arguments every recipe's Trainer takes: the final arguments, the datasets and collators, the
        metrics and the model's image processor (saved with it)."""
        return {
            "args": self.training_args,
            "train_dataset": self.inputs.train_dataset,
            "eval_dataset": self.inputs.eval_datasets.get("validation"),
            "data_collator": self.inputs.train_collator,
            "eval_data_collator": self.inputs.eval_collator,
            "compute_metrics": build_compute_metrics(),
            "processing_class": loaded.image_processor,
        }

    def train(self, trainer: Trainer) -> dict[str, float]:
        """Records the arguments (what a rerun is compared with), trains (resuming what the output folder holds) and
        saves the kept model and the trainer's state; returns the training metrics. The model is not pushed here:
        `finish` pushes it once, with its card."""
        self.output.record_arguments()
        result = trainer.train(resume_from_checkpoint=self.output.checkpoint)
        trainer.save_model(_internal_call=True)
        trainer.save_state()
        return result.metrics

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """The trainer's model on every evaluation split, under the Trainer's prefixes (`eval_`, `test_`)."""
        metrics = {}
        for split, dataset in self.inputs.eval_datasets.items():
            metrics.update(trainer.evaluate(dataset, metric_key_prefix=SPLIT_PREFIXES[split]))
        return metrics

    def finish(
        self, trainer: Trainer, loaded: LoadedClassifier, metrics: dict[str, float], card: bool = True,
        **card_fields: Any,
    ) -> None:  # fmt: skip
        """Logs and saves `metrics` (`all_results.json`, which marks the run finished), then `publish`es the model
        (`card=False`, a run that is not a model's training such as a sanity check: no card, export or push)."""
        trainer.log_metrics("all", metrics)
        trainer.save_metrics("all", metrics)
        if card:
            self.publish(trainer, loaded, metrics, **card_fields)

    def publish(
        self,
        trainer: Trainer,
        loaded: LoadedClassifier,
        metrics: dict[str, float],
        model_args: ModelArguments | None = None,
        **card_fields: Any,
    ) -> None:
        """Writes the model card (`write_model_card`, with `card_fields`: extra hyperparameters, a teacher, a
        comparison), exports (`--export`) and pushes (`--push_to_hub`) the output folder. `model_args`: the arguments
        the model came from, when not the recipe's own (a converted teacher)."""
        model_args = model_args or self.arguments_of(ModelArguments)
        write_model_card(trainer, loaded, recipe=self.script, argv=self.argv, model_args=model_args,
                         data_args=self.data_args, metrics=metrics, **card_fields)  # fmt: skip
        export_output(self.training_args, self.arguments_of(RunArguments), model_args.trust_remote_code)
        if self.training_args.push_to_hub:
            push_output(trainer)


def _the(kind: type[Arguments], groups: tuple) -> Arguments:
    found = [group for group in groups if isinstance(group, kind)]
    if len(found) != 1:
        raise TypeError(f"the recipe's arguments hold {len(found)} {kind.__name__} groups; expected one.")
    return found[0]
