"""What the package ships and what it finds: the wheel built from this tree, installed where the source tree is not,
renders a model card and runs a recipe; the repository's defaults (the CIFAR-10 sample, the CNN teacher) are found
from a checkout or refused with the flag to pass; the recipes' card replaces the Trainer's by an explicit setting."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_example
from huggingface_hub import ModelCard
from PIL import Image
from transformers import TrainingArguments

from hf_vision_distill import recipes
from hf_vision_distill.hub import build_model_card
from hf_vision_distill.models import LoadedClassifier, load_image_classifier
from hf_vision_distill.training import ImageClassificationTrainer

REPO = Path(__file__).resolve().parents[1]
TINY_CNN = json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]})
LABELS = {0: "cat", 1: "dog"}

# Run inside the installed copy: where the package comes from, a card rendered from its packaged template, and the
# recipes' default dataset refused with the flag to pass.
INSIDE_THE_INSTALL = """
import json, sys
import hf_vision_distill
from hf_vision_distill.hub import build_model_card, template_path
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.recipes import SHIPPED_SAMPLE, check_shipped_defaults
from hf_vision_distill.recipes import DataArguments

loaded = load_image_classifier("compact-cnn", id2label={labels!r}, config_overrides={tiny_cnn!r})
card = build_model_card(loaded.model, repo_id="user/cnn", dataset_name="user/pets", recipe="(from Python)",
                        results={{"test": {{"accuracy": 0.5}}}}, hyperparameters={{"epochs": 1}},
                        input_specification=loaded.input_specification)
try:
    check_shipped_defaults([DataArguments(dataset_name=SHIPPED_SAMPLE)])
    refusal = None
except FileNotFoundError as err:
    refusal = str(err)
print(json.dumps({{"package": hf_vision_distill.__file__, "template": str(template_path()), "card": str(card),
                  "refusal": refusal, "path": sys.path}}))
"""


def write_pets(root: Path) -> Path:
    """A two-class image folder (train and test splits), 8 images of 32x32 per class and split."""
    for split in ("train", "test"):
        for label, name in LABELS.items():
            (root / split / name).mkdir(parents=True)
            for index in range(8):
                colour = (200 * label + index, 40 * index % 255, 100)
                Image.new("RGB", (32, 32), colour).save(root / split / name / f"{index}.png")
    return root


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of the working tree, built offline from a copy (no build/ or egg-info left in the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "hf_vision_distill", source / "hf_vision_distill",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(wheels)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = wheels.glob("hf_vision_distill-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_renders_a_card_and_runs_a_recipe(tmp_path):
    wheel = build_wheel(tmp_path)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", str(wheel), "--no-deps", "--no-index", "--quiet", "--target",
         str(site)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (site / "hf_vision_distill" / "model_cards" / "image_classifier.md").is_file()
    assert not (site / "data").exists() and not (site / "pretrained").exists()  # too large to ship

    # A fresh working folder, the install first on the path: nothing of the source tree is importable from here.
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    script = INSIDE_THE_INSTALL.format(labels=LABELS, tiny_cnn=json.loads(TINY_CNN))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=workdir,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    inside = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(inside["package"]).is_relative_to(site), inside["package"]
    assert Path(inside["template"]).is_relative_to(site)
    assert REPO not in [Path(entry).resolve() for entry in inside["path"] if entry]  # only the venv lives under it
    card = ModelCard(inside["card"])
    assert card.data.pipeline_tag == "image-classification" and card.data.datasets == ["user/pets"]
    assert "| Classes | 2: cat, dog" in card.text
    assert "--dataset_name" in inside["refusal"] and "data/cifar10-sample" in inside["refusal"]

    # A tiny recipe from the installed package: examples/train.py on a dataset of 32 images, two steps.
    data = write_pets(tmp_path / "pets")
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train.py"), "--dataset_name", str(data), "--output_dir",
         str(output_dir), "--model_name_or_path", "compact-cnn", "--config_overrides", TINY_CNN, "--max_steps", "2",
         "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--report_to", "none",
         "--use_cpu", "true"],
        capture_output=True, text=True, timeout=300, cwd=workdir, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    card = ModelCard.load(output_dir / "README.md")
    assert "| Classes | 2: cat, dog" in card.text and "examples/train.py" in card.text
    assert (output_dir / "model.safetensors").is_file()

    # Without --dataset_name the recipe stops at once, saying what to pass and where the sample lives.
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train.py"), "--output_dir", str(tmp_path / "refused")],
        capture_output=True, text=True, timeout=300, cwd=workdir, env=env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--dataset_name" in result.stderr and "data/cifar10-sample" in result.stderr
    assert not (tmp_path / "refused").exists()


def test_the_shipped_defaults_are_found_in_a_checkout():
    assert Path(recipes.SHIPPED_SAMPLE) == REPO / "data" / "cifar10-sample" and Path(recipes.SHIPPED_SAMPLE).is_dir()
    assert Path(recipes.SHIPPED_TEACHER) == REPO / "pretrained" / "cnn-cifar10-teacher"
    assert Path(recipes.SHIPPED_TEACHER).is_dir()
    assert load_example("distill").DEFAULTS["teacher_model_name_or_path"] == recipes.SHIPPED_TEACHER
    model_args, data_args, *_ = load_example("train").parse([])  # the checkout's sample passes the check
    assert data_args.dataset_name == recipes.SHIPPED_SAMPLE


def test_a_missing_shipped_teacher_is_refused_before_any_work(tmp_path, monkeypatch):
    """As under a wheel install: the default teacher's folder is not there."""
    missing = str(tmp_path / "pretrained" / "cnn-cifar10-teacher")
    monkeypatch.setitem(recipes.SHIPPED_DEFAULTS, missing, recipes.SHIPPED_DEFAULTS[recipes.SHIPPED_TEACHER])
    recipe = load_example("distill")
    monkeypatch.setitem(recipe.DEFAULTS, "teacher_model_name_or_path", missing)
    monkeypatch.setattr(recipes.Recipe, "load_data", lambda *args, **kwargs: pytest.fail("the data was loaded"))
    refusal = r"--teacher_model_name_or_path defaults to the CNN teacher.*\(pretrained/cnn-cifar10-teacher\)"
    with pytest.raises(FileNotFoundError, match=refusal + r".*Pass --teacher_model_name_or_path"):
        recipe.main(["--output_dir", str(tmp_path / "run"), "--report_to", "none"])
    assert not (tmp_path / "run").exists()
    # Given explicitly, the same path is the user's own: the loader reports it as usual, not as a shipped default.
    recipes.check_shipped_defaults([recipes.DataArguments(dataset_name=str(tmp_path / "mine"))])


def tiny_trainer(output_dir: Path) -> tuple[ImageClassificationTrainer, LoadedClassifier]:
    loaded = load_image_classifier("compact-cnn", id2label=LABELS, config_overrides=json.loads(TINY_CNN))
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True)
    return ImageClassificationTrainer(model=loaded.model, args=args), loaded


def test_the_trainer_writes_the_recipes_card_when_it_has_one(tmp_path):
    trainer, loaded = tiny_trainer(tmp_path / "run")
    (tmp_path / "run").mkdir(exist_ok=True)
    # A card of someone else's that merely mentions the package is no reason to skip the Trainer's own.
    readme = tmp_path / "run" / "README.md"
    readme.write_text("# notes\nTrained with hf_vision_distill.\n")
    trainer.create_model_card(model_name="run")
    assert "Trained with hf_vision_distill." not in readme.read_text()  # the Trainer's generic card

    card = build_model_card(loaded.model, repo_id="user/run", dataset_name="user/pets", recipe="(test)",
                            results={"test": {"accuracy": 0.5}}, hyperparameters={},
                            input_specification=loaded.input_specification)  # fmt: skip
    trainer.model_card = card
    readme.write_text("stale")
    trainer.create_model_card(model_name="run")  # what push_to_hub calls
    written = ModelCard.load(readme)
    assert written.text == card.text and written.data.datasets == ["user/pets"]


def test_the_packaged_template_is_package_data():
    from hf_vision_distill.hub import template_path

    template = template_path()
    assert Path(str(template)).is_relative_to(REPO / "hf_vision_distill")
    assert template.read_text(encoding="utf-8").startswith("---\n{{ card_data }}\n---\n\n# {{ model_name }}\n")
    with pytest.raises(FileNotFoundError, match="'missing.md' not found in hf_vision_distill/model_cards"):
        template_path("missing.md")
