"""Hub round trips through the recipes, against the local Hub server (tests/hub_server.py): a dataset by Hub id in,
the model and its card pushed, loaded back by a process that has no hf_vision_distill, a teacher by Hub id, cached
teacher logits as a Hub dataset, and the errors of a push that cannot work.

The recipes and the clients run in subprocesses (see hub_server.py for why); the server stays here, where the test
inspects what reached it.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import run_hub_client
from huggingface_hub import ModelCard
from safetensors.torch import load
from transformers import AutoModelForImageClassification

from hf_vision_distill import VisionTransformerConfig, VisionTransformerForImageClassification

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "cifar10-sample"
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
TINY_CNN = json.dumps({"hidden_sizes": [8, 16, 16], "depths": [1, 1, 1]})

# A client that cannot import hf_vision_distill, as on a machine with plain transformers.
WITHOUT_THE_PACKAGE = """
import sys

class NoHfVisionDistill:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_vision_distill":
            raise ImportError("hf_vision_distill is not installed here")

sys.meta_path.insert(0, NoHfVisionDistill())
"""

LOGITS_AND_PIPELINE = """
import json
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

model = AutoModelForImageClassification.from_pretrained("{repo}", {remote})
torch.manual_seed(0)
with torch.no_grad():
    logits = model(torch.randn(2, 3, 32, 32)).logits
labels = [p["label"] for p in pipeline("image-classification", model="{repo}", {remote})(Image.new("RGB", (32, 32)))]
assert "hf_vision_distill" {imported} in sys.modules
print(json.dumps({{"logits": logits.tolist(), "labels": labels, "class": type(model).__name__}}))
"""


def run_recipe(name: str, arguments: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "examples" / f"{name}.py"), *arguments]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def tiny_budget(output_dir: Path) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--max_train_samples", "32", "--max_eval_samples", "16",
        "--per_device_train_batch_size", "16", "--num_train_epochs", "1", "--dataloader_num_workers", "0",
        "--report_to", "none", "--use_cpu", "true", "--logging_steps", "1",
    ]  # fmt: skip


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def local_logits(model_dir: Path) -> torch.Tensor:
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32)).logits


@pytest.mark.slow
def test_train_on_a_hub_dataset_push_and_load_anywhere(hub, hub_env, tmp_path):
    # The shipped sample as a Hub dataset repo: the recipe reads it by id, through the Hub client.
    files = {str(path.relative_to(SAMPLE)): path.read_bytes() for path in SAMPLE.rglob("*") if path.is_file()}
    hub.add_files("user/cifar10-sample", files, repo_type="dataset")
    output_dir = tmp_path / "run"
    result = run_recipe("train", [
        *tiny_budget(output_dir), "--model_name_or_path", "vit-cifar", "--config_overrides", TINY_VIT,
        "--dataset_name", "user/cifar10-sample", "--push_to_hub", "--hub_model_id", "user/tiny-vit",
    ], hub_env, tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]

    files = hub.repo_files("user/tiny-vit")
    for name in ("model.safetensors", "config.json", "modeling_vit.py", "configuration_vit.py",
                 "preprocessor_config.json", "README.md"):  # fmt: skip
        assert name in files, name
    assert not any(path.startswith("checkpoint-") for path in files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForImageClassification"].startswith("modeling_vit.")
    assert "model.safetensors" in hub.lfs_files("user/tiny-vit")
    card = ModelCard(files["README.md"].decode())
    assert card.data.datasets == ["user/cifar10-sample"] and card.data.eval_results[0].dataset_split == "test"
    assert re.search(r'from_pretrained\("user/tiny-vit", trust_remote_code=True, revision="[0-9a-f]{40}"\)', card.text)

    # Plain transformers, no hf_vision_distill: the code stored with the weights runs, with the same logits.
    expected = local_logits(output_dir)
    remote = run_hub_client(WITHOUT_THE_PACKAGE + LOGITS_AND_PIPELINE.format(
        repo="user/tiny-vit", remote="trust_remote_code=True", imported="not"), hub_env, cwd=tmp_path)  # fmt: skip
    remote = last_json(remote)
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, atol=1e-5, rtol=1e-4)
    assert len(remote["labels"]) == 5 and set(remote["labels"]) <= set(CIFAR_NAMES)  # the pipeline's top 5
    # With the package installed: no trust_remote_code needed, our own class.
    installed = run_hub_client("import sys\nimport hf_vision_distill\n" + LOGITS_AND_PIPELINE.format(
        repo="user/tiny-vit", remote="", imported=""), hub_env, cwd=tmp_path)  # fmt: skip
    installed = last_json(installed)
    assert installed["class"] == "VisionTransformerForImageClassification"
    torch.testing.assert_close(torch.tensor(installed["logits"]), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_distill_from_a_hub_teacher_and_push_the_student_alone(hub, hub_env, tmp_path):
    torch.manual_seed(0)
    id2label = dict(enumerate(CIFAR_NAMES))
    config = VisionTransformerConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, id2label=id2label,
                                     label2id={name: index for index, name in id2label.items()})  # fmt: skip
    VisionTransformerForImageClassification(config).save_pretrained(tmp_path / "teacher")
    run_hub_client(f"""
        from huggingface_hub import HfApi
        HfApi().create_repo("user/teacher")
        HfApi().upload_folder(repo_id="user/teacher", folder_path={str(tmp_path / "teacher")!r})
    """, hub_env)  # fmt: skip

    result = run_recipe("distill", [
        *tiny_budget(tmp_path / "student"), "--teacher_model_name_or_path", "user/teacher",
        "--config_overrides", TINY_CNN, "--baseline", "--num_overlay_images", "2",
        "--push_to_hub", "--hub_model_id", "user/student",
    ], hub_env, tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]

    files = hub.repo_files("user/student")
    assert not any(path.startswith(("_baseline", "_teacher", "checkpoint-")) for path in files)
    assert {"summary.md", "loss_components.png", "attention_overlays.png", "README.md"} <= set(files)
    weights = load(files["model.safetensors"])
    assert weights and not any(key.startswith(("student.", "adapters.", "teacher")) for key in weights)
    card = ModelCard(files["README.md"].decode())
    assert "knowledge-distillation" in card.data.tags and "Distilled from `user/teacher`" in card.text
    assert "baseline student" in card.text  # the side-by-side table of the run
    # The remote-code snippet loads the commit that holds the weights and code, not whatever main holds later.
    pinned = re.search(r'trust_remote_code=True, revision="([0-9a-f]{40})"', card.text).group(1)
    assert hub.repo_files("user/student", revision=pinned)["model.safetensors"] == files["model.safetensors"]
    assert (tmp_path / "student" / "README.md").read_text() == files["README.md"].decode()
    remote = last_json(run_hub_client(WITHOUT_THE_PACKAGE + LOGITS_AND_PIPELINE.format(
        repo="user/student", remote=f'trust_remote_code=True, revision="{pinned}"', imported="not"), hub_env,
        cwd=tmp_path))  # fmt: skip
    torch.testing.assert_close(torch.tensor(remote["logits"]), local_logits(tmp_path / "student"), atol=1e-5,
                               rtol=1e-4)  # fmt: skip


@pytest.mark.slow
def test_cached_teacher_logits_round_trip_as_a_hub_dataset(hub, hub_env, tmp_path):
    stdout = run_hub_client(f"""
        import json
        import torch
        from datasets import load_dataset
        from hf_vision_distill.data import build_transforms, load_image_classification_dataset, with_image_transform
        from hf_vision_distill.distillation import cache_teacher_logits, teacher_outputs_by_row
        from hf_vision_distill.models import load_image_classifier

        data = load_image_classification_dataset({str(SAMPLE)!r}, max_train_samples=24, validation_size=0)
        teacher = load_image_classifier("vit-cifar", id2label=data.id2label, config_overrides={TINY_VIT}).model
        transform = build_transforms(32, train=False)
        cache = cache_teacher_logits(teacher, data.dataset["train"], transform, batch_size=8)
        cache.push_to_hub("user/teacher-logits")
        reloaded = load_dataset("user/teacher-logits", split="train")
        assert reloaded.column_names == cache.column_names and reloaded.num_rows == cache.num_rows == 24
        rows = with_image_transform(data.dataset["train"], transform, extra_columns=teacher_outputs_by_row(reloaded))
        first = rows[0]
        print(json.dumps({{"logits": first["teacher_logits"].tolist(), "cached": cache[0]["teacher_logits"],
                           "row": cache[0]["row_index"]}}))
    """, hub_env, cwd=tmp_path)  # fmt: skip
    values = last_json(stdout)
    assert values["row"] == 0 and values["logits"] == pytest.approx(values["cached"])
    assert any(path.endswith(".parquet") for path in hub.repo_files("user/teacher-logits", repo_type="dataset"))


@pytest.mark.slow
def test_a_push_that_cannot_work_fails_before_training(hub, tmp_path):
    arguments = [*tiny_budget(tmp_path / "run"), "--model_name_or_path", "compact-cnn",
                 "--config_overrides", TINY_CNN, "--push_to_hub"]  # fmt: skip
    anonymous = hub.client_env(tmp_path / "anonymous", anonymous=True)
    result = run_recipe("train", [*arguments, "--hub_model_id", "user/model"], anonymous, tmp_path)
    assert result.returncode != 0 and "--push_to_hub needs a Hub token" in result.stderr
    bad_token = hub.client_env(tmp_path / "bad", token="hf_not_a_token")
    result = run_recipe("train", [*arguments, "--hub_model_id", "user/model"], bad_token, tmp_path)
    assert result.returncode != 0 and "the Hub rejected the token (401)" in result.stderr
    result = run_recipe("train", [*arguments, "--hub_model_id", "not a/valid id!"], hub.client_env(tmp_path / "h"),
                        tmp_path)  # fmt: skip
    assert result.returncode != 0 and "is not a valid repo id" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was trained


@pytest.mark.slow
def test_a_server_error_during_the_push_keeps_the_trained_model(hub, hub_env, tmp_path):
    output_dir = tmp_path / "run"
    hub.fail_next("commit", times=1, status=500, message="Internal Error - We're working hard to fix this")
    result = run_recipe("train", [
        *tiny_budget(output_dir), "--model_name_or_path", "compact-cnn", "--config_overrides", TINY_CNN,
        "--push_to_hub", "--hub_model_id", "user/model", "--save_strategy", "no", "--load_best_model_at_end", "false",
    ], hub_env, tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "The trained model is saved in" in result.stderr and "hf upload user/model" in result.stderr
    assert "We're working hard to fix this" in result.stderr
    assert "model.safetensors" not in hub.repo_files("user/model")  # the failed commit stored nothing
    model = AutoModelForImageClassification.from_pretrained(output_dir)  # the local files are whole
    assert model.config.num_labels == 10 and (output_dir / "README.md").is_file()


@pytest.mark.slow
def test_push_a_classifier_from_python(hub, hub_env, tmp_path):
    stdout = run_hub_client(f"""
        import json
        import torch
        from hf_vision_distill.hub import build_model_card, push_classifier
        from hf_vision_distill.models import load_image_classifier

        labels = dict(enumerate({CIFAR_NAMES!r}))
        loaded = load_image_classifier("compact-cnn", id2label=labels, config_overrides={TINY_CNN})
        card = build_model_card(loaded.model, repo_id="user/cnn", dataset_name="uoft-cs/cifar10",
                                recipe="(from Python)", results={{"test": {{"accuracy": 0.1}}}}, hyperparameters={{}},
                                input_specification=loaded.input_specification)
        push_classifier(loaded.model, "user/cnn", image_processor=loaded.image_processor, card=card)
        torch.manual_seed(0)
        with torch.no_grad():
            print(json.dumps(loaded.model.eval()(torch.randn(2, 3, 32, 32)).logits.tolist()))
    """, hub_env, cwd=tmp_path)  # fmt: skip
    files = hub.repo_files("user/cnn")
    assert {"model.safetensors", "config.json", "modeling_compact_cnn.py", "preprocessor_config.json",
            "README.md"} <= set(files)  # fmt: skip
    remote = last_json(run_hub_client(WITHOUT_THE_PACKAGE + LOGITS_AND_PIPELINE.format(
        repo="user/cnn", remote="trust_remote_code=True", imported="not"), hub_env, cwd=tmp_path))  # fmt: skip
    torch.testing.assert_close(torch.tensor(remote["logits"]), torch.tensor(last_json(stdout)), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_a_push_to_a_branch_pins_the_card_there(hub, hub_env, tmp_path):
    """--hub_revision: the model and its pinned card land on that branch, and `main` is left as it was."""
    hub.add_files("user/branched", {".gitattributes": b""})
    run_hub_client('from huggingface_hub import HfApi\nHfApi().create_branch("user/branched", branch="v1")\n',
                   hub_env, cwd=tmp_path)  # fmt: skip
    output_dir = tmp_path / "run"
    result = run_recipe("train", [
        *tiny_budget(output_dir), "--model_name_or_path", "compact-cnn", "--config_overrides", TINY_CNN,
        "--push_to_hub", "--hub_model_id", "user/branched", "--hub_revision", "v1", "--hub_strategy", "end",
        "--save_strategy", "no", "--load_best_model_at_end", "false",
    ], hub_env, tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    branch = hub.repo_files("user/branched", revision="v1")
    assert "model.safetensors" in branch
    [pinned_to] = re.findall(r'trust_remote_code=True, revision="([0-9a-f]{40})"\)', branch["README.md"].decode())
    assert "model.safetensors" in hub.repo_files("user/branched", revision=pinned_to)
    assert set(hub.repo_files("user/branched")) == {".gitattributes"}  # main untouched
    assert (output_dir / "README.md").read_text(encoding="utf-8") == branch["README.md"].decode()
