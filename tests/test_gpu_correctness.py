"""What breaks on accelerators but not on one CPU, checked on the CPU: devices and dtypes of what the trainer builds,
the teacher's precision and memory, deterministic kernels, and multi-process guards (issue 11, section 1)."""

import math
import types

import pytest
import torch
import torch.nn.functional as F
from test_distillation_trainer import (
    LABELS,
    config,
    deeper_teacher_vit,
    rows,
    stack,
    student_vit,
    teacher_vit,
    tiny_cnn_student,
)
from transformers.modeling_outputs import ImageClassifierOutput

import hf_vision_distill.distillation.teacher
import hf_vision_distill.losses
import hf_vision_distill.training
from hf_vision_distill.distillation import (
    DistillationTrainer,
    Teacher,
    TeacherInputTransform,
    adapters,
    distillation_trainer,
)
from hf_vision_distill.distillation.adapters import AttentionProjection, FeatureAdapter, resize_feature_map
from hf_vision_distill.models import InputSpecification
from hf_vision_distill.training import classification_loss

# ---- 1. every tensor on the device (and in the dtype) of the module that consumes it ----


@pytest.mark.slow
def test_the_probe_reaches_each_model_in_its_own_dtype(tmp_path):
    """A teacher in float64 (standing for a teacher already on an accelerator) gets the probe in float64."""
    teacher = deeper_teacher_vit().double()
    seen = []

    def check_input(module, args, kwargs):
        parameter = next(module.parameters())
        pixel_values = kwargs["pixel_values"]
        seen.append(pixel_values.dtype)
        assert (pixel_values.device, pixel_values.dtype) == (parameter.device, parameter.dtype)

    teacher.register_forward_pre_hook(check_input, with_kwargs=True)
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=teacher, train_dataset=rows(),
                                  args=config(tmp_path, feature_loss_weight=0.5, attention_loss_weight=0.5),
                                  data_collator=stack)  # fmt: skip
    assert seen == [torch.float64]  # the probe
    trainer.train()  # placed in float32 for training, and fed float32
    assert set(seen[1:]) == {torch.float32} and len(seen) > 1


def test_the_probe_follows_a_teacher_on_another_device(tmp_path):
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(), train_dataset=rows(),
                                  args=config(tmp_path, feature_loss_weight=0.5), data_collator=stack)  # fmt: skip
    meta_teacher = deeper_teacher_vit().to("meta")
    built = trainer._build_adapters(tiny_cnn_student(), Teacher(meta_teacher), trainer.args, torch.randn(1, 3, 16, 16))
    assert built["feature_0"].projection.out_channels == 16 and built["feature_0"].teacher_size == (4, 4)


def test_teacher_view_builds_its_constants_once_per_device(monkeypatch):
    view = TeacherInputTransform(InputSpecification(16, (0.5,) * 3, (0.25,) * 3),
                                 InputSpecification(32, (0.4,) * 3, (0.2,) * 3))  # fmt: skip
    batch = torch.randn(2, 3, 16, 16)
    first = view(batch)
    assert view(torch.zeros(1, 3, 16, 16, device="meta")).device.type == "meta"  # columns of its own for meta

    def no_new_tensor(*args, **kwargs):
        raise AssertionError("TeacherInputTransform built a tensor in a step")

    monkeypatch.setattr(torch, "tensor", no_new_tensor)
    second = view(batch)
    monkeypatch.undo()
    torch.testing.assert_close(second, first)


# ---- 2. the teacher's precision ----


@pytest.mark.slow
def test_teacher_keeps_float32_weights_and_runs_under_the_autocast(tmp_path):
    teacher = teacher_vit().to(torch.bfloat16)  # e.g. a checkpoint stored in bf16
    autocast_seen = []
    teacher.classifier.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher, train_dataset=rows(),
                                  args=config(tmp_path, bf16=True), data_collator=stack)  # fmt: skip
    assert {parameter.dtype for parameter in trainer.teacher.model.parameters()} == {torch.float32}
    trainer.train()
    assert autocast_seen and all(autocast_seen)
    # bf16 weights only when asked for; float16 weights never.
    asked = DistillationTrainer(model=student_vit(), teacher=teacher_vit(), data_collator=stack,
                                args=config(tmp_path, bf16=True, teacher_dtype="bfloat16"))  # fmt: skip
    assert {parameter.dtype for parameter in asked.teacher.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="teacher_dtype='float16'.*'float32'"):
        config(tmp_path, teacher_dtype="float16")


@pytest.mark.slow
def test_non_finite_teacher_logits_stop_the_run_at_the_log_step(tmp_path):
    teacher = teacher_vit()
    with torch.no_grad():
        teacher.classifier.bias[0] = math.inf
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher, train_dataset=rows(16),
                                  args=config(tmp_path, bf16=True, max_steps=4, logging_steps=2),
                                  data_collator=stack)  # fmt: skip
    with pytest.raises(ValueError, match=r"teacher \(VisionTransformerForImageClassification\).*non-finite.*float32"):
        trainer.train()
    assert len(calls) == 2  # checked at the first log step, not at every step


def test_the_teacher_is_evaluated_as_the_distillation_runs_it(tmp_path):
    teacher = teacher_vit()
    autocast_seen = []
    teacher.classifier.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    args = config(tmp_path, bf16=True, bf16_full_eval=True, per_device_eval_batch_size=3)
    trainer = DistillationTrainer(model=student_vit(), teacher=teacher, data_collator=stack, args=args)
    metrics = trainer.evaluate_forward(trainer.teacher, rows(8), metric_key_prefix="test")
    # float32 weights under autocast, as in training: not cast for full bf16 evaluation, forward not wrapped.
    assert autocast_seen == [True] * 3
    assert {parameter.dtype for parameter in teacher.parameters()} == {torch.float32}
    assert not hasattr(teacher, "_original_forward")
    batch = stack(rows(8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher(pixel_values=batch["pixel_values"]).logits.float()
    assert metrics["test_loss"] == pytest.approx(classification_loss(logits, batch["labels"]).item(), rel=1e-5)


# ---- 3. memory: only what the losses use leaves the teacher in float32 ----


def test_only_the_used_teacher_outputs_are_converted_and_kept(tmp_path, monkeypatch):
    args = config(tmp_path, feature_loss_weight=0.5, feature_layers=["-1:2"], attention_loss_weight=0.5,
                  attention_teacher_layers=[1])  # fmt: skip
    teacher = deeper_teacher_vit()  # 3 layers: 4 hidden states, 3 attention maps (2 heads, 17 tokens)
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=teacher, train_dataset=rows(),
                                  args=args, data_collator=stack)  # fmt: skip

    def as_half_precision(module, inputs, outputs):  # what a teacher under fp16/bf16 autocast returns
        return ImageClassifierOutput(
            logits=outputs.logits.bfloat16(),
            hidden_states=tuple(state.bfloat16() for state in outputs.hidden_states),
            attentions=tuple(attention.bfloat16() for attention in outputs.attentions),
        )

    teacher.register_forward_hook(as_half_precision)
    converted = []
    convert_to_fp32 = hf_vision_distill.distillation.teacher.convert_to_fp32

    def counting_convert(data):
        converted.extend(tensor.numel() for tensor in tensors_in(data))
        return convert_to_fp32(data)

    monkeypatch.setattr(hf_vision_distill.distillation.teacher, "convert_to_fp32", counting_convert)
    outputs = trainer._teacher_outputs(stack(rows(4))["pixel_values"], hidden_states=True, attentions=True)

    kept = tensors_in(outputs)
    assert {tensor.dtype for tensor in kept} == {torch.float32}
    assert outputs.logits.shape == (4, 3)
    assert list(outputs.hidden_states) == [2] and outputs.hidden_states[2].shape == (4, 17, 16)
    assert len(outputs.attention_maps) == 1 and outputs.attention_maps[0].shape == (4, 4, 4)  # [CLS] row, layer 1
    assert sum(converted) == sum(tensor.numel() for tensor in kept) == 4 * 3 + 4 * 17 * 16 + 4 * 4 * 4
    loss = trainer.compute_loss(trainer.model, {name: value for name, value in stack(rows(4)).items()})
    assert torch.isfinite(loss)


def tensors_in(data) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, dict):
        data = list(data.values())
    elif hasattr(data, "__dataclass_fields__"):
        data = [getattr(data, name) for name in data.__dataclass_fields__]
    if isinstance(data, (list, tuple)):
        return [tensor for item in data for tensor in tensors_in(item)]
    return []


# ---- 4. --full_determinism: the adapters' resize uses deterministic kernels ----


class ForbiddingFunctional(types.ModuleType):
    """torch.nn.functional without the kernels whose CUDA backward torch refuses in deterministic mode."""

    FORBIDDEN = ("adaptive_avg_pool2d", "interpolate")

    def __getattr__(self, name):
        if name in self.FORBIDDEN:
            raise AssertionError(f"F.{name} has a non-deterministic CUDA backward")
        return getattr(F, name)


@pytest.mark.parametrize(
    ("source", "target"), [((8, 8), (4, 4)), ((7, 5), (3, 2)), ((4, 4), (7, 9)), ((6, 6), (4, 8)), ((5, 5), (1, 1))]
)
def test_resize_equals_the_torch_kernels_without_calling_them(source, target, monkeypatch):
    torch.manual_seed(0)
    feature_map = torch.randn(2, 3, *source, requires_grad=True)
    shrinking = source[0] >= target[0] and source[1] >= target[1]
    expected = (
        F.adaptive_avg_pool2d(feature_map, target)
        if shrinking
        else F.interpolate(feature_map, size=target, mode="bilinear", align_corners=False)
    )
    (expected_gradient,) = torch.autograd.grad((expected * torch.arange(expected.numel()).view_as(expected)).sum(),
                                               feature_map)  # fmt: skip
    monkeypatch.setattr(adapters, "F", ForbiddingFunctional("F"))
    resized = resize_feature_map(feature_map, target)
    (gradient,) = torch.autograd.grad((resized * torch.arange(resized.numel()).view_as(resized)).sum(), feature_map)
    torch.testing.assert_close(resized, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gradient, expected_gradient, atol=1e-4, rtol=1e-5)
    assert FeatureAdapter(3, 5, target)(feature_map).shape == (2, 5, *target)
    assert AttentionProjection(3, target)(feature_map).shape == (2, *target)


@pytest.mark.slow
def test_attention_distillation_trains_without_non_deterministic_kernels(tmp_path, monkeypatch):
    """A CNN student's energy map on a grid finer than the teacher's is resized with gradient: not through
    losses.resize_distribution's adaptive pooling."""
    args = config(tmp_path, attention_loss_weight=1.0, student_attention="energy", attention_student_layer=1,
                  feature_loss_weight=0.5, feature_layers=["1:-1"])  # fmt: skip
    trainer = DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(), train_dataset=rows(),
                                  args=args, data_collator=stack)  # fmt: skip
    monkeypatch.setattr(adapters, "F", ForbiddingFunctional("F"))
    monkeypatch.setattr(hf_vision_distill.losses, "F", ForbiddingFunctional("F"))
    torch.use_deterministic_algorithms(True)
    try:
        result = trainer.train()
    finally:
        torch.use_deterministic_algorithms(False)
    assert math.isfinite(result.training_loss)


# ---- 5. several processes ----


def test_fsdp_is_refused_when_adapters_train(tmp_path):
    with pytest.raises(ValueError, match="FSDP is not supported with feature distillation"):
        DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(), train_dataset=rows(),
                            args=config(tmp_path, feature_loss_weight=0.5, fsdp="full_shard"),
                            data_collator=stack)  # fmt: skip


@pytest.mark.slow
def test_unused_student_parameters_are_named_before_any_update(tmp_path, monkeypatch):
    """Under DDP without its unused-parameter search (the recipes' setting), checked on the first step's gradients."""
    monkeypatch.setattr(
        distillation_trainer, "_syncs_gradients_without_unused_search", lambda model: True, raising=False
    )
    student = tiny_cnn_student()
    student.unused_head = torch.nn.Linear(8, len(LABELS))  # never called by the forward
    trainer = DistillationTrainer(model=student, teacher=deeper_teacher_vit(), train_dataset=rows(),
                                  args=config(tmp_path, attention_loss_weight=0.5, feature_loss_weight=0.5),
                                  data_collator=stack)  # fmt: skip
    before = {name: value.detach().clone() for name, value in student.named_parameters()}
    with pytest.raises(ValueError, match=r"unused_head\.weight, unused_head\.bias.*--ddp_find_unused_parameters true"):
        trainer.train()
    for name, value in student.named_parameters():  # no update happened
        torch.testing.assert_close(value, before[name], msg=name)
    # Every parameter of a student and its adapters gets a gradient: no false alarm.
    DistillationTrainer(model=tiny_cnn_student(), teacher=deeper_teacher_vit(), train_dataset=rows(),
                        args=config(tmp_path, attention_loss_weight=0.5, feature_loss_weight=0.5),
                        data_collator=stack).train()  # fmt: skip


def test_the_unused_parameter_check_recognises_ddp_without_the_search(tmp_path):
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        module = torch.nn.Linear(2, 2)
        without_search = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=False)
        with_search = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), find_unused_parameters=True)
        assert distillation_trainer._syncs_gradients_without_unused_search(without_search)
        assert not distillation_trainer._syncs_gradients_without_unused_search(with_search)
        assert not distillation_trainer._syncs_gradients_without_unused_search(module)
    finally:
        torch.distributed.destroy_process_group()
