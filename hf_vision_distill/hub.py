"""Model cards for what the recipes train, rendered from the templates in `hf_vision_distill/model_cards/`, and the
one way a trained classifier's folder goes to the Hub (`upload_classifier_folder`).

A card carries the Hub metadata (license, tags, datasets, base model, `model-index` results that the Hub renders as
an evaluation widget) and a readable page: what the model is, its results, the teacher and distillation settings
where there was one, how to load it with and without this package, the training command and hyperparameters, and
its limitations. `huggingface_hub.ModelCard` does the YAML and Jinja2 work.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

from .evaluation import markdown_table
from .models.input_specification import InputSpecification

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from huggingface_hub import CommitInfo

# Package data (pyproject.toml), as huggingface_hub ships its own card template: found from a checkout and from a
# wheel alike.
TEMPLATE_FOLDER = "model_cards"
IMAGE_CLASSIFIER_TEMPLATE = "image_classifier.md"

METRIC_NAMES = {"accuracy": "Accuracy", "f1_macro": "Macro-F1"}
SPLIT_NAMES = {"test": "test", "eval": "validation", "validation": "validation"}

DEFAULT_LIMITATIONS = (
    "Trained for the classes listed above only: every image gets one of them, including images of none. Accuracy "
    "was measured on the dataset's own test split; images from another distribution (camera, resolution, style) "
    "can score far lower. Check the model on your data before relying on it."
)


def template_path(name: str = IMAGE_CLASSIFIER_TEMPLATE) -> Traversable:
    """The packaged model-card template `name` (read it with `.read_text()`)."""
    template = resources.files(__package__) / TEMPLATE_FOLDER / name
    if not template.is_file():
        available = sorted(item.name for item in (resources.files(__package__) / TEMPLATE_FOLDER).iterdir())
        raise FileNotFoundError(
            f"model card template {name!r} not found in hf_vision_distill/{TEMPLATE_FOLDER}; it has {available}."
        )
    return template


def count_parameters(model: PreTrainedModel) -> int:
    """The model's parameters."""
    return sum(p.numel() for p in model.parameters())


def build_model_card(
    model: PreTrainedModel,
    *,
    repo_id: str,
    dataset_name: str,
    recipe: str,
    results: dict[str, dict[str, float]],
    hyperparameters: dict[str, Any],
    input_specification: InputSpecification,
    command: str | None = None,
    base_model: str | None = None,
    teacher_name: str | None = None,
    teacher_parameters: int | None = None,
    distillation_settings: dict[str, Any] | None = None,
    comparison: list[dict] | None = None,
    description: str | None = None,
    limitations: str = DEFAULT_LIMITATIONS,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
) -> ModelCard:
    """Renders the model card of an image classifier trained by one of the recipes.

    Args:
        model (`PreTrainedModel`): the trained model (its config gives the architecture and the labels).
        repo_id (`str`): where the model lives or will live: a Hub id (`"user/name"`) or a local path; used in the
            loading snippets.
        dataset_name (`str`): the training dataset's Hub id or path (a Hub id becomes a link and metadata).
        recipe (`str`): the recipe that trained it, e.g. `"examples/distill.py"`.
        results (`dict`): per split (`"test"`, `"eval"`), metric name (`"accuracy"`, `"f1_macro"`) to value; the test
            results become `model-index` metadata.
        hyperparameters (`dict`): the training settings worth repeating (epochs, batch size, learning rate, ...).
        input_specification (`InputSpecification`): the input the model expects (its image processor's).
        command (`str`, *optional*): the command line that trained it.
        base_model (`str`, *optional*): the checkpoint it was fine-tuned from (`None`: from scratch).
        teacher_name, teacher_parameters, distillation_settings: the teacher and the distillation settings.
        comparison (`list[dict]`, *optional*): rows of the run's side-by-side table (teacher, distilled, baseline),
            each with `model`, `parameters`, `test_accuracy`, `test_f1_macro` (or `eval_...`, from the validation
            split, when the dataset has no test split).
        description (`str`, *optional*): the card's opening paragraph; a default one is written from the rest.
        limitations, license, tags: as named.
    """
    config = model.config
    architecture = type(model).__name__
    parameters = count_parameters(model)
    labels = [config.id2label[index] for index in sorted(config.id2label)]
    on_hub = _looks_like_hub_id(dataset_name)
    dataset_id = dataset_name if on_hub else Path(dataset_name).name
    if description is None:
        how = f"distilled from `{teacher_name}`" if teacher_name else "trained"
        start = f"fine-tuned from `{base_model}`" if base_model else "from scratch"
        description = (
            f"An image classifier ({architecture}, {_millions(parameters)} parameters) {how} on "
            f"{_dataset_link(dataset_name)}, {start}, with hf_vision_distill."
        )

    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split=SPLIT_NAMES.get(split, split),
            metric_type="f1" if metric == "f1_macro" else metric,
            metric_name=METRIC_NAMES.get(metric, metric),
            metric_args={"average": "macro"} if metric == "f1_macro" else None,
            metric_value=round(float(value), 4),
        )
        for split, metrics in results.items()
        if split == "test"
        for metric, value in metrics.items()
        if metric in METRIC_NAMES
    ]
    card_tags = ["image-classification", "hf_vision_distill", "vision"]
    if teacher_name:
        card_tags.append("knowledge-distillation")
    model_name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=card_tags + [tag for tag in tags or [] if tag not in card_tags],
        datasets=[dataset_id] if on_hub else None,
        base_model=base_model if base_model and _looks_like_hub_id(base_model) else None,
        metrics=["accuracy", "f1"],
        eval_results=eval_results or None,
    )

    result_rows = [
        {"split": SPLIT_NAMES.get(split, split), **{METRIC_NAMES.get(k, k): v for k, v in metrics.items()}}
        for split, metrics in results.items()
    ]
    result_columns = [("split", "split")] + [(name, name) for name in METRIC_NAMES.values()]
    comparison_table = None
    prefix = "test" if any("test_accuracy" in row for row in comparison or []) else "eval"
    if comparison and any(f"{prefix}_accuracy" in row for row in comparison):  # never an empty table
        split = SPLIT_NAMES[prefix]
        comparison_table = markdown_table(
            comparison,
            [("model", "model"), ("parameters", "parameters"), (f"{prefix}_accuracy", f"{split} accuracy"),
             (f"{prefix}_f1_macro", f"{split} macro-F1")],
        )  # fmt: skip
        if prefix == "eval":
            comparison_table += "\nThe dataset has no test split: these are the validation split's figures.\n"
    return ModelCard.from_template(
        card_data,
        template_str=template_path().read_text(encoding="utf-8"),
        model_name=model_name,  # card_data keeps it inside model-index only
        description=description,
        architecture=architecture,
        model_type=config.model_type,
        parameters=f"{parameters:,}",
        input_size="{}x{}".format(*input_specification.image_size),
        image_mean=[round(value, 4) for value in input_specification.image_mean],
        image_std=[round(value, 4) for value in input_specification.image_std],
        interpolation=input_specification.interpolation,
        num_labels=len(labels),
        label_names=", ".join(labels) if len(labels) <= 20 else ", ".join(labels[:20]) + ", ...",
        dataset_link=_dataset_link(dataset_name),
        start=f"`{base_model}`" if base_model else "random initialisation (trained from scratch)",
        recipe=recipe,
        repo_id=repo_id,
        results_table=markdown_table(result_rows, result_columns),
        comparison_table=comparison_table,
        # a distillation run with --baseline: the distilled and the baseline student, trained on the same budget
        students_compared=sum("student" in str(row.get("model", "")) for row in comparison or []) > 1,
        teacher_name=teacher_name,
        teacher_parameters=f"{teacher_parameters:,}" if teacher_parameters else None,
        distillation_table=_settings_table(distillation_settings) if distillation_settings else None,
        command=command,
        hyperparameters_table=_settings_table(hyperparameters),
        limitations=limitations,
        license=license,
    )


def push_classifier(
    model: PreTrainedModel,
    repo_id: str,
    *,
    image_processor: BaseImageProcessor | None = None,
    card: ModelCard | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload image classifier",
) -> CommitInfo:
    """Pushes a classifier with everything a loader needs, in one commit: the weights, the config with its `auto_map`
    and modeling code (for `trust_remote_code`), the image processor (for `pipeline`) and the model card. The recipes'
    `--push_to_hub` uploads their output folder the same way (`upload_classifier_folder`). Returns the commit (a
    `str`, its URL; `.oid` is its hash)."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        if image_processor is not None:
            image_processor.save_pretrained(folder)
        if card is not None:
            card.save(Path(folder) / "README.md")
        return upload_classifier_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


def upload_classifier_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload image classifier",
    ignore_patterns: list[str] | None = None,
) -> CommitInfo:
    """Uploads a saved classifier's folder (model, modeling code, image processor, card in `README.md`) as one commit
    of the model repo `repo_id`, created when missing, then pins the card's `trust_remote_code` snippet to that commit
    (`pin_card_revision`) and writes the pinned card back into `folder`, so the folder's card says what the Hub's
    says. The one push path: `push_classifier` and the recipes' `--push_to_hub` (`recipes.push_output`) both end
    here. Returns the commit of the upload (the card's pin is a second one)."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        ignore_patterns=ignore_patterns,
    )
    readme = Path(folder) / "README.md"
    if readme.is_file():
        pinned = pin_card_revision(api, repo_id, readme.read_text(encoding="utf-8"), commit.oid, branch=revision)
        if pinned is not None:
            readme.write_text(pinned, encoding="utf-8")
    return commit


REMOTE_CODE_CALL = "trust_remote_code=True)"


def pin_revision(card_text: str, revision: str) -> str:
    """The card with its `trust_remote_code=True` loading snippet pinned to `revision` (a commit hash): remote code
    runs on the loader's machine, so the snippet loads the code of one reviewed commit, not whatever `main` holds
    later."""
    return card_text.replace(REMOTE_CODE_CALL, f'trust_remote_code=True, revision="{revision}")')


def pin_card_revision(
    api: HfApi, repo_id: str, card_text: str, revision: str, *, branch: str | None = None
) -> str | None:
    """Uploads the card pinned to `revision` (`pin_revision`), the commit that holds the model and its code, as a
    second commit on `branch` (default: `main`; a card cannot name the commit it is part of). Returns the pinned text,
    `None` when the card has no remote-code snippet."""
    if REMOTE_CODE_CALL not in card_text:
        return None
    pinned = pin_revision(card_text, revision)
    api.upload_file(path_or_fileobj=pinned.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                    revision=branch, commit_message=f"Model card: load the code of {revision[:10]}")  # fmt: skip
    return pinned


def results_from_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """`{"test_accuracy": .., "eval_f1_macro": ..}` (Trainer metric names) as `{"test": {"accuracy": ..}, ...}`."""
    results: dict[str, dict[str, float]] = {}
    for split in ("test", "eval"):
        for metric in METRIC_NAMES:
            if f"{split}_{metric}" in metrics:
                results.setdefault(split, {})[metric] = metrics[f"{split}_{metric}"]
    return results


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 100_000 else f"{count:,}"


def _settings_table(settings: dict[str, Any]) -> str:
    rows = [{"setting": name, "value": _plain(value)} for name, value in settings.items()]
    return markdown_table(rows, [("setting", "setting"), ("value", "value")])


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "(none)"
    return str(value)


def _looks_like_hub_id(name: str) -> bool:
    """`user/name` that is not a path on this machine."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _dataset_link(dataset_name: str) -> str:
    if _looks_like_hub_id(dataset_name):
        return f"[{dataset_name}](https://huggingface.co/datasets/{dataset_name})"
    return f"`{Path(dataset_name).name}` (a local dataset)"


__all__ = [
    "DEFAULT_LIMITATIONS",
    "build_model_card",
    "count_parameters",
    "push_classifier",
    "results_from_metrics",
    "template_path",
    "upload_classifier_folder",
]
