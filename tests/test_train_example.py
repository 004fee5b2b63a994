"""examples/train.py end to end on tiny budgets, and the training helpers it relies on."""

import json
import os
import re
from pathlib import Path

import datasets
import pytest
import torch
from conftest import load_example, run_two_processes
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification, TrainingArguments, pipeline

from hf_vision_distill import recipes
from hf_vision_distill.data import ImageClassificationCollator, load_image_classification_dataset
from hf_vision_distill.recipes import ModelArguments, load_model, parse_arguments
from hf_vision_distill.training import last_complete_checkpoint, on_device

REPO = Path(__file__).resolve().parents[1]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})


def load_recipe():
    return load_example("train")


def tiny_run_arguments(output_dir, *extra: str) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--model_name_or_path", "vit-cifar", "--config_overrides", TINY_VIT,
        "--max_train_samples", "64", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32", "--num_train_epochs", "1", "--dataloader_num_workers", "0",
        "--report_to", "none", "--logging_steps", "1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_recipe_trains_saves_and_serves(tmp_path):
    recipe = load_recipe()
    metrics = recipe.main(tiny_run_arguments(tmp_path / "run"))
    for key in ("eval_accuracy", "eval_f1_macro", "test_accuracy", "test_f1_macro", "train_loss"):
        assert key in metrics
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    run = tmp_path / "run"
    results = json.loads((run / "all_results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_vit.py"):
        assert (run / name).exists(), name
    assert last_complete_checkpoint(str(run)) is not None
    model = AutoModelForImageClassification.from_pretrained(run)
    assert [model.config.id2label[i] for i in range(10)] == CIFAR_NAMES
    predictions = pipeline("image-classification", model=str(run))(Image.new("RGB", (32, 32), "blue"), top_k=10)
    assert sorted(p["label"] for p in predictions) == sorted(CIFAR_NAMES)

    # The model card: results as model-index metadata, the labels, the command, loading both ways.
    card = ModelCard.load(run / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "image-classification"
    assert card.text.lstrip().startswith("# run\n")  # the model's name heads the page
    [accuracy] = [result for result in card.data.eval_results if result.metric_type == "accuracy"]
    assert accuracy.dataset_split == "test" and accuracy.metric_value == round(metrics["test_accuracy"], 4)
    assert "| Classes | 10: airplane, automobile, bird" in card.text
    assert "--config_overrides" in card.text and "trust_remote_code=True" in card.text
    assert "| Parameters | " + f"{sum(p.numel() for p in model.parameters()):,}" in card.text


def test_recipe_reads_a_yaml_config(tmp_path):
    recipe = load_recipe()
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'run'}\n"
        "model_name_or_path: vit-cifar\n"
        "max_train_samples: 64\n"
        "max_steps: 2\n"
        "learning_rate: 3.0e-4\n"
        "report_to: none\n"
    )
    model_args, data_args, run_args, training_args = recipe.parse([str(config)])
    assert training_args.max_steps == 2 and training_args.eval_strategy == "epoch"  # file value and recipe default
    assert run_args.overwrite_output_dir is False
    assert data_args.max_train_samples == 64 and model_args.model_name_or_path == "vit-cifar"
    assert training_args.learning_rate == 3e-4 and training_args.weight_decay == 0.05


@pytest.mark.slow
def test_recipe_resumes_from_the_last_complete_checkpoint(tmp_path):
    recipe = load_recipe()
    run = tmp_path / "run"
    common = ("--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
              "--load_best_model_at_end", "false", "--save_total_limit", "5")  # fmt: skip
    recipe.main(tiny_run_arguments(run, "--max_steps", "2", *common))
    assert last_complete_checkpoint(str(run)).endswith("checkpoint-2")
    # A save that died half way: a newer folder without trainer_state.json.
    (run / "checkpoint-3").mkdir()
    (run / "checkpoint-3" / "config.json").write_text("{}")
    assert last_complete_checkpoint(str(run)).endswith("checkpoint-2")
    recipe.main(tiny_run_arguments(run, "--max_steps", "4", *common))
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Resumed, not restarted: the log holds steps 1-2 from the first run and 3-4 from the second, once each.
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps == [1, 2, 3, 4]


@pytest.mark.parametrize("pipeline", ["tensors", "workers"])
@pytest.mark.slow
def test_mixup_applies_to_training_batches_only(tmp_path, pipeline):
    recipe = load_recipe()
    captured = {}
    original = recipe.ImageClassificationTrainer

    class CapturingTrainer(original):
        def train(self, *args, **kwargs):
            # As the steps see them: after the collator's device step (uint8 worker batches are mixed there).
            captured["train"] = on_device(self.data_collator, next(iter(self.get_train_dataloader())))
            captured["eval"] = on_device(self.eval_data_collator, next(iter(self.get_eval_dataloader())))
            return super().train(*args, **kwargs)

    recipe.ImageClassificationTrainer = CapturingTrainer
    recipe.main(tiny_run_arguments(tmp_path / "run", "--mixup_alpha", "0.2", "--cutmix_alpha", "1.0",
                                   "--label_smoothing_factor", "0.1", "--max_steps", "1",
                                   "--input_pipeline", pipeline, "--dataloader_num_workers", "1"))  # fmt: skip
    assert captured["train"]["pixel_values"].dtype == captured["eval"]["pixel_values"].dtype == torch.float32
    train_labels, eval_labels = captured["train"]["labels"], captured["eval"]["labels"]
    assert train_labels.shape == (16, 10) and train_labels.is_floating_point()
    torch.testing.assert_close(train_labels.sum(-1), torch.ones(16))
    assert train_labels.min() > 0  # label smoothing moved into the collator
    assert eval_labels.shape == (32,) and eval_labels.dtype == torch.long


@pytest.mark.slow
def test_recipe_on_undecodable_images(tmp_path):
    folder = tmp_path / "images"
    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (folder / label).mkdir(parents=True)
        for index in range(6):
            Image.new("RGB", (20, 20), color).save(folder / label / f"{index}.png")
    (folder / "blue" / "broken.png").write_bytes(b"not an image at all")
    recipe = load_recipe()
    arguments = tiny_run_arguments(tmp_path / "run", "--dataset_name", str(folder), "--validation_size", "0.25")
    # Carved into the validation split by this seed: found by the scan of the evaluation splits, before training.
    expected = (
        r"split 'validation' rows \[\d+\] of source split 'train' \(files '.*broken.png'\).*skip.*--check_images"
    )
    with pytest.raises(ValueError, match=expected) as error:
        recipe.main(arguments)
    # The row is the file's position in the source split, before the validation split was carved out of it.
    row = int(re.search(r"rows \[(\d+)\]", str(error.value)).group(1))
    source = load_image_classification_dataset(str(folder), validation_size=0).dataset["train"]
    assert source.cast_column("image", datasets.Image(decode=False))[row]["image"]["path"].endswith("broken.png")
    metrics = recipe.main(arguments + ["--on_bad_image", "skip", "--output_dir", str(tmp_path / "skipped")])
    assert "eval_accuracy" in metrics


def test_collator_default_keeps_hard_labels():
    examples = [
        {"pixel_values": torch.zeros(3, 4, 4), "labels": 2},
        {"pixel_values": torch.ones(3, 4, 4), "labels": 0},
    ]
    batch = ImageClassificationCollator()(examples)
    assert batch["labels"].tolist() == [2, 0]


def test_last_complete_checkpoint_on_missing_or_empty_dir(tmp_path):
    assert last_complete_checkpoint(str(tmp_path / "nope")) is None
    assert last_complete_checkpoint(str(tmp_path)) is None
    for step in (5, 40):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        save_file({"weight": torch.zeros(2)}, tmp_path / f"checkpoint-{step}" / "model.safetensors")
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    # Numeric, not lexicographic, order.
    os.makedirs(tmp_path / "checkpoint-100")
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-40")


@pytest.mark.slow
def test_best_checkpoint_is_restored_and_tensorboard_logs_by_default(tmp_path):
    recipe = load_recipe()
    arguments = [argument for argument in tiny_run_arguments(tmp_path / "run", "--num_train_epochs", "3",
                 "--learning_rate", "3e-3") if argument not in ("--report_to", "none")]  # fmt: skip
    metrics = recipe.main(arguments)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    during_training = [entry["eval_accuracy"] for entry in state["log_history"][:-1] if "eval_accuracy" in entry]
    assert len(during_training) == 3
    # load_best_model_at_end: the final validation score is the best epoch's, not necessarily the last one's.
    assert metrics["eval_accuracy"] == pytest.approx(max(during_training))
    assert state["best_model_checkpoint"] is not None
    assert list((tmp_path / "run").rglob("events.out.tfevents*")), "no TensorBoard event file"


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path):
    """Data-parallel training on 2 CPU processes (gloo), as `accelerate launch` / `torchrun` start it on GPUs."""
    arguments = tiny_run_arguments(tmp_path / "run", "--max_steps", "3", "--eval_strategy", "no",
                                   "--load_best_model_at_end", "false", "--use_cpu", "true")  # fmt: skip
    result = run_two_processes("train.py", arguments, tmp_path / "run", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert "test_accuracy" in results
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    # 3 steps of 2 processes x 16 images over 64 training images: 1.5 epochs (one process would make 0.75).
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(1.5)
    assert "find_unused_parameters=True" not in result.stderr  # the recipe turns DDP's extra graph walk off


@pytest.mark.parametrize("fp16, bf16", [(["--fp16"], False), (["--fp16=true"], False), (["--fp16", "false"], True),
                                        ([], True)])  # fmt: skip
def test_a_users_fp16_replaces_the_bf16_default(monkeypatch, fp16, bf16):
    monkeypatch.setattr(recipes.command_line, "accelerator_bf16", lambda: True)
    defaults = {"bf16": recipes.FROM_THE_DEVICE, "output_dir": "unused"}
    (args,) = parse_arguments((TrainingArguments,), defaults, [*fp16, "--use_cpu"])
    assert args.bf16 is bf16 and args.fp16 is not bf16


FP16_SPELLINGS = [["--fp16", "t"], ["--fp16=y"], ["--fp16", "--fp16", "false"], ["--fp16=no", "--fp16"],
                  ["--fp16", "--use_cpu"], ["--use_cpu", "--fp16"], []]  # fmt: skip


@pytest.mark.parametrize("argv", FP16_SPELLINGS)
def test_asks_for_reads_a_flag_as_the_parser_does(argv):
    """The recipes decide defaults (bf16, an offline teacher's weights) before parsing: they must read a boolean as
    HfArgumentParser will (t/y, the last occurrence winning)."""
    (args,) = parse_arguments((TrainingArguments,), {"output_dir": "unused"}, [*argv, "--use_cpu"])
    assert recipes.asks_for(argv, "fp16") is args.fp16


@pytest.mark.parametrize("argv", [["--use-cpu"], ["--use-cpu=false"], ["--use_cpu", "--use-cpu", "no"],
                                  ["--use-cpu", "f", "--use_cpu"]])  # fmt: skip
def test_asks_for_reads_the_dashed_spelling_too(argv):
    """HfArgumentParser takes `--use-cpu` for `use_cpu`: so must the reading made before parsing."""
    (args,) = parse_arguments((TrainingArguments,), {"output_dir": "unused"}, argv)
    assert recipes.asks_for(argv, "use_cpu") is args.use_cpu and recipes.user_gave(argv, "use_cpu")


def test_user_gave_reads_an_alias_too():
    """--model_path is the parser's other spelling of --model_name_or_path: a default that yields to the user's
    value must yield to it under either name."""
    argv = ["--model_path", "resnet18", "--output_dir", "unused"]
    (model_args, _) = parse_arguments((ModelArguments, TrainingArguments), {}, argv)
    assert model_args.model_name_or_path == "resnet18" and recipes.user_gave(argv, "model_name_or_path")
    assert not recipes.user_gave(["--output_dir", "unused"], "model_name_or_path")


def test_a_config_file_that_is_no_mapping_is_refused_by_name(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("- fp16\n- bf16\n")
    with pytest.raises(ValueError, match="must map argument names to values"):
        recipes.asks_for([str(config)], "fp16")


def test_a_config_files_null_is_not_a_given_value(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("fp16: null\nbf16: true\noutput_dir: unused\n")
    assert not recipes.user_gave([str(config)], "fp16") and recipes.user_gave([str(config)], "bf16")
    assert not recipes.asks_for([str(config)], "fp16") and recipes.asks_for([str(config)], "bf16")


@pytest.mark.parametrize("capability, expected", [((9, 0), (True, True)), ((7, 5), (False, None))])
def test_bf16_and_tf32_by_default_only_on_gpus_that_have_them(monkeypatch, capability, expected):
    # T4 and V100 (7.x) emulate bf16, so torch.cuda.is_bf16_supported() says yes, but transformers refuses --tf32.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    defaults = {"bf16": recipes.FROM_THE_DEVICE, "tf32": recipes.FROM_THE_DEVICE}
    resolved = recipes.resolve_precision_defaults(defaults, user_fp16=False)
    assert (resolved["bf16"], resolved["tf32"]) == expected


@pytest.mark.parametrize("hardware_bf16, warned", [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_of(tmp_path, monkeypatch, hardware_bf16, warned):
    monkeypatch.setattr(recipes.command_line, "cpu_multiplies_bf16", lambda: hardware_bf16)
    messages = []
    monkeypatch.setattr(recipes.command_line.logger, "warning", lambda message, *args: messages.append(message % args))
    recipes.setup_run(TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to="none"))
    assert any("--bf16 on a CPU without bf16 arithmetic" in message for message in messages) is warned


@pytest.mark.parametrize(
    "flags, hardware",
    [({"sse2", "avx2"}, False), ({"sse2", "avx512_bf16"}, True), ({"sse2", "amx_bf16"}, True),
     ({"asimd", "bf16"}, True), ({"asimd"}, False), (set(), None), (None, None)],
)  # fmt: skip
def test_bf16_hardware_is_read_from_the_cpu_flags(monkeypatch, flags, hardware):
    monkeypatch.setattr(recipes.command_line, "cpu_flags", lambda: flags)
    assert recipes.cpu_multiplies_bf16() is hardware


def test_convolutional_models_train_in_channels_last():
    cnn = load_model(ModelArguments(model_name_or_path="compact-cnn", config_overrides='{"hidden_sizes": [8, 8, 8]}'),
                     {0: "a", 1: "b"})  # fmt: skip
    vit = load_model(ModelArguments(model_name_or_path="vit-cifar", config_overrides='{"num_hidden_layers": 1}'),
                     {0: "a", 1: "b"})  # fmt: skip
    convolution = next(module for module in cnn.model.modules() if isinstance(module, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    assert not convolution.weight.is_contiguous()
    patch_embedding = next(module for module in vit.model.modules() if isinstance(module, torch.nn.Conv2d))
    assert patch_embedding.weight.is_contiguous()


def test_accelerate_launch_on_cpu_takes_bf16(monkeypatch):
    """`accelerate launch --cpu` sets ACCELERATE_USE_CPU; transformers refuses --bf16 without a GPU unless use_cpu is
    set too, which the launch already said."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    *_, training_args = load_recipe().parse(["--bf16"])
    assert training_args.bf16 and training_args.use_cpu
    assert not recipes.accelerator_bf16()  # no bf16 default from a GPU the launch does not use


def test_the_help_lists_every_preset():
    from hf_vision_distill.models import MODEL_PRESETS, describe_model_presets

    help_text = ModelArguments.__dataclass_fields__["model_name_or_path"].metadata["help"]
    assert describe_model_presets() in help_text and all(name in help_text for name in MODEL_PRESETS)


def test_a_bad_validation_image_stops_the_run_before_training(tmp_path, monkeypatch):
    """Found after a whole epoch of training before: the evaluation splits are scanned up front."""
    for split in ("train", "validation"):
        for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for index in range(4):
                Image.new("RGB", (20, 20), color).save(tmp_path / "images" / split / label / f"{index}.png")
    (tmp_path / "images" / "validation" / "red" / "9.png").write_bytes(b"cut off")
    recipe = load_recipe()
    monkeypatch.setattr(recipe.ImageClassificationTrainer, "train", lambda *args, **kwargs: pytest.fail("trained"))
    arguments = tiny_run_arguments(tmp_path / "run", "--dataset_name", str(tmp_path / "images"))
    with pytest.raises(
        ValueError, match=r"rows \[\d\] of source split 'validation' \(files '.*9.png'\).*--check_images"
    ):
        recipe.main(arguments)
