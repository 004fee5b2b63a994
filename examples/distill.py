"""Distill a teacher into a student with the DistillationTrainer, and compare them with a same-budget baseline.

    # the main job: the shipped CNN teacher into compact-cnn on the shipped CIFAR-10 sample, with a baseline
    python examples/distill.py --baseline
    # the ViT -> CNN recipe: soft labels at T 4 and the shipped ViT teacher's entropy-weighted attention
    python examples/distill.py --teacher_model_name_or_path pretrained/vit-cifar-teacher --temperature 4 \
        --feature_loss_weight 0 --baseline
    # your own teacher: any classifier of the dataset's labels, e.g. trained with the training recipe
    accelerate launch examples/train.py --model_name_or_path vit-cifar --dataset_name uoft-cs/cifar10 \
        --output_dir outputs/teacher
    accelerate launch examples/distill.py --teacher_model_name_or_path outputs/teacher \
        --dataset_name uoft-cs/cifar10 --baseline
    python examples/distill.py my_run.yaml                      # every argument from a YAML/JSON file
    # logits-only distillation from an offline teacher (computed once, no teacher forward per step):
    python examples/distill.py --teacher_model_name_or_path outputs/teacher --offline_teacher \
        --crop none --horizontal_flip false
    # ... with augmentation: the teacher's top-10 logits on 10 cached crops and flips of every image (FKD)
    python examples/distill.py --teacher_model_name_or_path outputs/teacher --offline_teacher \
        --offline_teacher_views 10 --offline_teacher_top_k 10 --input_pipeline tensors

Teacher and student may take different inputs (sizes, normalisation): the trainer gives the teacher its own view of
each augmented batch. The run writes the student (its image processor and model card, README.md) to --output_dir,
plus `summary.md` / `summary.json` (teacher, distilled student and baseline: parameters, test accuracy and macro-F1),
`loss_components.png`, `validation_accuracy.png`, with a ViT teacher's attention `layer_weights.png` (the teacher
layers' entropy weights over epochs) and `attention_overlays.png` (teacher vs student attention on test images), and
TensorBoard logs; the
baseline goes to `_baseline/`. `--push_to_hub --hub_model_id user/name` uploads the student with its card, summary
and plots (folders starting with "_" stay local).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import TrainingArguments

from hf_vision_distill.distillation import (
    DistillationConfig,
    DistillationTrainer,
    Teacher,
    TeacherViewDataset,
    TeacherViewEpochCallback,
    cache_teacher_logits,
    cache_teacher_views,
    teacher_outputs_by_row,
)
from hf_vision_distill.evaluation import (
    markdown_table,
    paired_accuracy_gain,
    plot_attention_overlays,
    plot_log_history,
)
from hf_vision_distill.recipes import (
    SHIPPED_SAMPLE,
    SHIPPED_TEACHER,
    SPLIT_PREFIXES,
    TRAINING_DEFAULTS,
    DataArguments,
    ModelArguments,
    Recipe,
    RunArguments,
    asks_for,
    checkpoint_to_resume,
    choose_input_pipeline,
    initialize_from_data,
    random_augmentations,
    reported_split,
    run_recipe,
    user_gave,
)
from hf_vision_distill.training import ImageClassificationTrainer, on_device

logger = logging.getLogger(__name__)


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "model_name_or_path": "compact-cnn",
    "teacher_model_name_or_path": SHIPPED_TEACHER,  # airbench's CNN, trained on the full CIFAR-10 training split
    "dataset_name": SHIPPED_SAMPLE,
    "output_dir": "outputs/distill",
    # The labels, the teacher's soft labels and its last feature map (through a learned adapter, FitNets-style), set
    # for the shipped teacher: trained with label smoothing, its logits are compressed and its soft labels at T 4
    # nearly uniform, hence T 1. On the shipped sample this gained +2.16 ± 0.90 points over the baseline, ahead in
    # each of 5 seeds, where the ViT teacher (T 4, attention 0.1) gained +0.30 ± 0.52 and the CNN teacher at T 1
    # without the feature term +0.10 ± 0.72, 3 seeds each (benchmarks/RESULTS.md). A teacher trained on hard labels
    # may want T 4.
    "soft_loss_weight": 0.5,
    "label_loss_weight": 0.5,
    "temperature": 1.0,
    "feature_loss_weight": 1.0,
    # A ViT teacher's attention, entropy-weighted over its layers; off (and said) for a teacher without attention
    # maps, as the shipped CNN. With the ViT teacher, 0.7 (soft labels 0.3) cost 3.4 points (one seed).
    "attention_loss_weight": 0.1,
}


@dataclass
class TeacherArguments:
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model code shipped with the teacher's checkpoint (--trust_remote_code is the "
                  "student's)."},
    )  # fmt: skip
    teacher_revision: str | None = field(
        default=None,
        metadata={
            "help": "Branch, tag or commit of a Hub teacher (the first one; --extra_teacher_revisions pins the "
            "others): pin the commit whose code you trust."
        },
    )
    extra_teacher_revisions: list[str] = field(
        default_factory=list,
        metadata={"help": "Branch, tag or commit of each of --extra_teachers, in their order (default: their default "
                  "branches)."},
    )  # fmt: skip
    offline_teacher_views: int = field(
        default=0,
        metadata={"help": "With --offline_teacher: cache the teacher's logits on this many augmented views of every "
                  "training image (crop box and flip, as FKD) and replay one of them per epoch, so offline "
                  "distillation trains with --crop and --horizontal_flip; 0 caches one unaugmented view. Needs "
                  "--input_pipeline tensors, and no mixup or cutmix."},
    )  # fmt: skip
    offline_teacher_top_k: int = field(
        default=10,
        metadata={"help": "With --offline_teacher_views: the teacher logits kept per view (at most the number of "
                  "labels); the other classes share the rest of the teacher's probability evenly."},
    )  # fmt: skip


@dataclass
class ComparisonArguments:
    baseline: bool = field(
        default=False,
        metadata={"help": "Also train the same student from the same start on labels alone, with the same budget."},
    )
    num_overlay_images: int = field(default=6, metadata={"help": "Test images in attention_overlays.png."})


def plain_training_arguments(args: DistillationConfig, **changes) -> TrainingArguments:
    """The TrainingArguments part of a DistillationConfig, for the baseline and the teacher's evaluation."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return TrainingArguments(**{**values, **changes})


def with_last_epoch(trainer, eval_datasets: dict, metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` (the kept model's) plus the reported split's accuracy at the last epoch: the kept model's own when
    it is the last epoch's, else the last checkpoint's (`evaluate_last_epoch`)."""
    split = reported_split(eval_datasets)
    if split is None:
        return metrics
    name, prefix = split
    last = trainer.evaluate_last_epoch(eval_datasets[name], prefix) or {}
    key = f"{prefix}_accuracy"
    return {**metrics, f"last_epoch_{key}": last.get(f"last_epoch_{key}", metrics.get(key))}


ARGUMENTS = (ModelArguments, DataArguments, RunArguments, TeacherArguments, ComparisonArguments, DistillationConfig)


def main(argv: list[str] | None = None) -> dict:
    # The job (distillation, then the baseline) is finished when its summary is written.
    defaults, turned_off = recipe_defaults(argv)
    recipe = Recipe.start("examples/distill.py", ARGUMENTS, defaults, argv, results_name="summary.json")
    if turned_off:
        weights = " and ".join(f"--{name} {DEFAULTS[name]}" for name in turned_off)
        logger.info("--offline_teacher: the recipe's %s %s off (a cached teacher gives logits only).",
                    weights, "are" if len(turned_off) > 1 else "is")  # fmt: skip
    if recipe.output.finished:
        return recipe.output.results
    model_args, data_args, run_args, teacher_args, comparison_args, args = recipe.arguments
    if not args.teacher_model_name_or_path:
        raise ValueError(
            "no teacher: pass --teacher_model_name_or_path (a trained classifier of the dataset's labels, e.g. one "
            "trained with examples/train.py)."
        )
    revisions = teacher_args.extra_teacher_revisions
    if revisions and len(revisions) != len(args.extra_teachers):
        raise ValueError(
            f"--extra_teacher_revisions has {len(revisions)} revisions for {len(args.extra_teachers)} extra teachers "
            f"({args.extra_teachers}): pass one per extra teacher, in their order."
        )
    data = recipe.load_data(data_args)
    check_offline_teacher_views(teacher_args, data_args, data, args, argv)
    output_dir = Path(args.output_dir)

    # The baseline starts from the same weights as the distilled student.
    student = recipe.load_model(model_args, seed=True)
    # Checks, before the teacher runs on anything, that it predicts the student's classes (a teacher of other labels
    # ends in an index error deep in the loss), and takes the student's batches to its own input.
    teacher = Teacher.from_pretrained(
        args.teacher_model_name_or_path, student=student, dtype=args.teacher_dtype,
        trust_remote_code=teacher_args.teacher_trust_remote_code, revision=teacher_args.teacher_revision,
        token=args.hub_token,
    )  # fmt: skip
    # More teachers (--extra_teachers): soft labels only, each through its own input transform, labels checked.
    extra_teachers = [
        Teacher.from_pretrained(name, student=student, dtype=args.teacher_dtype,
                                trust_remote_code=teacher_args.teacher_trust_remote_code, revision=revision,
                                token=args.hub_token)
        for name, revision in zip(args.extra_teachers, revisions or [None] * len(args.extra_teachers))
    ]  # fmt: skip
    changes = fit_attention_to_teacher(args, teacher, argv)
    teacher_cache = None
    views = teacher_args.offline_teacher_views
    if args.offline_teacher:
        teacher.place(args.device, run_autocast(args))  # cached under --bf16/--fp16 as the live teacher would run
        teacher_cache = cache_teacher(teacher, data, data_args, student, args, output_dir, training_split=not views)
    inputs = recipe.prepare_inputs(student, extra_columns=teacher_cache, changes=changes)
    args = recipe.training_args
    trainer_arguments = recipe.trainer_arguments(student)
    callbacks = []
    if views:
        train_dataset, train_collator = replay_teacher_views(teacher, inputs, teacher_args, args)
        trainer_arguments.update(train_dataset=train_dataset, data_collator=train_collator)
        callbacks.append(TeacherViewEpochCallback(train_dataset))

    # ---- distillation ----
    trainer = DistillationTrainer(
        model=student.model, teacher=None if args.offline_teacher else [teacher, *extra_teachers], callbacks=callbacks,
        **trainer_arguments,
    )  # fmt: skip
    # The teacher is evaluated as the distillation runs it: placed as the trainer places it (float32 or
    # --teacher_dtype, on its device), run under the same autocast, on its view of the student's test batches (its
    # own size and normalisation), not prepared and cast by an evaluation Trainer of its own.
    eval_datasets = inputs.eval_datasets
    rows = []
    for name, each in zip([args.teacher_model_name_or_path, *args.extra_teachers], [teacher, *extra_teachers]):
        each.place(args.device, trainer.accelerator.autocast)  # --offline_teacher: the trainer runs no teacher
        teacher_metrics = {}
        for split, dataset in eval_datasets.items():
            teacher_metrics.update(trainer.evaluate_forward(each, dataset, SPLIT_PREFIXES[split]))
        rows.append({"model": f"teacher ({name})", **teacher_metrics, "parameters": each.num_parameters})
    distilled_row = len(rows)
    train_metrics = recipe.train(trainer)  # the student alone is saved; pushed once, at the end
    student_parameters = sum(p.numel() for p in student.model.parameters())
    rows.append({"model": f"distilled student ({model_args.model_name_or_path})",
                 **with_last_epoch(trainer, eval_datasets, recipe.evaluate(trainer)),
                 "parameters": student_parameters, "train_runtime": train_metrics["train_runtime"]})  # fmt: skip
    if args.should_save:  # the main process draws; the others would write the same files at once
        write_plots(trainer, inputs, data, student, args, comparison_args, output_dir)

    # ---- the baseline: same student, same start, same budget, labels only ----
    baseline = None
    if comparison_args.baseline:
        baseline, row = train_baseline(recipe, model_args, run_args, output_dir)
        rows.append({**row, "parameters": student_parameters})

    gain = None
    split = reported_split(eval_datasets)
    if baseline is not None and split is not None:
        dataset = eval_datasets[split[0]]
        gain = paired_accuracy_gain(correct_predictions(trainer, dataset), correct_predictions(baseline, dataset))
    validation_from_training = data.source_splits.get("validation") == data.source_splits["train"]
    summary = write_summary(rows, args, output_dir, split, gain, validation_from_training)
    # the student, its image processor, the card, summary and plots
    teacher_names = ", ".join([args.teacher_model_name_or_path, *args.extra_teachers])
    recipe.publish(trainer, student, rows[distilled_row], teacher_name=teacher_names,
                   teacher_parameters=sum(row["parameters"] for row in rows[:distilled_row]),
                   distillation_settings=distillation_settings(args), comparison=rows)  # fmt: skip
    return summary


def train_baseline(recipe: Recipe, model_args, run_args, output_dir: Path):
    """The same student from the same start, trained on labels alone with the same budget and batches, in
    `_baseline/` (side outputs live in folders starting with "_", which the Trainer's Hub uploads skip). Returns its
    trainer and its row of the summary."""
    baseline_student = recipe.load_model(model_args, seed=True)
    initialize_from_data(baseline_student, recipe.inputs, recipe.training_args.device)
    # Its own folder and no --resume_from_checkpoint: that checkpoint is the distilled student's.
    baseline_args = plain_training_arguments(
        recipe.training_args, output_dir=str(output_dir / "_baseline"), resume_from_checkpoint=None,
        push_to_hub=False,
    )  # fmt: skip
    # Fresh augmentation, as any run without a cache: cached views would only narrow what it sees.
    baseline = ImageClassificationTrainer(
        model=baseline_student.model, **{**recipe.trainer_arguments(baseline_student), "args": baseline_args}
    )
    result = baseline.train(resume_from_checkpoint=checkpoint_to_resume(baseline_args, run_args))
    baseline.save_model()
    row = {"model": f"baseline student ({model_args.model_name_or_path}, labels only)",
           **with_last_epoch(baseline, recipe.inputs.eval_datasets, recipe.evaluate(baseline)),
           "train_runtime": result.metrics["train_runtime"]}  # fmt: skip
    return baseline, row


def write_plots(trainer, inputs, data, student, args, comparison_args, output_dir: Path) -> None:
    """The run's plots: loss components, validation accuracy, the teacher layers' entropy weights over epochs and,
    with attention distillation, teacher vs student attention on test images."""
    history = trainer.state.log_history
    loss_keys = sorted({key for entry in history for key in entry if key.startswith("loss")})
    plot_log_history(history, loss_keys, str(output_dir / "loss_components.png"), "training loss components")
    accuracy_keys = [key for key in ("eval_accuracy", "eval_f1_macro") if any(key in entry for entry in history)]
    plot_log_history(history, accuracy_keys, str(output_dir / "validation_accuracy.png"),
                     "validation accuracy", x_key="epoch")  # fmt: skip
    weight_keys = sorted({key for entry in history for key in entry if key.startswith("attention_layer_weight_")})
    plot_log_history(history, weight_keys, str(output_dir / "layer_weights.png"),
                     "teacher layer weights (entropy)", x_key="epoch")  # fmt: skip
    overlay_split = reported_split(inputs.eval_datasets)
    if args.can_be_nonzero("attention_loss_weight") and overlay_split and comparison_args.num_overlay_images:
        write_attention_overlays(trainer, inputs.eval_datasets[overlay_split[0]], inputs.eval_collator, data, student,
                                 comparison_args.num_overlay_images,
                                 str(output_dir / "attention_overlays.png"))  # fmt: skip


def recipe_defaults(argv: list[str] | None) -> tuple[dict, list[str]]:
    """DEFAULTS for this command line, and the recipe's loss weights it turns off: a cached teacher
    (--offline_teacher) gives logits only, so the recipe's own weights for the teacher's activations are 0 for it. A
    weight the user gives is kept, and refused by DistillationConfig with the fix."""
    if not asks_for(argv, "offline_teacher"):
        return DEFAULTS, []
    turned_off = [name for name in ("attention_loss_weight", "feature_loss_weight")
                  if DEFAULTS.get(name) and not user_gave(argv, name)]  # fmt: skip
    return {**DEFAULTS, **dict.fromkeys(turned_off, 0.0)}, turned_off


def fit_attention_to_teacher(args: DistillationConfig, teacher, argv: list[str] | None) -> dict:
    """Attention distillation needs a teacher with attention maps (a ViT). The recipe's default weight is turned off
    for a teacher without them (a CNN): returned as a change for `final_training_arguments`, which logs it. A weight
    the user asked for fails here, before any expensive work, with the flag to change."""
    if not args.can_be_nonzero("attention_loss_weight"):
        return {}
    teacher.supervise_attention()
    if teacher.gives_attention_maps():
        return {}
    if user_gave(argv, "attention_loss_weight"):
        raise ValueError(
            f"--attention_loss_weight {args.attention_loss_weight}: the teacher ({args.teacher_model_name_or_path}, "
            f"{type(teacher.model).__name__}) gives no attention maps to align with (attention distillation needs a "
            "ViT teacher). Pass --attention_loss_weight 0, or a ViT teacher."
        )
    reason = (f"the teacher ({type(teacher.model).__name__}) gives no attention maps: attention distillation is off; "
              "the student learns from the labels and the teacher's other outputs")  # fmt: skip
    return {"attention_loss_weight": (0.0, reason)}


def run_autocast(args: TrainingArguments):
    """The autocast the Trainer's accelerator runs forwards under with these arguments (--bf16, --fp16), for the
    teacher's work before the Trainer exists: its cached logits. None in full precision."""
    if not (args.bf16 or args.fp16):
        return None
    return functools.partial(torch.autocast, args.device.type, dtype=torch.bfloat16 if args.bf16 else torch.float16)


def cache_teacher(
    teacher: Teacher, data, data_args, student, args, output_dir: Path, training_split: bool = True
) -> dict[str, dict]:
    """The offline teacher: its logits for every split (the evaluation splits only without `training_split`, whose
    augmented views `replay_teacher_views` caches), computed once on the student's deterministic view and saved to
    output_dir/_teacher_cache/<split> (a datasets dataset keyed by source row). Under several processes the one that
    saves computes them while the others wait, then they read its files."""
    random_flags = random_augmentations(data_args)
    if random_flags and training_split:
        raise ValueError(
            f"--offline_teacher needs the same image for a row in every epoch, but {random_flags} make training "
            "batches random; cache augmented views with --offline_teacher_views K (crops and flips, on "
            "--input_pipeline tensors), or pass --crop none --horizontal_flip false and leave the other augmentations "
            "off, or distill from the live teacher."
        )
    transform = student.input_specification.eval_transform()
    logits_by_split = {}
    # The saving process (one per node with --save_on_each_node) goes first; the rest load what it saved.
    with args.main_process_first(local=args.save_on_each_node, desc="caching the teacher's logits"):
        for split in data.dataset:
            if split == "train" and not training_split:
                continue
            path = str(output_dir / "_teacher_cache" / split)
            if args.should_save:
                batch_size = args.per_device_eval_batch_size
                cache = cache_teacher_logits(teacher, data.dataset[split], transform, batch_size=batch_size,
                                             device=args.device)  # fmt: skip
                cache.save_to_disk(path)
            else:
                cache = datasets.load_from_disk(path)
            logits_by_split[split] = teacher_outputs_by_row(cache)
    return logits_by_split


def check_offline_teacher_views(
    teacher_args, data_args, data, args: DistillationConfig, argv: list[str] | None
) -> None:
    """Refuses, before the teacher runs on anything, an --offline_teacher_views request that cannot work."""
    views, top_k = teacher_args.offline_teacher_views, teacher_args.offline_teacher_top_k
    if views < 0 or top_k < 1:
        raise ValueError(
            f"--offline_teacher_views {views} --offline_teacher_top_k {top_k}: pass a number of views >= 1 (0 caches "
            "one unaugmented view) and a top-k >= 1."
        )
    if views == 0:
        if user_gave(argv, "offline_teacher_top_k"):
            raise ValueError("--offline_teacher_top_k keeps the top logits of cached views; pass "
                             "--offline_teacher_views K with it, or leave it out.")  # fmt: skip
        return
    if not args.offline_teacher:
        raise ValueError(
            f"--offline_teacher_views {views} caches the offline teacher's outputs on augmented views; pass "
            "--offline_teacher with it, or leave it out to distill from the live teacher."
        )
    mixing = [flag for flag, alpha in (("--mixup_alpha", data_args.mixup_alpha),
                                       ("--cutmix_alpha", data_args.cutmix_alpha)) if alpha > 0]  # fmt: skip
    if mixing:
        raise ValueError(
            f"--offline_teacher_views caches the teacher on views of one image, and {mixing} blend two images into "
            "one the teacher never saw; pass --mixup_alpha 0 --cutmix_alpha 0, or distill from the live teacher."
        )
    pipeline = choose_input_pipeline(data, data_args)
    if pipeline != "tensors":
        raise ValueError(
            f"--offline_teacher_views replays each cached view on the tensor input pipeline, and this run would use "
            f"'{pipeline}'; pass --input_pipeline tensors (images of one size that fit in memory; no --auto_augment, "
            "--color_jitter or --random_erasing)."
        )


def replay_teacher_views(teacher: Teacher, inputs, teacher_args, args: DistillationConfig):
    """The training dataset and collator of the offline teacher with augmentation: the teacher's top-k logits on
    --offline_teacher_views views of every training image drawn by the training collator (cached on disk under a key
    of the teacher, the images and the view settings, so a rerun loads them), each row replaying one view per epoch.
    The process that saves computes the cache first; the others then find its file."""
    if inputs.pipeline != "tensors":
        raise ValueError(
            f"--offline_teacher_views replays each cached view on the tensor input pipeline, and this run uses "
            f"'{inputs.pipeline}'; pass --input_pipeline tensors (images of one size that fit in memory)."
        )
    collator = inputs.train_collator
    with args.main_process_first(desc="caching the teacher's views"):
        cache = cache_teacher_views(
            teacher, inputs.train_dataset.decoded, collator, num_views=teacher_args.offline_teacher_views,
            top_k=teacher_args.offline_teacher_top_k, batch_size=args.per_device_eval_batch_size,
            progress=not args.disable_tqdm,
        )  # fmt: skip
    return TeacherViewDataset(inputs.train_dataset.decoded, cache, seed=collator.seed), collator.with_replayed_views()


@torch.no_grad()
def write_attention_overlays(trainer, test_dataset, eval_collator, data, student, count: int, path: str) -> None:
    # Spread over the split: folder datasets list their classes one after the other.
    indices = np.linspace(0, len(test_dataset) - 1, num=min(count, len(test_dataset))).round().astype(int)
    batch = eval_collator([test_dataset[int(index)] for index in indices])
    batch = on_device(eval_collator, batch)
    pixel_values = batch["pixel_values"].float().cpu()
    teacher_maps, student_maps = trainer.attention_maps(pixel_values)
    mean = torch.tensor(student.input_specification.image_mean)[:, None, None]
    std = torch.tensor(student.input_specification.image_std)[:, None, None]
    images = (pixel_values * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    labels = [data.id2label[int(label)] for label in batch["labels"]]
    plot_attention_overlays(images, np.asarray(teacher_maps), np.asarray(student_maps), path, labels)


def distillation_settings(args: DistillationConfig) -> dict:
    names = ["temperature", "label_loss_weight", "soft_loss_weight", "soft_loss_type", "logit_standardization",
             "hard_loss_weight", "feature_loss_weight", "attention_loss_weight", "layer_weighting",
             "student_attention", "schedules"]  # fmt: skip
    # The divergence's own parameters, only for the divergence that uses them.
    names += {"dkd": ["dkd_alpha", "dkd_beta"], "jsd": ["jsd_beta"]}.get(args.soft_loss_type, [])
    if args.extra_teachers:
        names += ["extra_teachers", "teacher_weights", "teacher_ensemble"]
    return {name: getattr(args, name) for name in names}


def correct_predictions(trainer, dataset) -> np.ndarray:
    """Whether the trainer's model gets each image of `dataset` right, in the dataset's order."""
    prediction = trainer.predict(dataset)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return np.asarray(logits).argmax(-1) == np.asarray(prediction.label_ids)


def describe_gain(gain: dict, split_name: str) -> str:
    """The summary's sentence on the distilled student's gain and how much of it the choice of images explains."""
    return (
        f"Gain of the distilled student over the baseline on the {gain['images']:,} {split_name} images: "
        f"{100 * gain['gain']:+.1f} points ({gain['only_model_right']} images right only when distilled, "
        f"{gain['only_reference_right']} only in the baseline); {100 * gain['confidence']:.0f}% paired bootstrap "
        f"interval over the images: {100 * gain['low']:+.1f} to {100 * gain['high']:+.1f} points. One seed: the "
        f"interval covers the choice of {split_name} images, not seed-to-seed variation (benchmarks/distill_seeds.py "
        "runs this job over several --seed values and scores the gain's mean and standard deviation).\n"
    )


def write_summary(
    rows: list[dict],
    args: DistillationConfig,
    output_dir: Path,
    split: tuple[str, str] | None,
    gain: dict | None = None,
    validation_from_training: bool = False,
) -> dict:
    """summary.json and summary.md: the models' figures on the test split, or on the validation split (said so) when
    the dataset has none, their validation accuracy and training time, the distilled student's gain over the baseline
    with its bootstrap interval (`gain`, from `paired_accuracy_gain`), and the settings. `validation_from_training`:
    the validation images were carved from the training split, which the teacher has likely trained on (said so)."""
    columns = [("model", "model"), ("parameters", "parameters")]
    note = ""
    if split is not None:
        name, prefix = split
        columns += [(f"{prefix}_accuracy", f"{name} accuracy"),
                    (f"last_epoch_{prefix}_accuracy", f"{name} accuracy, last epoch"),
                    (f"{prefix}_f1_macro", f"{name} macro-F1"),
                    (f"{prefix}_agreement", "top-1 agreement with the teacher"),
                    (f"{prefix}_teacher_student_kl", "KL(teacher || student)")]  # fmt: skip
        if prefix != "eval":
            columns.append(("eval_accuracy", "validation accuracy"))
        else:
            note = "The dataset has no test split: the figures are the validation split's.\n"
    else:
        note = "The dataset has neither a test nor a validation split: no accuracy to report.\n"
    if split is not None and args.load_best_model_at_end:
        note += (f"Each student is its best checkpoint by validation accuracy; \"{split[0]} accuracy, last epoch\" is "
                 "its model at the end of training.\n")  # fmt: skip
    if validation_from_training and any(
        row["model"].startswith("teacher") and row.get("eval_accuracy") is not None for row in rows
    ):
        note += (
            "The validation images were carved from the training split: a teacher trained on this dataset has "
            "likely seen them, so its validation figures overstate it"
            + (" (its test figures do not)" if split is not None and split[1] != "eval" else "")
            + ".\n"
        )
    columns.append(("train_runtime", "training time (s)"))
    columns = [(key, header) for key, header in columns if key in ("model", "parameters")
               or any(row.get(key) is not None for row in rows)]  # fmt: skip
    settings = {**distillation_settings(args), **{name: getattr(args, name) for name in (
        "num_train_epochs", "learning_rate", "per_device_train_batch_size", "seed")}}  # fmt: skip
    summary = {"models": rows, "settings": settings, "reported_split": split[0] if split else None}
    if gain is not None:
        summary["gain_over_baseline"] = gain
        note += describe_gain(gain, split[0])
    if args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        settings_lines = "".join(f"- {name}: {value}\n" for name, value in settings.items())
        table = markdown_table(rows, columns) + (f"\n{note}" if note else "")
        (output_dir / "summary.md").write_text(
            "# Distillation summary\n\n" + table + "\n## Settings\n\n" + settings_lines
        )
        logger.info("Summary:\n%s", table)
    return summary


if __name__ == "__main__":
    run_recipe(main)
