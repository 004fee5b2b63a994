"""`DistillationTrainer`: a `Trainer` whose loss mixes the labels with a frozen teacher's predictions, features and
attention maps."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, set_seed
from transformers.utils import logging

from ..losses import (
    attention_alignment_loss,
    attention_entropy,
    cls_attention_map,
    decoupled_distillation_terms,
    entropy_layer_weights,
    feature_distillation_loss,
    feature_energy_map,
    generalized_jsd_loss,
    hard_distillation_loss,
    resize_distribution,
    reverse_distillation_loss,
    soft_distillation_loss,
    standardize_logits,
    teacher_ensemble_logits,
    uniform_entropy,
)
from ..models.input_specification import InputSpecification
from ..training import ImageClassificationTrainer, LoggedTermsMixin, classification_loss, on_device
from .adapters import (
    ADAPTERS_WEIGHTS_NAME,
    AttentionProjection,
    FeatureAdapter,
    StudentWithAdapters,
    as_feature_map,
    load_adapters,
    num_prefix_tokens,
    resize_feature_map,
    save_adapters,
)
from .distillation_config import LOSS_WEIGHT_NAMES, DistillationConfig
from .teacher import Teacher, attention_grid, forward_kwargs, require_attentions, use_eager_attention
from .teacher_cache import TEACHER_LOGITS_COLUMN

logger = logging.get_logger(__name__)


@dataclass
class TeacherOutputs:
    """What the losses use from one teacher forward, in float32; the rest of its outputs (other layers' hidden
    states, whole attention maps) is dropped as the forward returns, never converted or kept."""

    logits: torch.Tensor
    # The feature-distillation layers' hidden states, by their index in `feature_layer_pairs`' teacher column.
    hidden_states: dict[int, torch.Tensor]
    # The [CLS] attention maps `(batch, rows, columns)` of the supervised layers, in `_attention_layers` order.
    attention_maps: list[torch.Tensor]


class DistillationTrainer(LoggedTermsMixin, ImageClassificationTrainer):
    """A `Trainer` that distills a frozen teacher into the student (`model`).

    The teacher (`Teacher`: frozen, its weights in float32 or `teacher_dtype`, its own input transform) is placed on
    the device (no DDP wrapper) and runs under `torch.no_grad()` and the run's autocast; only what the losses use
    leaves its forward, in float32. Its logits are checked for inf/NaN at each log (a fp16 overflow would otherwise
    make the GradScaler skip every step in silence). It is an attribute of the trainer (`teacher`), not of the model,
    so it is never saved into the student's checkpoints.

    The soft term is `args.soft_loss_type`'s (KD, DKD, reverse KL or generalised JSD, after logit standardisation
    when asked). Every evaluation with a teacher (live or cached logits) also logs the student's top-1 agreement with
    it and KL(teacher || student) at T = 1 over the whole split (`eval_agreement`, `eval_teacher_student_kl`).

    Feature distillation and a CNN student's learned attention projection need adapters. They are built from one
    probe batch before training, and the trainer trains the student and its adapters as one module
    (`StudentWithAdapters`, the trainer's `model`; `student` is the student itself), which saves the student alone:
    checkpoints and the export are the clean student, and each checkpoint keeps the adapters beside it
    (`distillation_adapters.safetensors`), restored on resumption and with the best checkpoint. They run outside the
    student's forward, so FSDP (which shards them with the student) is refused; under DDP without
    `ddp_find_unused_parameters`, a parameter that gets no gradient in the first step stops the run with its name.

    Args:
        model (`PreTrainedModel`):
            The student.
        teacher (`Teacher`, `nn.Module`, `str`, or a list of them, *optional*):
            The teacher (a `Teacher` carries its input transform when its input differs from the student's), its
            model, or a local directory / Hub id for `Teacher.from_pretrained`; defaults to
            `args.teacher_model_name_or_path`, with `args.extra_teachers` after it. A list gives every teacher (the
            first supplies features and attention maps; `args.teacher_weights` weigh them). Every teacher's
            `id2label` must match the student's.
        args (`DistillationConfig`):
            Training arguments, temperature, loss weights, layers and schedules.
        kwargs:
            As for [`ImageClassificationTrainer`] (datasets, collators, `compute_metrics`, `processing_class`, ...).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        teacher: Teacher | nn.Module | str | list[Teacher | nn.Module | str] | None = None,
        args: DistillationConfig | None = None,
        **kwargs,
    ):
        if not isinstance(args, DistillationConfig):
            raise ValueError(f"args must be a DistillationConfig, got {type(args).__name__}.")
        teachers = self._teachers(model, teacher, args, kwargs.get("processing_class"))
        _check_distillation_token_heads(model, args)
        teacher = teachers[0] if teachers else None
        if teacher is not None and args.can_be_nonzero("attention_loss_weight"):
            teacher.supervise_attention()
        # Non-finite teacher logits counted on the device since the last log (no host sync per step).
        self._teacher_nonfinite_logits: torch.Tensor | None = None
        # Teacher-student agreement of the current evaluation: (agreeing, summed KL, examples) on the device.
        self._agreement_totals: torch.Tensor | None = None
        self._gradients_checked = False
        # Set by _build_adapters when attention distillation is on.
        self._attention_layers: list[int] = []
        self._attention_grid: tuple[int, int] | None = None
        # A CNN student's spatial map comes from its features; a ViT student's from its own attention.
        self._student_map_from_features = True
        self._student_prefix_tokens = num_prefix_tokens(model)
        if args.can_be_nonzero("feature_loss_weight") or args.can_be_nonzero("attention_loss_weight"):
            set_seed(args.seed)  # the adapters' initialisation follows the run's seed
            collator = kwargs.get("eval_data_collator") or kwargs.get("data_collator")
            probe = _probe_batch(model, kwargs.get("train_dataset"), collator)
            adapters = self._build_adapters(model, teacher, args, probe)
            if _has_parameters(adapters):
                if args.fsdp:
                    raise ValueError(_FSDP_MESSAGE)
                model = StudentWithAdapters(model, adapters)
            elif len(adapters):  # parameter-free (an identity projection): nothing to train or save
                model = StudentWithAdapters(model, adapters)

        super().__init__(model=model, args=args, **kwargs)
        adapters = self.adapters
        # FSDP can also come from `accelerate launch`'s config rather than the arguments.
        if self.is_fsdp_enabled and _has_parameters(adapters):
            raise ValueError(_FSDP_MESSAGE)
        if _has_parameters(adapters):
            self.add_callback(_BestCheckpointAdapters(adapters))
        # The first teacher supplies features and attention maps; all of them soft labels.
        self.teachers = [each.place(self.args.device, self.accelerator.autocast) for each in teachers]
        self.teacher = self.teachers[0] if self.teachers else None
        self._reset_logged_terms()

    @staticmethod
    def _teachers(model: nn.Module, teacher, args: DistillationConfig, processing_class=None) -> list[Teacher]:
        """Every teacher as a `Teacher` (see the `teacher` argument), checked against the student's labels; none when
        the batches bring cached logits or nothing needs one. A teacher given by name takes the student's batches to
        its own input when the student's image processor (`processing_class`) says what that input is."""
        if isinstance(teacher, (list, tuple)):
            given = list(teacher)
            if args.extra_teachers and len(given) != 1 + len(args.extra_teachers):
                raise ValueError(
                    f"teacher= lists {len(given)} teachers and extra_teachers names {len(args.extra_teachers)} more "
                    "than the first: pass every teacher in the list (the first, then the extra ones), or a single "
                    "teacher and let extra_teachers name the others."
                )
        elif teacher is not None:
            given = [teacher, *args.extra_teachers]
        elif not args.offline_teacher and args.teacher_model_name_or_path:  # offline, the batches bring the logits
            given = [args.teacher_model_name_or_path, *args.extra_teachers]
        else:
            given = []
        if not given and args.needs_teacher:
            raise ValueError(
                "no teacher: pass teacher= or set teacher_model_name_or_path, train from cached teacher logits "
                "(offline_teacher=True), or set every teacher loss weight (soft, hard, feature, attention) to 0 to "
                "train the student on labels alone."
            )
        student_input = None
        if getattr(processing_class, "image_mean", None) is not None and getattr(processing_class, "size", None):
            student_input = InputSpecification.from_image_processor(processing_class)
        teachers = []
        for each in given:
            if isinstance(each, str):
                each = Teacher.from_pretrained(each, dtype=args.teacher_dtype, student_input=student_input)
            elif not isinstance(each, Teacher):
                each = Teacher(each, dtype=args.teacher_dtype)
            if hasattr(model, "config"):
                each.check_labels(model.config)
            teachers.append(each)
        weights = args.teacher_weights
        if weights is not None and teachers and len(weights) != len(teachers):
            raise ValueError(
                f"teacher_weights has {len(weights)} weights for {len(teachers)} teachers: pass one per teacher, the "
                "first teacher's first."
            )
        return teachers

    @property
    def teacher_weights(self) -> list[float]:
        """The teachers' weights, normalised to sum to 1 (equal unless `teacher_weights` says otherwise)."""
        weights = self.args.teacher_weights or [1.0] * max(1, len(self.teachers))
        return [weight / sum(weights) for weight in weights]

    # ---- set-up ----

    def _build_adapters(
        self, student: nn.Module, teacher: Teacher, args: DistillationConfig, probe: torch.Tensor
    ) -> nn.ModuleDict:
        """Runs one probe batch through both models to size the adapters and check the configured layers."""
        student.eval()
        with torch.no_grad():
            # Each model gets the probe on its own device and in its own dtype: a teacher already placed on an
            # accelerator must not receive CPU tensors.
            student_outputs = student(pixel_values=_on_device_of(probe, student), output_hidden_states=True)
            teacher_outputs = teacher.model(
                pixel_values=teacher.inputs(probe),
                **forward_kwargs(
                    teacher.model, hidden_states=True, attentions=args.can_be_nonzero("attention_loss_weight")
                ),
            )
        student.train()
        adapters = nn.ModuleDict()
        if args.can_be_nonzero("feature_loss_weight"):
            for index, (student_layer, teacher_layer) in enumerate(args.feature_layer_pairs):
                student_map = as_feature_map(
                    _pick(student_outputs.hidden_states, student_layer, "student hidden state"),
                    self._student_prefix_tokens,
                )
                teacher_map = as_feature_map(
                    _pick(teacher_outputs.hidden_states, teacher_layer, "teacher hidden state"),
                    teacher.num_prefix_tokens,
                )
                adapters[f"feature_{index}"] = FeatureAdapter(
                    student_map.shape[1], teacher_map.shape[1], tuple(teacher_map.shape[-2:])
                )
        if args.can_be_nonzero("attention_loss_weight"):
            attentions = require_attentions(teacher_outputs)
            layers = args.attention_teacher_layers or list(range(len(attentions)))
            for layer in layers:
                _pick(attentions, layer, "teacher attention layer")
            self._attention_layers = layers
            grid = attention_grid(attentions[0], teacher.num_prefix_tokens)
            self._attention_grid = grid
            student_hidden = student_outputs.hidden_states[-1]
            self._student_map_from_features = student_hidden.ndim == 4
            if self._student_map_from_features:
                student_hidden = _pick(student_outputs.hidden_states, args.attention_student_layer, "student stage")
            else:
                use_eager_attention(student, "student")
                with torch.no_grad():
                    student_attentions = student(
                        pixel_values=_on_device_of(probe, student), output_attentions=True
                    ).attentions
                _pick(student_attentions, args.attention_student_layer, "student attention layer")
            if self._student_map_from_features and args.student_attention == "learned":
                adapters["attention_projection"] = AttentionProjection(student_hidden.shape[1], grid)
        return adapters

    @property
    def student(self) -> nn.Module:
        """The student (the trainer's `model` is the student with its adapters when the losses need any)."""
        model = self.accelerator.unwrap_model(self.model)
        return model.student if isinstance(model, StudentWithAdapters) else model

    @property
    def adapters(self) -> nn.ModuleDict | None:
        """The adapters that train with the student, or `None` when the losses need none."""
        model = self.accelerator.unwrap_model(self.model)
        return model.adapters if isinstance(model, StudentWithAdapters) else None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`: the student alone (`StudentWithAdapters.save_pretrained`). Into one of the run's
        checkpoints the adapters go too, beside the student, before the Trainer writes the state that makes the
        checkpoint complete and before it pushes the checkpoint (`hub_strategy`)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        adapters = self.adapters
        if output_dir is not None and _has_parameters(adapters) and self.args.should_save:
            if _is_checkpoint_of(output_dir, self.args.output_dir):
                save_adapters(adapters, output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; resuming also restores the adapters from the checkpoint (the Trainer restores the
        student)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if resume_from_checkpoint and _has_parameters(self.adapters):
            load_adapters(self.adapters, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- the loss ----

    def scheduled(self, name: str) -> float:
        """The current value of `temperature` or a `*_loss_weight`, following its schedule if it has one."""
        schedule = self.args.parsed_schedules.get(name)
        if schedule is None:
            return getattr(self.args, name)
        num_epochs = self.state.num_train_epochs or self.args.num_train_epochs
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else None
        return schedule.value(self.state.epoch or 0.0, num_epochs, progress)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        args: DistillationConfig = self.args
        labels = inputs.get("labels")
        pixel_values = inputs["pixel_values"]
        weights = {name: self.scheduled(name) for name in LOSS_WEIGHT_NAMES}
        temperature = self.scheduled("temperature")
        # A term that a schedule can turn on is computed even while its weight is 0: its adapters must take part in
        # every step, or DDP stops waiting for their gradients.
        use_features = args.can_be_nonzero("feature_loss_weight")
        use_attention = args.can_be_nonzero("attention_loss_weight")
        student_needs_hidden = use_features or (use_attention and self._student_map_from_features)
        student_needs_attentions = use_attention and not self._student_map_from_features

        student_kwargs = {}
        if student_needs_hidden:
            student_kwargs["output_hidden_states"] = True
        if student_needs_attentions:
            student_kwargs["output_attentions"] = True
        self.mark_batch_dynamic(pixel_values)
        student_outputs = model(pixel_values=pixel_values, **student_kwargs)
        student_logits = student_outputs.logits
        # A student with DeiT's distillation token (our ViT with config.distillation_token): its [CLS] head learns
        # from the labels, its distillation head from the teacher; its prediction (the logits) is their mean.
        distillation_logits = getattr(student_outputs, "distillation_logits", None)
        label_logits = student_outputs.cls_logits if distillation_logits is not None else student_logits
        taught_logits = distillation_logits if distillation_logits is not None else student_logits
        adapters = self.adapters

        components: dict[str, torch.Tensor] = {}
        # Logged beside the components, not added to the loss (e.g. DKD's two parts of the soft term).
        details: dict[str, torch.Tensor] = {}
        if args.can_be_nonzero("label_loss_weight"):
            if labels is None:
                raise ValueError("label_loss_weight > 0 needs 'labels' in every batch.")
            label_smoothing = args.label_smoothing_factor if model.training else 0.0
            components["label"] = classification_loss(label_logits, labels, label_smoothing)
        uses_teacher_terms = any(
            args.can_be_nonzero(name) for name in LOSS_WEIGHT_NAMES if name != "label_loss_weight"
        )
        # Evaluation measures the student's agreement with whatever teacher there is, even one no loss term uses.
        evaluating_with_teacher = not model.training and (self.teacher is not None or TEACHER_LOGITS_COLUMN in inputs)
        if uses_teacher_terms or evaluating_with_teacher:
            if args.offline_teacher or self.teacher is None:
                if TEACHER_LOGITS_COLUMN not in inputs:
                    raise ValueError(
                        "offline_teacher is on but the batch has no 'teacher_logits'; prepare the splits with "
                        "with_image_transform(..., extra_columns=teacher_outputs_by_row(cache))."
                    )
                teacher_outputs = None
                teacher_logits = inputs[TEACHER_LOGITS_COLUMN].float()
            else:
                teacher_outputs = self._teacher_outputs(
                    pixel_values, hidden_states=use_features, attentions=use_attention
                )
                teacher_logits = teacher_outputs.logits
                self._count_nonfinite_teacher_logits(teacher_logits)
            all_teacher_logits = [teacher_logits]
            for extra_teacher in self.teachers[1:]:
                all_teacher_logits.append(extra_teacher(pixel_values))
                self._count_nonfinite_teacher_logits(all_teacher_logits[-1])
            # The hard term and the agreement (evaluation only) follow the teachers' average.
            if len(all_teacher_logits) > 1 and (args.can_be_nonzero("hard_loss_weight") or not model.training):
                teacher_logits = teacher_ensemble_logits(all_teacher_logits, self.teacher_weights)
            if args.can_be_nonzero("soft_loss_weight"):
                components["soft"], soft_details = self._soft_loss(
                    taught_logits, all_teacher_logits, labels, temperature
                )
                details.update(soft_details)
            if args.can_be_nonzero("hard_loss_weight"):
                components["hard"] = hard_distillation_loss(taught_logits, teacher_logits)
            if use_features:
                components["feature"] = self._feature_loss(student_outputs, teacher_outputs, adapters)
            if use_attention:
                components["attention"] = self._attention_loss(student_outputs, teacher_outputs, adapters)
            if not model.training:
                self._record_agreement(student_logits, teacher_logits)
        loss = sum(weights[f"{name}_loss_weight"] * value for name, value in components.items())

        mode = "train" if model.training else "eval"
        for name, value in {**components, **details}.items():
            # Detached tensors, averaged and reduced across processes at log time: no device sync per step.
            self.logged_terms[mode][f"loss_{name}"].append(value.detach().float())
        if mode == "train":
            for name in args.parsed_schedules:
                self.logged_terms[mode][name].append(
                    torch.tensor(temperature if name == "temperature" else weights[name])
                )
        # Only the logits go back to evaluation: hidden states and attention maps of a whole eval set would pile up.
        return (loss, ImageClassifierOutput(logits=student_logits)) if return_outputs else loss

    def _soft_loss(
        self,
        student_logits: torch.Tensor,
        teacher_logits: list[torch.Tensor],
        labels: torch.Tensor | None,
        temperature: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The soft term chosen by `soft_loss_type` (after logit standardisation if asked), against the teachers'
        average or one per teacher (`teacher_ensemble`), and its parts to log."""
        args: DistillationConfig = self.args
        if args.logit_standardization:
            student_logits = standardize_logits(student_logits)
            teacher_logits = [standardize_logits(logits) for logits in teacher_logits]
        weights = self.teacher_weights
        if len(teacher_logits) > 1 and args.teacher_ensemble == "average":
            teacher_logits, weights = [teacher_ensemble_logits(teacher_logits, weights, temperature)], [1.0]
        if len(teacher_logits) == 1:
            return self._soft_term(student_logits, teacher_logits[0], labels, temperature)
        total, details = 0.0, {}
        for index, (weight, logits) in enumerate(zip(weights, teacher_logits)):
            soft, _ = self._soft_term(student_logits, logits, labels, temperature)
            total = total + weight * soft
            details[f"soft_teacher_{index}"] = soft
        return total, details

    def _soft_term(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None,
        temperature: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One soft term, chosen by `soft_loss_type`, and its parts to log."""
        args: DistillationConfig = self.args
        if args.soft_loss_type == "dkd":
            if labels is None:
                raise ValueError(
                    "soft_loss_type='dkd' needs 'labels' in every batch: its target-class term is about the true "
                    "class. Keep the label column, or use soft_loss_type='kd'."
                )
            # Mixed (mixup/cutmix) soft labels: the dominant class is the target.
            target = labels.argmax(dim=-1) if labels.is_floating_point() and labels.ndim == 2 else labels
            target_class_kl, non_target_class_kl = decoupled_distillation_terms(
                student_logits, teacher_logits, target, temperature
            )
            soft = args.dkd_alpha * target_class_kl + args.dkd_beta * non_target_class_kl
            return soft, {"soft_tckd": target_class_kl, "soft_nckd": non_target_class_kl}
        if args.soft_loss_type == "reverse_kl":
            return reverse_distillation_loss(student_logits, teacher_logits, temperature), {}
        if args.soft_loss_type == "jsd":
            return generalized_jsd_loss(student_logits, teacher_logits, args.jsd_beta, temperature), {}
        return soft_distillation_loss(student_logits, teacher_logits, temperature), {}

    @torch.no_grad()
    def _record_agreement(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        """Adds this evaluation batch's agreeing predictions, summed KL(teacher || student) at T = 1 on the raw
        logits and its example count to per-split totals on the device (no host sync); `log` turns them into means
        over the whole split, not means of batch means."""
        student_logits = student_logits.detach().float()
        teacher_logits = teacher_logits.float().to(student_logits.device)
        agreeing = (student_logits.argmax(dim=-1) == teacher_logits.argmax(dim=-1)).sum().float()
        student_log_probabilities = F.log_softmax(student_logits, dim=-1)
        teacher_log_probabilities = F.log_softmax(teacher_logits, dim=-1)
        kl_sum = F.kl_div(student_log_probabilities, teacher_log_probabilities, reduction="sum", log_target=True)
        count = torch.full((), float(student_logits.shape[0]), device=student_logits.device)
        totals = torch.stack([agreeing, kl_sum, count])
        self._agreement_totals = totals if self._agreement_totals is None else self._agreement_totals + totals

    def _agreement_metrics(self) -> dict[str, float]:
        """`agreement` and `teacher_student_kl` over the examples evaluated since the last log, summed across
        processes (a distributed evaluation's padding repeats a few examples of its last batch)."""
        totals, self._agreement_totals = self._agreement_totals, None
        if totals is None:
            return {}
        agreeing, kl_sum, count = self.accelerator.reduce(totals, reduction="sum").tolist()
        return {"agreement": agreeing / count, "teacher_student_kl": kl_sum / count}

    def _teacher_outputs(self, pixel_values: torch.Tensor, hidden_states: bool, attentions: bool) -> TeacherOutputs:
        """One teacher forward on the teacher's view of the batch, reduced to what the losses use."""

        def used_outputs(outputs) -> dict:
            used = {"logits": outputs.logits, "hidden_states": {}, "attention_maps": []}
            if hidden_states:
                for _, layer in self.args.feature_layer_pairs:
                    used["hidden_states"][layer] = outputs.hidden_states[layer]
            if attentions:
                # The [CLS] rows of the supervised layers only, averaged over heads: not every layer's full map.
                used["attention_maps"] = [
                    cls_attention_map(outputs.attentions[layer], self._attention_grid, self.teacher.num_prefix_tokens)
                    for layer in self._attention_layers
                ]
            return used

        return TeacherOutputs(
            **self.teacher(pixel_values, select=used_outputs, hidden_states=hidden_states, attentions=attentions)
        )

    def _count_nonfinite_teacher_logits(self, teacher_logits: torch.Tensor) -> None:
        count = torch.isfinite(teacher_logits).logical_not().sum()
        previous = self._teacher_nonfinite_logits
        self._teacher_nonfinite_logits = count if previous is None else previous + count

    def _check_teacher_logits(self) -> None:
        """Fails when the teacher gave inf/NaN logits since the last log. Every process logs at the same steps and
        runs the teacher at every step, so all take part in the reduction and all stop together."""
        count, self._teacher_nonfinite_logits = self._teacher_nonfinite_logits, None
        if count is None:
            return
        count = int(self.accelerator.reduce(count, reduction="sum").item())
        if count == 0:
            return
        args: DistillationConfig = self.args
        autocast = "fp16" if args.fp16 else "bf16" if args.bf16 else None
        dtype = str(self.teacher.dtype).removeprefix("torch.")
        running = f"with {dtype} weights" + (f" under {autocast} autocast" if autocast else "")
        if autocast == "fp16":
            fix = (
                "fp16's range (largest value 65504) overflows in large teachers; train with --bf16 instead of "
                "--fp16 (same speed on GPUs that have bf16), or in float32 (without --fp16)."
            )
        elif dtype != "float32" or autocast:
            fix = "run the teacher in float32: --teacher_dtype float32, and without --bf16 if that is not enough."
        else:
            fix = "the teacher gives them in float32 too: check its checkpoint and its inputs (input_transform)."
        raise ValueError(
            f"the teacher ({', '.join(teacher.name for teacher in self.teachers)}) returned {count} non-finite logits "
            "(inf/NaN) since the last log, "
            f"running {running}; every loss that uses them is NaN. {fix}"
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        self._agreement_totals = None  # a predict() in between leaves its batches' totals
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._check_teacher_logits()
        # The model is in eval mode exactly while evaluate() logs its metrics (as in LoggedTermsMixin).
        if not self.model.training:
            prefix = getattr(self, "_metric_key_prefix", "eval")
            logs.update({f"{prefix}_{name}": value for name, value in self._agreement_metrics().items()})
        super().log(logs, start_time)

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self._gradients_checked:
            # After the first backward, on this process's own gradients: no collective, no hang.
            self._gradients_checked = True
            if _syncs_gradients_without_unused_search(model):
                # Named as in the student (its adapters as `adapters.*`).
                unused = [name.removeprefix("student.")
                          for name in unused_trainable_parameters(self.accelerator.unwrap_model(model))]  # fmt: skip
                if unused:
                    shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
                    raise ValueError(
                        f"{len(unused)} trainable parameter(s) of the student got no gradient in the first step: "
                        f"{shown}. DDP without its unused-parameter search waits for them and then fails or hangs; "
                        "freeze them (requires_grad_(False)), make the forward use them, or pass "
                        "--ddp_find_unused_parameters true."
                    )
        return loss

    def _feature_loss(self, student_outputs, teacher_outputs: TeacherOutputs, adapters: nn.ModuleDict) -> torch.Tensor:
        losses = []
        for index, (student_layer, teacher_layer) in enumerate(self.args.feature_layer_pairs):
            student_map = as_feature_map(student_outputs.hidden_states[student_layer], self._student_prefix_tokens)
            teacher_map = as_feature_map(teacher_outputs.hidden_states[teacher_layer], self.teacher.num_prefix_tokens)
            adapter = adapters[f"feature_{index}"]
            adapted = adapter(student_map.to(_dtype_of(adapter, student_map))).float()
            losses.append(feature_distillation_loss(adapted, teacher_map.float(), self.args.feature_distance))
        return torch.stack(losses).mean()

    def _teacher_maps(self, teacher_outputs: TeacherOutputs) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The teacher's [CLS] attention maps of the supervised layers, and each layer's weight."""
        args: DistillationConfig = self.args
        teacher_maps = teacher_outputs.attention_maps
        # Lower entropy (a more focused map), more weight; computed from the teacher alone, without gradient.
        entropies = torch.stack([attention_entropy(teacher_map).mean() for teacher_map in teacher_maps])
        max_entropy = uniform_entropy(self._attention_grid[0] * self._attention_grid[1])
        layer_weights = entropy_layer_weights(
            entropies,
            args.layer_weighting_temperature,
            uniform=args.layer_weighting == "uniform",
            max_entropy=max_entropy,
        )
        return teacher_maps, layer_weights

    def _student_map(self, student_outputs, adapters: nn.ModuleDict | None) -> torch.Tensor:
        args: DistillationConfig = self.args
        if self._student_map_from_features:
            student_features = student_outputs.hidden_states[args.attention_student_layer]
            if args.student_attention == "learned":
                projection = adapters["attention_projection"]
                return projection(student_features.to(_dtype_of(projection, student_features))).float()
            return feature_energy_map(student_features.float())
        student_attentions = student_outputs.attentions[args.attention_student_layer]
        grid = attention_grid(student_attentions, self._student_prefix_tokens)
        return cls_attention_map(student_attentions, grid, self._student_prefix_tokens)

    def _on_teacher_grid(self, student_map: torch.Tensor) -> torch.Tensor:
        """The student's map resampled onto the teacher's grid and renormalised, like `resize_distribution`, but with
        the adapters' deterministic resize: the student trains through it."""
        if tuple(student_map.shape[-2:]) == tuple(self._attention_grid):
            return student_map
        resized = resize_feature_map(student_map[:, None].float(), self._attention_grid)[:, 0]
        return resized / resized.flatten(1).sum(dim=-1).clamp_min(1e-12)[:, None, None]

    def _attention_loss(self, student_outputs, teacher_outputs, adapters: nn.ModuleDict | None) -> torch.Tensor:
        teacher_maps, layer_weights = self._teacher_maps(teacher_outputs)
        student_map = self._on_teacher_grid(self._student_map(student_outputs, adapters))
        mode = "train" if self.model.training else "eval"
        for layer, weight in zip(self._attention_layers, layer_weights.detach()):
            self.logged_terms[mode][f"attention_layer_weight_{layer}"].append(weight)
        losses = torch.stack([attention_alignment_loss(student_map, teacher_map) for teacher_map in teacher_maps])
        return (layer_weights.to(losses.device) * losses).sum()

    @torch.no_grad()
    def attention_maps(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's attention (its supervised layers' maps, averaged with the layer weights) and the student's
        spatial map for a batch of student inputs, both `(batch, rows, columns)` on the teacher's grid."""
        if not self._attention_layers:
            raise ValueError("attention maps need attention distillation (attention_loss_weight > 0).")
        student = self.student
        was_training = student.training
        student.eval()
        pixel_values = pixel_values.to(self.args.device)
        student_outputs = student(
            pixel_values=pixel_values,
            **({"output_hidden_states": True} if self._student_map_from_features else {"output_attentions": True}),
        )
        student.train(was_training)
        teacher_outputs = self._teacher_outputs(pixel_values, hidden_states=False, attentions=True)
        teacher_maps, layer_weights = self._teacher_maps(teacher_outputs)
        teacher_map = sum(weight * layer_map for weight, layer_map in zip(layer_weights.tolist(), teacher_maps))
        student_map = resize_distribution(self._student_map(student_outputs, self.adapters), self._attention_grid)
        return teacher_map.cpu(), student_map.cpu()


class _BestCheckpointAdapters(TrainerCallback):
    """Loads the adapters of the best checkpoint once `load_best_model_at_end` has restored its student, so the two
    belong together again (evaluation, attention maps)."""

    def __init__(self, adapters: nn.Module):
        self.adapters = adapters

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        best = state.best_model_checkpoint
        if not (args.load_best_model_at_end and best):
            return
        if os.path.isfile(os.path.join(best, ADAPTERS_WEIGHTS_NAME)):
            load_adapters(self.adapters, best)
        else:  # as the Trainer does with a best checkpoint it cannot load: say so and go on
            logger.warning("%s has no %s: the adapters stay those of the last step.", best, ADAPTERS_WEIGHTS_NAME)


def _is_checkpoint_of(folder: str | os.PathLike, output_dir: str | os.PathLike) -> bool:
    """Whether `folder` is one of the run's `checkpoint-N` folders (where `Trainer._save_checkpoint` saves)."""
    folder = Path(folder)
    return bool(re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", folder.name)) and (
        folder.parent.resolve() == Path(output_dir).resolve()
    )


def unused_trainable_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters that require a gradient but got none from the last backward."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None]


def _syncs_gradients_without_unused_search(model: nn.Module) -> bool:
    """Whether `model` is DDP-wrapped without `find_unused_parameters` or a static graph, where an unused parameter
    is fatal."""
    return (
        isinstance(model, nn.parallel.DistributedDataParallel)
        and not model.find_unused_parameters
        and not getattr(model, "static_graph", False)
    )


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and next(module.parameters(), None) is not None


def _on_device_of(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """`tensor` on `module`'s device and in its floating dtype (unchanged for a parameter-free module)."""
    parameter = next(module.parameters(), None)
    if parameter is None:
        return tensor
    return tensor.to(device=parameter.device, dtype=parameter.dtype if parameter.is_floating_point() else None)


def _dtype_of(module: nn.Module, fallback: torch.Tensor) -> torch.dtype:
    """The dtype of a module's weights (bf16 under bf16_full_eval), or the input's for a parameter-free module."""
    parameter = next(module.parameters(), None)
    return parameter.dtype if parameter is not None else fallback.dtype


def _pick(sequence: tuple | list, index: int, what: str):
    if sequence is None:
        raise ValueError(f"the model returned no {what}s; it must support output_hidden_states / output_attentions.")
    if not -len(sequence) <= index < len(sequence):
        raise ValueError(
            f"{what} {index} does not exist: the model has {len(sequence)} (indices 0..{len(sequence) - 1})."
        )
    return sequence[index]


_FSDP_MESSAGE = (
    "FSDP is not supported with feature distillation or a learned attention projection: their adapters train with "
    "the student but run outside its forward, where FSDP has not gathered their sharded weights. Use DDP "
    "(accelerate launch / torchrun without FSDP), or student_attention='energy' with feature_loss_weight=0."
)


def _check_distillation_token_heads(model: nn.Module, args: DistillationConfig) -> None:
    """A student with DeiT's distillation token predicts with the mean of its two heads: each must learn, the [CLS]
    head from the labels and the distillation head from the teacher, or an untrained head enters every prediction
    (and DDP finds parameters without a gradient)."""
    if not getattr(getattr(model, "config", None), "distillation_token", False):
        return
    teaches = any(args.can_be_nonzero(name) for name in ("soft_loss_weight", "hard_loss_weight"))
    if not args.can_be_nonzero("label_loss_weight") or not teaches:
        raise ValueError(
            f"the student has a distillation token (DeiT): its [CLS] head learns from the labels and its distillation "
            f"head from the teacher, and it predicts with their mean; label_loss_weight={args.label_loss_weight}, "
            f"soft_loss_weight={args.soft_loss_weight}, hard_loss_weight={args.hard_loss_weight} leave one head "
            "untrained. Give the label term and a soft or hard term a weight, or build the student without the token."
        )


def _probe_batch(model: nn.Module, train_dataset, collator: Callable | None) -> torch.Tensor:
    """One input to size the adapters: the first training image as the collator (and its device step) makes it, so
    at the model's size and normalised whatever the dataset stores (the tensor pipeline stores uint8 at the source
    size); else zeros at the student's configured size."""
    if train_dataset is not None and len(train_dataset) > 0:
        if collator is not None:
            return on_device(collator, collator([train_dataset[0]]))["pixel_values"].float()
        return torch.as_tensor(train_dataset[0]["pixel_values"])[None].float()
    config = getattr(model, "config", None)
    image_size = getattr(config, "image_size", None)
    if image_size is None:
        raise ValueError(
            "cannot size the distillation adapters: pass train_dataset, or a student whose config has image_size."
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return torch.zeros(1, getattr(config, "num_channels", 3), height, width)


__all__ = ["DistillationTrainer"]
