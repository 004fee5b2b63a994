"""benchmarks/gpu_check.py's dry mode: every section runs end to end on CPU at tiny sizes and reports ok, and the
JSON it writes after each section has what the GPU run will be read for."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # gpu_check imports training_throughput from beside it
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is being imported
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_mode_runs_every_section(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    gpu_check = load_gpu_check(monkeypatch)
    output_dir = tmp_path / "out"
    returned = gpu_check.main(
        ["--device", "cpu", "--quick", "--output_dir", str(output_dir), "--work_dir", str(tmp_path / "work")]
    )

    results = json.loads((output_dir / "gpu_check.json").read_text())
    assert list(results["sections"]) == list(gpu_check.SECTIONS)
    for name, section in results["sections"].items():
        assert section["status"] == "ok", f"{name}: {section.get('error')}\n{section.get('traceback', '')}"
        assert section["ok"] and section["seconds"] > 0 and section["summary"]
    assert returned["sections"].keys() == results["sections"].keys()
    sections = results["sections"]

    assert sections["environment"]["versions"]["torch"] and sections["environment"]["versions"]["datasets"]
    distillation = sections["distillation"]
    assert distillation["losses_finite"] and {"teacher", "distilled student"} <= distillation["test_accuracy"].keys()
    assert all(0 <= accuracy <= 1 for accuracy in distillation["test_accuracy"].values())

    throughput = sections["throughput"]
    assert throughput["peak"]["flops_per_second"] > 0
    layouts = {row["model"]: row["layout"] for row in throughput["rows"]}
    assert set(layouts) == {model_name for model_name, _ in gpu_check.quick_sizes().models}
    assert (
        layouts["compact-cnn"] == layouts["hybrid-resnet18"] == "channels_last"
        and layouts["vit-cifar"] == "contiguous"
    )
    for row in throughput["rows"]:
        assert row["images_per_second"] > 0 and row["forward_flops_per_image"] > 0 and row["mfu"] > 0
        expected_mfu = (
            3 * row["forward_flops_per_image"] * row["images_per_second"] / throughput["peak"]["flops_per_second"]
        )
        assert math.isclose(row["mfu"], expected_mfu)
    assert "| compact-cnn | channels_last | 8 | 32x32 |" in throughput["table"]

    comparison = sections["vit_vs_timm"]["comparisons"]["vit-cifar"]
    assert comparison["ratio"] > 0 and set(comparison["candidates"]) == {"ours", "timm"}
    assert sections["attention"]["tokens"] == 197 and sections["attention"]["sdpa_speedup"] > 0
    data_path = sections["data_path"]
    assert {figures["pipeline"] for figures in data_path["pipelines"].values()} == {"tensors", "workers"}
    for figures in data_path["pipelines"].values():
        assert figures["images_per_second"] > 0 and figures["batch_shape"][1:] == [3, 32, 32]
    jpeg = sections["jpeg_decode"]
    assert {figures["pipeline"] for figures in jpeg["pipelines"].values()} == {"workers", "decode_on_device"}
    for figures in jpeg["pipelines"].values():
        assert figures["images_per_second"] > 0 and figures["batch_shape"][1:] == [3, 64, 64]
        assert figures["data_over_model"] > 0
    assert sections["fp16_teacher"]["losses_finite"] and sections["fp16_teacher"]["student_weights_finite"]
    teacher = sections["cnn_teacher"]
    assert teacher["epochs"] == 1 and 0 <= teacher["test_accuracy_flip_translate"] <= 1
    compile_figures = sections["torch_compile"]
    assert compile_figures["compiled_images_per_second"] > 0 and math.isfinite(compile_figures["recipe_train_loss"])

    report = (output_dir / "gpu_check.md").read_text()
    assert all(f"| {name} | ok |" in report for name in gpu_check.SECTIONS)


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    gpu_check = load_gpu_check(monkeypatch)

    def broken(check):
        raise RuntimeError("no kernel image is available")

    sections = {"environment": gpu_check.environment, "broken": broken, "after": lambda check: {"summary": "ran"}}
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    output_dir = tmp_path / "out"
    gpu_check.main(["--device", "cpu", "--quick", "--output_dir", str(output_dir), "--work_dir", str(tmp_path)])

    results = json.loads((output_dir / "gpu_check.json").read_text())["sections"]
    assert [results[name]["status"] for name in sections] == ["ok", "error", "ok"]
    assert results["broken"]["error"] == "RuntimeError: no kernel image is available"
    assert "no kernel image" in results["broken"]["traceback"] and not results["broken"]["ok"]
    assert "| broken | error |" in (output_dir / "gpu_check.md").read_text()


def test_no_section_starts_after_the_time_budget(tmp_path, monkeypatch):
    gpu_check = load_gpu_check(monkeypatch)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))  # where the GPU machine's runs put their results
    gpu_check.main(["--device", "cpu", "--quick", "--time_budget", "-1", "--work_dir", str(tmp_path)])

    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["sections"]
    assert list(results) == list(gpu_check.SECTIONS)
    assert all(section["status"] == "skipped" and "time budget" in section["reason"] for section in results.values())
