"""`DistillationConfig`: `TrainingArguments` plus what a teacher-student run needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .schedules import Schedule

SOFT_LOSS_TYPES = ("kd", "dkd", "reverse_kl", "jsd")
TEACHER_ENSEMBLES = ("average", "per_teacher")

LOSS_WEIGHT_NAMES = (
    "label_loss_weight",
    "soft_loss_weight",
    "hard_loss_weight",
    "feature_loss_weight",
    "attention_loss_weight",
)


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    Arguments of [`DistillationTrainer`]: every `TrainingArguments` field, plus the teacher and the loss weights.

    The training loss is

        label_loss_weight * CE(student, labels)
        + soft_loss_weight * soft(student, teacher, T)
        + hard_loss_weight * CE(student, argmax teacher)
        + feature_loss_weight * mean over feature_layers of distance(adapter(student feature), teacher feature)
        + attention_loss_weight * sum over teacher layers l of w_l * MSE(student map, teacher [CLS] attention map l)

    with w_l = softmax(-entropy_l / layer_weighting_temperature) (or uniform), and each term logged on its own
    (`loss_label`, `loss_soft`, `loss_hard`, `loss_feature`, `loss_attention`), with the layer weights
    (`attention_layer_weight_<l>`) and any scheduled value.

    The soft term is chosen by `soft_loss_type`, each at temperature T and times T^2:

    - `"kd"` (default): KL(teacher || student), Hinton et al. (2015).
    - `"dkd"`: decoupled KD, dkd_alpha * TCKD + dkd_beta * NCKD (Zhao et al., 2022); also logs `loss_soft_tckd` and
      `loss_soft_nckd` (unweighted). Needs the labels (their argmax for mixed soft labels).
    - `"reverse_kl"`: KL(student || teacher).
    - `"jsd"`: the generalised Jensen-Shannon divergence of TRL's GKD with `jsd_beta` (0: forward KL, 1: reverse KL).

    `logit_standardization` z-scores teacher and student logits before any of them (Sun et al., 2024). Every
    evaluation with a teacher (live, or cached logits in the batches) also logs the student's top-1 agreement with the
    teacher (`eval_agreement`) and KL(teacher || student) at T = 1 on raw logits (`eval_teacher_student_kl`), over the
    whole evaluated split.

    Several teachers (`extra_teachers`, or a list given to the trainer) teach with `teacher_weights`: by default
    (`teacher_ensemble="average"`) the soft term distils the weighted average of their temperature-softened
    probabilities (`losses.teacher_ensemble_logits`), and the hard term and the agreement use that average at T = 1;
    `"per_teacher"` sums one soft term per teacher, weighted (each logged, `loss_soft_teacher_<i>`). With
    `logit_standardization` each teacher's logits are standardised before they are combined. Features and attention
    maps come from the first teacher.
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The teacher, when the trainer is not given a model: a local directory or Hub id that "
            "AutoModelForImageClassification loads (ours, transformers', timm/...). Its labels must be the student's."
        },
    )
    extra_teachers: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More teachers (local directories or Hub ids), whose soft labels join the first teacher's: logits "
            "only (features and attention maps come from teacher_model_name_or_path). Each gets its own view of the "
            "student's batch (its size and normalisation, from the student's image processor); all must predict the "
            "student's labels."
        },
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per teacher, the first teacher's first (default: equal); normalised to sum 1."},
    )
    teacher_ensemble: str = field(
        default="average",
        metadata={
            "help": "How several teachers teach: 'average' distils the weighted average of their temperature-softened "
            "probabilities; 'per_teacher' adds one weighted soft term per teacher."
        },
    )
    teacher_dtype: str = field(
        default="float32",
        metadata={
            "help": "The live teacher's weights: 'float32' (mixed precision runs it under the run's autocast, with "
            "norms, residual adds and BatchNorm in float32) or 'bfloat16' (half the teacher's memory, everything in "
            "bf16). A checkpoint stored in bf16 still loads as float32 unless this says otherwise."
        },
    )
    temperature: float = field(
        default=4.0, metadata={"help": "Softmax temperature T of the soft (KL) distillation loss."}
    )
    label_loss_weight: float = field(
        default=0.5, metadata={"help": "Weight of the cross-entropy against the dataset's labels."}
    )
    soft_loss_weight: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the soft distillation loss (soft_loss_type; by default KL(teacher || student) at "
            "T, times T^2)."
        },
    )
    soft_loss_type: str = field(
        default="kd",
        metadata={
            "help": "The soft loss: 'kd' (KL(teacher || student), Hinton), 'dkd' (decoupled KD: dkd_alpha * target-"
            "class + dkd_beta * non-target-class KL; needs labels), 'reverse_kl' (KL(student || teacher)) or 'jsd' "
            "(generalised Jensen-Shannon with jsd_beta, as TRL's GKD). Each at temperature T, times T^2."
        },
    )
    dkd_alpha: float = field(
        default=1.0,
        metadata={
            "help": "DKD's weight of the target-class term (TCKD), with soft_loss_type='dkd' (paper: 1.0). The "
            "paper's warm-up is a schedule: --schedules 'soft_loss_weight=0-20:0.0->1.0'."
        },
    )
    dkd_beta: float = field(
        default=8.0,
        metadata={
            "help": "DKD's weight of the non-target-class term (NCKD), with soft_loss_type='dkd' (paper: 8.0 on "
            "CIFAR-100 at temperature 4)."
        },
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "With soft_loss_type='jsd': the teacher's share of the mixture M = beta * teacher + (1 - beta) "
            "* student, in [0, 1]; 0 is forward KL, 1 reverse KL (TRL's GKD convention). Between them the loss is "
            "small (at most log 2 before T^2): raise soft_loss_weight."
        },
    )
    logit_standardization: bool = field(
        default=False,
        metadata={
            "help": "Z-score each teacher and student logit vector before the soft loss's temperature softmax "
            "(Sun et al., CVPR 2024), with any soft_loss_type. The paper's recipe uses temperature 2 with it."
        },
    )
    hard_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight of DeiT's hard distillation: cross-entropy on the teacher's argmax."}
    )
    feature_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the feature distillation loss (learned adapters where shapes differ)."},
    )
    feature_layers: list[str] = field(
        default_factory=lambda: ["-1:-1"],
        metadata={
            "help": "Pairs 'student:teacher' of hidden-state indices to align, e.g. '2:4 3:7' (negative counts "
            "from the end, written --feature_layers=-1:-1 on a command line; index 0 of a ViT is its embeddings)."
        },
    )
    feature_distance: str = field(default="mse", metadata={"help": "Feature distance: 'mse' or 'cosine'."})
    attention_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the alignment of the teacher ViT's [CLS] attention with the student's spatial map."
        },
    )
    attention_teacher_layers: list[int] | None = field(
        default=None, metadata={"help": "Teacher layers whose attention maps are supervised; all when not given."}
    )
    attention_student_layer: int = field(
        default=-1,
        metadata={"help": "Student layer giving its spatial map: a CNN stage (hidden-state index) or a ViT block."},
    )
    student_attention: str = field(
        default="learned",
        metadata={
            "help": "A CNN student's spatial map: 'learned' (a 1x1-conv attention projection onto the teacher's "
            "grid, trained with the student) or 'energy' (mean squared activation, parameter-free). ViT students use "
            "their own [CLS] attention."
        },
    )
    layer_weighting: str = field(
        default="entropy",
        metadata={"help": "Weights of the teacher layers: 'entropy' (focused layers count more) or 'uniform'."},
    )
    layer_weighting_temperature: float = field(
        default=0.1,
        metadata={"help": "Softmax temperature over negative normalised entropies (entropy / log(cells))."},
    )
    schedules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Values that change over training, as name=schedule, e.g. "
            "'temperature=0-20:3.0->2.0,20-50:1.5->1.0' 'soft_loss_weight=linear:0.3->0.7'. Names: temperature and "
            "the *_loss_weight fields. Schedules: a number, linear:a->b, cosine:a->b, or epoch ranges."
        },
    )
    offline_teacher: bool = field(
        default=False,
        metadata={
            "help": "Batches carry precomputed 'teacher_logits' (distillation.teacher_cache): the logit losses read "
            "them instead of running a teacher (examples/distill.py: of each image, or with --offline_teacher_views "
            "of K augmented views). Feature and attention losses need a live teacher."
        },
    )
    # Adapters run outside the student's forward: DDP's unused-parameter search would reject them, and every
    # parameter takes part in every step anyway (scheduled terms are computed even at weight 0).
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP's search for unused parameters (off: the adapters need it off)."}
    )
    # The recipes' datasets keep the image column, which the model's forward does not take.
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep dataset columns the model does not take (the lazy image transform needs them)."},
    )

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive (typical values: 1 to 4).")
        weights = {name: getattr(self, name) for name in LOSS_WEIGHT_NAMES}
        negative = {name: weight for name, weight in weights.items() if weight < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}.")
        self.parsed_schedules = self._parse_schedules()
        scheduled_weights = {name for name in self.parsed_schedules if name in LOSS_WEIGHT_NAMES}
        if not any(weights.values()) and not scheduled_weights:
            raise ValueError(f"every loss weight is 0 ({weights}); give at least one a positive weight.")
        self._check_soft_loss()
        if self.feature_distance not in ("mse", "cosine"):
            raise ValueError(f"feature_distance={self.feature_distance!r}; use 'mse' or 'cosine'.")
        if self.layer_weighting not in ("entropy", "uniform"):
            raise ValueError(f"layer_weighting={self.layer_weighting!r}; use 'entropy' or 'uniform'.")
        if self.student_attention not in ("learned", "energy"):
            raise ValueError(f"student_attention={self.student_attention!r}; use 'learned' or 'energy'.")
        if self.teacher_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"teacher_dtype={self.teacher_dtype!r}; use 'float32' (with --fp16 or --bf16 it runs under autocast) "
                "or 'bfloat16'. float16 weights run norms and residual adds in pure fp16, which overflows in large "
                "teachers."
            )
        if self.layer_weighting_temperature <= 0:
            raise ValueError(f"layer_weighting_temperature={self.layer_weighting_temperature} must be positive.")
        self.feature_layer_pairs = [self._parse_pair(pair) for pair in self.feature_layers]
        self._check_teachers()
        if self.offline_teacher and (
            self.can_be_nonzero("feature_loss_weight") or self.can_be_nonzero("attention_loss_weight")
        ):
            raise ValueError(
                "offline_teacher caches logits only; feature and attention distillation need the teacher's "
                "activations. Set feature_loss_weight and attention_loss_weight to 0, or use a live teacher."
            )
        super().__post_init__()

    def _check_teachers(self) -> None:
        if self.teacher_ensemble not in TEACHER_ENSEMBLES:
            raise ValueError(
                f"teacher_ensemble={self.teacher_ensemble!r}: use 'average' (the teachers' averaged probabilities) or "
                "'per_teacher' (one soft term per teacher)."
            )
        weights = self.teacher_weights
        if weights is not None and (any(weight < 0 for weight in weights) or sum(weights) <= 0):
            raise ValueError(f"teacher_weights={weights}: pass non-negative weights, not all 0, one per teacher.")
        if weights is not None and self.extra_teachers and len(weights) != 1 + len(self.extra_teachers):
            raise ValueError(
                f"teacher_weights has {len(weights)} weights for {1 + len(self.extra_teachers)} teachers "
                "(teacher_model_name_or_path and extra_teachers): pass one per teacher, the first teacher's first."
            )
        if weights is not None and self.offline_teacher:
            raise ValueError("teacher_weights weigh several live teachers; offline_teacher caches one. Leave it out.")
        if self.offline_teacher and self.extra_teachers:
            raise ValueError(
                f"offline_teacher caches one teacher's logits, and extra_teachers={self.extra_teachers} asks for "
                "more; distill several teachers live, or leave extra_teachers out."
            )

    def _check_soft_loss(self) -> None:
        if self.soft_loss_type not in SOFT_LOSS_TYPES:
            raise ValueError(
                f"soft_loss_type={self.soft_loss_type!r} is not one of {list(SOFT_LOSS_TYPES)}: use 'kd' (classic), "
                "'dkd' (decoupled KD), 'reverse_kl' or 'jsd' (generalised Jensen-Shannon, with jsd_beta)."
            )
        if self.dkd_alpha < 0 or self.dkd_beta < 0:
            raise ValueError(
                f"dkd_alpha={self.dkd_alpha} and dkd_beta={self.dkd_beta} must be >= 0 (the paper's: 1.0 and 8.0)."
            )
        if self.soft_loss_type == "dkd" and self.dkd_alpha == 0 and self.dkd_beta == 0:
            raise ValueError("dkd_alpha and dkd_beta are both 0, so the DKD term is 0; give one a positive weight.")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(
                f"jsd_beta={self.jsd_beta} must be in [0, 1]: 0 is forward KL, 1 reverse KL, 0.5 the symmetric "
                "Jensen-Shannon divergence."
            )
        # Flags that would do nothing are refused: a --dkd_beta without --soft_loss_type dkd is a forgotten flag.
        ignored = []
        if self.soft_loss_type != "dkd" and (self.dkd_alpha != 1.0 or self.dkd_beta != 8.0):
            ignored.append(f"dkd_alpha={self.dkd_alpha}, dkd_beta={self.dkd_beta} (used with soft_loss_type='dkd')")
        if self.soft_loss_type != "jsd" and self.jsd_beta != 0.5:
            ignored.append(f"jsd_beta={self.jsd_beta} (used with soft_loss_type='jsd')")
        if ignored:
            raise ValueError(
                f"soft_loss_type={self.soft_loss_type!r} ignores {'; '.join(ignored)}: set soft_loss_type to the loss "
                "they belong to, or drop them."
            )
        if (self.soft_loss_type != "kd" or self.logit_standardization) and not self.can_be_nonzero("soft_loss_weight"):
            raise ValueError(
                f"soft_loss_type={self.soft_loss_type!r} with logit_standardization={self.logit_standardization} "
                "has no effect: soft_loss_weight is 0 and not scheduled. Give soft_loss_weight a positive value, or "
                "drop these flags."
            )

    def _parse_schedules(self) -> dict[str, Schedule]:
        schedules = {}
        for entry in self.schedules:
            name, separator, spec = entry.partition("=")
            if not separator or name not in ("temperature", *LOSS_WEIGHT_NAMES):
                raise ValueError(
                    f"schedule {entry!r} must read name=schedule with name one of "
                    f"{['temperature', *LOSS_WEIGHT_NAMES]}, e.g. 'temperature=linear:4.0->1.0'."
                )
            schedule = Schedule.parse(spec)
            lowest = schedule.lowest()
            if lowest < 0 or (name == "temperature" and lowest <= 0):
                bound = "above 0" if name == "temperature" else "at or above 0"
                raise ValueError(f"schedule {entry!r} reaches {lowest}; {name} must stay {bound}.")
            schedules[name] = schedule
        return schedules

    @staticmethod
    def _parse_pair(pair: str) -> tuple[int, int]:
        student, separator, teacher = pair.partition(":")
        try:
            return int(student), int(teacher)
        except ValueError:
            raise ValueError(
                f"feature_layers entry {pair!r} must be 'student_index:teacher_index', e.g. '-1:-1' or '2:6'."
            ) from None

    def can_be_nonzero(self, name: str) -> bool:
        """Whether the loss term `name` (a *_loss_weight field) can be non-zero at some point of training."""
        return getattr(self, name) > 0 or name in self.parsed_schedules

    @property
    def needs_teacher(self) -> bool:
        """Whether any loss term needs a live teacher model."""
        if self.offline_teacher:
            return False
        return any(self.can_be_nonzero(name) for name in LOSS_WEIGHT_NAMES if name != "label_loss_weight")


__all__ = ["LOSS_WEIGHT_NAMES", "SOFT_LOSS_TYPES", "TEACHER_ENSEMBLES", "DistillationConfig"]
