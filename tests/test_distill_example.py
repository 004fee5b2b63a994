"""examples/distill.py end to end: a tiny ViT teacher into a tiny CNN student, with the baseline and every artifact."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import load_example, run_two_processes
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import pipeline

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification
from hf_vision_distill.data import (
    ImageClassificationCollator,
    load_image_classification_dataset,
    with_image_transform,
)
from hf_vision_distill.distillation import teacher as teacher_module
from hf_vision_distill.models import InputSpecification, load_image_classifier
from hf_vision_distill.recipes import Recipe, parse_arguments

REPO = Path(__file__).resolve().parents[1]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_recipe():
    return load_example("distill")


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    id2label = dict(enumerate(CIFAR_NAMES))
    config = VisionTransformerConfig(image_size=48, patch_size=12, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, id2label=id2label,
                                     label2id={name: index for index, name in id2label.items()})  # fmt: skip
    VisionTransformerForImageClassification(config).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


@torch.no_grad()
def accuracy_on_test_split(loaded, data) -> float:
    """One process evaluating a loaded classifier on `data`'s test split through its own eval transform."""
    transform = loaded.input_specification.eval_transform()
    test = with_image_transform(data.dataset["test"], transform)
    model = loaded.model.eval()
    batches = DataLoader(test, batch_size=100, collate_fn=ImageClassificationCollator())
    correct = sum(
        (model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum().item() for batch in batches
    )
    return correct / len(test)


@pytest.mark.slow
def test_distill_recipe_with_baseline(tmp_path, teacher_dir):
    output_dir = tmp_path / "distill"
    summary = load_recipe().main([
        "--teacher_model_name_or_path", str(teacher_dir), "--output_dir", str(output_dir),
        "--config_overrides", json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]}),
        "--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "16", "--dataloader_num_workers", "0", "--report_to", "none",
        "--logging_steps", "1", "--feature_loss_weight", "0.5", "--baseline",
    ])  # fmt: skip
    names = [row["model"] for row in summary["models"]]
    assert len(names) == 3 and names[0].startswith("teacher") and "baseline" in names[2]
    assert all("test_accuracy" in row and "test_f1_macro" in row for row in summary["models"])
    teacher_row, distilled_row, baseline_row = summary["models"]
    assert teacher_row["parameters"] > distilled_row["parameters"] == baseline_row["parameters"]
    for name in ("summary.md", "summary.json", "loss_components.png", "layer_weights.png", "attention_overlays.png"):
        assert (output_dir / name).is_file(), name
    assert "| distilled student (compact-cnn) |" in (output_dir / "summary.md").read_text()
    # The gain over the baseline, image by image on the 32 test images, with its interval.
    gain = summary["gain_over_baseline"]
    assert gain["images"] == 32 and gain["low"] <= gain["gain"] <= gain["high"]
    assert gain["gain"] == pytest.approx(distilled_row["test_accuracy"] - baseline_row["test_accuracy"])
    assert gain["gain"] == pytest.approx((gain["only_model_right"] - gain["only_reference_right"]) / 32)
    assert "paired bootstrap interval" in (output_dir / "summary.md").read_text()
    # The sample's validation images come from its training split, which the teacher may have trained on.
    assert "its validation figures overstate it (its test figures do not)" in (output_dir / "summary.md").read_text()
    # Both students' accuracy at the last epoch beside the kept (best-validation) checkpoint's.
    assert all(0 <= row["last_epoch_test_accuracy"] <= 1 for row in (distilled_row, baseline_row))
    assert "test accuracy, last epoch" in (output_dir / "summary.md").read_text()
    card = ModelCard.load(output_dir / "README.md")
    assert {"knowledge-distillation", "image-classification"} <= set(card.data.tags)
    test_results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert test_results == {"accuracy": round(distilled_row["test_accuracy"], 4),
                            "f1": round(distilled_row["test_f1_macro"], 4)}  # fmt: skip
    assert f"Distilled from `{teacher_dir}`" in card.text and "| attention_loss_weight | 0.1 |" in card.text
    assert "--feature_loss_weight 0.5 --baseline" in card.text  # the command that ran

    # The exported student has neither teacher nor adapter weights, and serves through a pipeline.
    exported = load_file(str(output_dir / "model.safetensors"))
    assert not any(key.startswith(("student.", "adapters.", "teacher")) for key in exported)
    predictions = pipeline("image-classification", model=str(output_dir))(Image.new("RGB", (32, 32)), top_k=10)
    assert sorted(p["label"] for p in predictions) == sorted(CIFAR_NAMES)
    # The teacher saw its own 48-pixel view of the 32-pixel student batches.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any("loss_attention" in entry and "loss_feature" in entry for entry in history)


def test_distill_recipe_needs_a_teacher(tmp_path):
    with pytest.raises(ValueError, match="--teacher_model_name_or_path"):
        load_recipe().main(["--teacher_model_name_or_path", "", "--output_dir", str(tmp_path), "--report_to", "none"])


TINY_STUDENT = json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]})


def test_offline_teacher_turns_off_the_recipes_attention_default(tmp_path):
    """A cached teacher gives logits only: the recipe's own attention and feature weights are off for it, on the
    command line and in a YAML file, while a weight the user asks for is still refused with the fix."""
    recipe = load_recipe()
    argv = ["--offline_teacher", "--output_dir", str(tmp_path)]
    defaults, turned_off = recipe.recipe_defaults(argv)
    assert turned_off == ["attention_loss_weight", "feature_loss_weight"]
    *_, args = parse_arguments(recipe.ARGUMENTS, defaults, argv)
    assert args.offline_teacher and args.attention_loss_weight == 0.0 and args.feature_loss_weight == 0.0
    config = tmp_path / "run.yaml"
    config.write_text(f"offline_teacher: true\noutput_dir: {tmp_path}\n")
    *_, args = parse_arguments(recipe.ARGUMENTS, recipe.recipe_defaults([str(config)])[0], [str(config)])
    assert args.offline_teacher and args.attention_loss_weight == 0.0 and args.feature_loss_weight == 0.0
    # A live teacher keeps the recipe's default; a weight the user gives an offline teacher is refused.
    assert recipe.recipe_defaults(["--offline_teacher", "false"]) == (recipe.DEFAULTS, [])
    with pytest.raises(ValueError, match="Set feature_loss_weight and attention_loss_weight to 0"):
        recipe.main([*argv, "--attention_loss_weight", "0.1", "--report_to", "none"])


@pytest.mark.slow
def test_offline_teacher_recipe(tmp_path, teacher_dir):
    arguments = [
        "--teacher_model_name_or_path", str(teacher_dir), "--output_dir", str(tmp_path / "offline"),
        "--config_overrides", TINY_STUDENT, "--max_train_samples", "48", "--max_eval_samples", "16",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--dataloader_num_workers", "0",
        "--report_to", "none", "--offline_teacher", "--logging_steps", "1",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"--offline_teacher needs the same image.*'--crop', '--horizontal_flip'"):
        load_recipe().main(arguments)
    summary = load_recipe().main(arguments + ["--crop", "none", "--horizontal_flip", "false"])
    assert "test_accuracy" in summary["models"][1]
    for split in ("train", "validation", "test"):
        cache = datasets.load_from_disk(str(tmp_path / "offline" / "_teacher_cache" / split))
        assert cache.column_names == ["row_index", "teacher_logits"] and len(cache[0]["teacher_logits"]) == 10
    history = json.loads((tmp_path / "offline" / "trainer_state.json").read_text())["log_history"]
    assert any("loss_soft" in entry for entry in history)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path, teacher_dir):
    """2 processes x 8 images (torchrun, gloo) against 1 process x 16: the same global batches (Accelerate shards one
    seeded order), so the same losses step by step and the same test metrics. A ViT student (LayerNorm, no batch
    statistics), no dropout and deterministic views keep the two runs comparable; what remains is float reduction
    order and the entropy layer weights, computed from each process's own half batch (observed: 1e-7 relative)."""
    student = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 32, "drop_path_rate": 0.0}  # fmt: skip

    def arguments(output_dir, batch_size):
        return [
            "--teacher_model_name_or_path", str(teacher_dir), "--output_dir", str(output_dir),
            "--model_name_or_path", "vit-cifar", "--config_overrides", json.dumps(student),
            "--max_train_samples", "64", "--max_eval_samples", "30", "--max_steps", "3",
            "--per_device_train_batch_size", str(batch_size), "--dataloader_num_workers", "0",
            "--crop", "none", "--horizontal_flip", "false", "--report_to", "none", "--use_cpu", "true",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--logging_steps", "1",
            "--num_overlay_images", "0", "--soft_loss_weight", "0.3", "--attention_loss_weight", "0.7",
            "--temperature", "4", "--feature_loss_weight", "0",
        ]  # fmt: skip

    run_two_processes("distill.py", arguments(tmp_path / "ddp", 8), tmp_path / "ddp", cwd=tmp_path)
    single = load_recipe().main(arguments(tmp_path / "single", 16))

    def training_logs(output_dir):
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        return [entry for entry in history if "loss" in entry]

    distributed_logs, single_logs = training_logs(tmp_path / "ddp"), training_logs(tmp_path / "single")
    assert [entry["step"] for entry in distributed_logs] == [entry["step"] for entry in single_logs] == [1, 2, 3]
    for distributed, one in zip(distributed_logs, single_logs):
        for key in ("loss", "loss_label", "loss_soft", "loss_attention"):
            assert distributed[key] == pytest.approx(one[key], rel=1e-5), (distributed["step"], key)
    distributed_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    for key in ("test_accuracy", "eval_accuracy"):
        assert distributed_summary["models"][1][key] == single["models"][1][key], key
    # Losses only nearly: sharded evaluation repeats examples to give every process a full last batch.
    assert distributed_summary["models"][1]["test_loss"] == pytest.approx(single["models"][1]["test_loss"], rel=2e-3)

    # The distributed evaluation (sharded, gathered) also equals one process evaluating the exported student.
    data = load_image_classification_dataset(str(REPO / "data" / "cifar10-sample"), max_eval_samples=30)
    loaded = load_image_classifier(str(tmp_path / "ddp"), id2label=data.id2label)
    assert distributed_summary["models"][1]["test_accuracy"] == pytest.approx(accuracy_on_test_split(loaded, data))


@pytest.mark.slow
def test_shipped_teacher_classifies_the_shipped_sample():
    """The recipe's default teacher (pretrained/cnn-cifar10-teacher, bf16 on disk) loads in float32 with the sample's
    labels and classifies the sample's test images far above chance (its card reports the measured accuracy)."""
    recipe = load_recipe()
    data = load_image_classification_dataset(recipe.SHIPPED_SAMPLE, max_eval_samples=200)
    teacher = load_image_classifier(recipe.SHIPPED_TEACHER, id2label=None)
    assert teacher.model.config.id2label == data.id2label
    assert {parameter.dtype for parameter in teacher.model.parameters()} == {torch.float32}
    # chance: 0.1; measured 0.912 on the sample's 1,000 test images (its card: 0.907 on CIFAR-10's 10,000)
    assert accuracy_on_test_split(teacher, data) > 0.85


@pytest.mark.slow
def test_a_cnn_teacher_turns_the_default_attention_term_off(tmp_path, caplog):
    torch.manual_seed(0)
    id2label = dict(enumerate(CIFAR_NAMES))
    teacher = load_image_classifier("compact-cnn", id2label=id2label, config_overrides=json.loads(TINY_STUDENT))
    teacher.model.save_pretrained(tmp_path / "cnn-teacher")
    arguments = [
        "--teacher_model_name_or_path", str(tmp_path / "cnn-teacher"), "--output_dir", str(tmp_path / "run"),
        "--config_overrides", TINY_STUDENT, "--max_train_samples", "32", "--max_eval_samples", "16",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--report_to", "none",
    ]  # fmt: skip
    caplog.set_level("INFO")
    summary = load_recipe().main(arguments)
    assert "gives no attention maps: attention distillation is off" in caplog.text
    assert summary["settings"]["attention_loss_weight"] == 0.0 and "test_accuracy" in summary["models"][1]
    # Asked for explicitly, the mismatch stops the run before the teacher is evaluated or anything trains.
    with pytest.raises(ValueError, match="--attention_loss_weight 0, or a ViT teacher"):
        load_recipe().main([*arguments, "--attention_loss_weight", "0.2", "--output_dir", str(tmp_path / "asked")])
    assert not (tmp_path / "asked").exists()


@pytest.mark.slow
def test_two_teachers_each_evaluated_and_distilled_together(tmp_path):
    """--extra_teachers: a CNN teacher at another input (48 pixels, its own statistics) beside the shipped ViT (the
    ViT -> CNN recipe, its attention term from the first teacher); each gets its row in the summary, and the student
    learns from their average."""
    torch.manual_seed(0)
    id2label = dict(enumerate(CIFAR_NAMES))
    cnn = load_image_classifier("compact-cnn", id2label=id2label, image_size=48,
                                config_overrides=json.loads(TINY_STUDENT))  # fmt: skip
    cnn.model.save_pretrained(tmp_path / "cnn-teacher")
    InputSpecification(48, (0.5,) * 3, (0.5,) * 3).image_processor().save_pretrained(tmp_path / "cnn-teacher")
    summary = load_recipe().main([
        "--teacher_model_name_or_path", str(REPO / "pretrained" / "vit-cifar-teacher"), "--temperature", "4",
        "--feature_loss_weight", "0", "--extra_teachers", str(tmp_path / "cnn-teacher"), "--teacher_weights", "3", "1",
        "--output_dir", str(tmp_path / "run"), "--config_overrides", TINY_STUDENT, "--max_train_samples", "32",
        "--max_eval_samples", "16", "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
        "--report_to", "none",
    ])  # fmt: skip
    names = [row["model"] for row in summary["models"]]
    assert names[0].startswith("teacher (") and names[1] == f"teacher ({tmp_path / 'cnn-teacher'})"
    assert names[2].startswith("distilled student") and "test_agreement" in summary["models"][2]
    assert summary["settings"]["teacher_weights"] == [3.0, 1.0]
    assert summary["settings"]["attention_loss_weight"] == 0.1  # the recipe's default, kept for the ViT teacher
    card = (tmp_path / "run" / "README.md").read_text()
    assert str(tmp_path / "cnn-teacher") in card


def test_teacher_and_student_have_their_own_remote_code_flags(tmp_path, monkeypatch):
    """--trust_remote_code is the student's; the teacher's code is trusted only with --teacher_trust_remote_code, at
    --teacher_revision (--extra_teacher_revisions for the others)."""
    recipe = load_recipe()
    calls = {}
    real = teacher_module.load_image_classifier

    def recording(name, **kwargs):
        calls[name] = {key: kwargs.get(key) for key in ("trust_remote_code", "revision")}
        return real(name, **kwargs)

    monkeypatch.setattr(teacher_module, "load_image_classifier", recording)  # how Teacher.from_pretrained loads
    monkeypatch.setattr(Recipe, "prepare_inputs", lambda *args, **kwargs: pytest.skip("stopped after loading"))
    teacher = str(REPO / "pretrained" / "vit-cifar-teacher")
    with pytest.raises(pytest.skip.Exception):
        recipe.main(["--output_dir", str(tmp_path / "run"), "--trust_remote_code", "--max_train_samples", "32",
                     "--teacher_model_name_or_path", teacher])  # fmt: skip
    assert calls[teacher] == {"trust_remote_code": False, "revision": None}
    with pytest.raises(pytest.skip.Exception):
        recipe.main(["--output_dir", str(tmp_path / "run"), "--max_train_samples", "32",
                     "--teacher_model_name_or_path", teacher, "--teacher_trust_remote_code",
                     "--teacher_revision", "v1"])  # fmt: skip
    assert calls[teacher] == {"trust_remote_code": True, "revision": "v1"}
    # each extra teacher at its own revision, given in their order
    extra = str(REPO / "pretrained" / "cnn-cifar10-teacher")
    with pytest.raises(pytest.skip.Exception):
        recipe.main(["--output_dir", str(tmp_path / "run"), "--max_train_samples", "32", "--attention_loss_weight",
                     "0", "--teacher_model_name_or_path", teacher, "--extra_teachers", extra,
                     "--extra_teacher_revisions", "v2"])  # fmt: skip
    assert calls[extra] == {"trust_remote_code": False, "revision": "v2"}
    with pytest.raises(ValueError, match="2 revisions for 1 extra teachers"):
        recipe.main(["--output_dir", str(tmp_path / "run"), "--teacher_model_name_or_path", teacher,
                     "--extra_teachers", extra, "--extra_teacher_revisions", "v2", "v3"])  # fmt: skip


@pytest.mark.slow
def test_a_dataset_without_a_test_split_reports_its_validation_split(tmp_path, teacher_dir):
    """A newcomer's data: train and validation folders of full-size JPEGs. Summary, card and plots are complete and
    say which split they report; no empty table."""
    generator = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 3)):
        for name in CIFAR_NAMES:
            folder = tmp_path / "photos" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                size = tuple(int(side) for side in generator.integers(120, 260, size=2))
                pixels = generator.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    output_dir = tmp_path / "distill"
    summary = load_recipe().main([
        "--teacher_model_name_or_path", str(teacher_dir), "--output_dir", str(output_dir),
        "--dataset_name", str(tmp_path / "photos"), "--config_overrides", TINY_STUDENT, "--num_train_epochs", "2",
        "--per_device_train_batch_size", "16", "--report_to", "none", "--baseline", "--num_overlay_images", "3",
        "--export", "onnx", "--dataloader_num_workers", "0",  # workers kept by this run would stall a later test
    ])  # fmt: skip
    assert summary["reported_split"] == "validation"
    assert (output_dir / "onnx" / "model.onnx").is_file()  # the student alone, exported
    assert all(0 <= row["eval_accuracy"] <= 1 for row in summary["models"])
    text = (output_dir / "summary.md").read_text()
    assert "| validation accuracy | validation accuracy, last epoch | validation macro-F1 |" in text
    assert "test accuracy" not in text
    assert "no test split" in text
    card = (output_dir / "README.md").read_text()
    side_by_side = card[card.index("Side by side") :]
    assert "| validation accuracy |" in side_by_side and "| baseline student" in side_by_side
    for plot in ("loss_components.png", "validation_accuracy.png", "layer_weights.png", "attention_overlays.png"):
        assert (output_dir / plot).is_file(), plot
    # 8 optimizer steps: logged often enough to draw (the default interval, 10, logs none).
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert len([entry for entry in history if "loss" in entry]) >= 4
