"""Distillation against its same-budget baseline over several seeds: a row of the results tables in RESULTS.md.

Runs `examples/distill.py --baseline` once per seed (a seed whose run finished, i.e. has summary.json, is not run
again, so an interrupted table resumes), then scores both students on the test split twice, in float32: the
best-validation checkpoint the recipe keeps (the run's model; summary.json has its figure under the run's precision)
and the last epoch (the run's last checkpoint). It prints, and writes to `<output>/results.json` and `results.md`,
the mean and standard deviation over the seeds of each, the gain (distilled - baseline, paired by seed) with the test
of the issue's goal (gain > 2 x the combined standard deviation, sqrt(sd_distilled^2 + sd_baseline^2)), and the wall
times. Arguments after `--` go to distill.py unchanged:

    python benchmarks/distill_seeds.py --name kd --seeds 0 1 2 -- \\
        --teacher_model_name_or_path pretrained/cnn-cifar10-teacher --temperature 4 --feature_loss_weight 0 \\
        --dataset_name ../shared/datasets/cifar10 --num_train_epochs 3 --bf16 --use_cpu
    # the next row reuses that row's baselines (same seeds and arguments but for the loss and teacher flags)
    python benchmarks/distill_seeds.py --name dkd --baseline_from kd --seeds 0 1 2 -- ... --soft_loss_type dkd

Not a test: each seed is two full training runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from hf_vision_distill.data import load_image_classification_dataset
from hf_vision_distill.distillation import DistillationConfig
from hf_vision_distill.models import load_image_classifier
from hf_vision_distill.recipes import RunArguments, parse_arguments
from hf_vision_distill.recipes.output_folder import RUN_ARGUMENTS_NAME, arguments_record, named_in
from hf_vision_distill.tensor_data import DeviceImageTransform, decode_images, predict_decoded

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS_ROOT = REPO_ROOT / "outputs" / "seeds"  # a row's runs: <name>/seed<S>


def run_seed(seed: int, output: Path, distill_args: list[str], baseline: bool = True) -> dict:
    """One seed's distillation and, with `baseline`, its baseline; its summary. A run finished with the same
    resolved arguments (defaults included: a run made before a default changed is not this one) is not run again;
    one finished with others is refused, not reused."""
    summary_path = output / "summary.json"
    run_args = [*distill_args, *(["--baseline"] if baseline else [])]
    if summary_path.is_file():
        changed = argument_changes(output, run_args, seed, ignored=set())
        if changed:
            raise SystemExit(
                f"{output} holds a finished run with other arguments than this one's ({changed}; this row: "
                f"{distill_args}): remove it, or give the row another name."
            )
    else:
        command = [sys.executable, str(REPO_ROOT / "examples" / "distill.py"), *run_args,
                   "--seed", str(seed), "--output_dir", str(output), "--overwrite_output_dir",
                   "--num_overlay_images", "0", "--report_to", "none"]  # fmt: skip
        output.mkdir(parents=True, exist_ok=True)
        (output / "distill_args.json").write_text(json.dumps(distill_args))
        print(f"seed {seed}: {' '.join(command)}  (log: {output / 'run.log'})", flush=True)
        start = time.time()
        with open(output / "run.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO_ROOT)
        print(f"seed {seed}: done in {time.time() - start:.0f} s", flush=True)
    return json.loads(summary_path.read_text())


_RECIPE_LOCK = threading.Lock()  # seeds check their runs from several threads (--parallel)


def distill_recipe():
    """examples/distill.py as a module (its argument dataclasses, defaults and `recipe_defaults`), loaded once."""
    with _RECIPE_LOCK:  # a module is in sys.modules before it has run: another thread would see it half loaded
        if "distill_recipe" not in sys.modules:
            spec = importlib.util.spec_from_file_location("distill_recipe", REPO_ROOT / "examples" / "distill.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # its dataclasses look their module up as it runs
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[spec.name]
                raise
        return sys.modules["distill_recipe"]


# What a run records that may differ between the runs of one row (names, or prefixes ending in "_"): where it
# writes, logs and reports. Everything else (precision, pipeline, validation size, what is saved, ...) can change the
# figures, so it must match.
MAY_DIFFER = ("output_dir", "overwrite_output_dir", "logging_", "log_", "report_to", "run_name", "project",
              "trackio_", "push_to_hub", "hub_", "num_overlay_images", "disable_tqdm", "per_device_eval_batch_size",
              "eval_accumulation_steps", "local_rank", "include_")  # fmt: skip


def resolved_arguments(distill_args: list[str], seed: int) -> dict:
    """distill.py's arguments for `distill_args` at `seed`, defaults resolved, as its run_arguments.json records
    them (paths made absolute: `comparable`)."""
    recipe = distill_recipe()
    argv = [*with_paths_resolved(distill_args), "--seed", str(seed), "--output_dir", "unused"]
    groups = parse_arguments(recipe.ARGUMENTS, recipe.recipe_defaults(argv)[0], argv)
    return comparable(arguments_record(tuple(group for group in groups if not isinstance(group, RunArguments))))


def comparable(record: dict) -> dict:
    """A run's recorded arguments less those free to differ within a row (MAY_DIFFER), values naming existing files
    or folders (relative to the repository, where distill.py runs) made absolute: `data/x` and `/abs/repo/data/x` are
    the same dataset."""
    return {name: with_paths_resolved([value])[0] if isinstance(value, str) else value
            for name, value in record.items() if not named_in(name, MAY_DIFFER)}  # fmt: skip


def argument_changes(run: Path, distill_args: list[str], seed: int, ignored: set[str]) -> dict | str:
    """How the finished run in `run` was made otherwise than `distill_args` at `seed` would make it, less the
    arguments in `ignored`: {name: (the run's, this one's)}, or why it cannot be told; empty when the same."""
    record_path = run / RUN_ARGUMENTS_NAME
    if not record_path.is_file():
        return f"no {RUN_ARGUMENTS_NAME} records how it was made"
    theirs = comparable(json.loads(record_path.read_text()))
    ours = resolved_arguments(distill_args, seed)
    return {name: (theirs.get(name), ours.get(name)) for name in sorted({*theirs, *ours} - ignored)
            if theirs.get(name) != ours.get(name)}  # fmt: skip


def recorded_arguments(run: Path) -> list[str] | None:
    """The distill.py arguments `run_seed` recorded for the run in `run` (None: none recorded)."""
    args_file = run / "distill_args.json"
    return json.loads(args_file.read_text()) if args_file.is_file() else None


def distillation_only_flags() -> set[str]:
    """distill.py's flags that change the distilled student alone (loss, teacher, whether a baseline is trained):
    rows that differ only in these can share their baselines."""
    recipe = distill_recipe()
    training = {f.name for f in dataclasses.fields(recipe.TrainingArguments)}
    names = {f.name for f in dataclasses.fields(DistillationConfig)} - training
    return names | {f.name for f in dataclasses.fields(recipe.TeacherArguments)} | {"baseline"}


def with_paths_resolved(argv: list[str]) -> list[str]:
    """`argv` with each value naming an existing file or folder (relative to the repository, as distill.py runs
    there) made absolute: `data/x` and `/abs/repo/data/x` are the same dataset."""
    return [str((REPO_ROOT / token).resolve()) if not token.startswith("-") and (REPO_ROOT / token).exists()
            else token for token in argv]  # fmt: skip


def check_shared_baselines(source: Path, seeds: list[int], distill_args: list[str]) -> None:
    """Before any training: every seed of the row whose baselines are reused exists and was made with the same
    resolved arguments (defaults included), but for those that only the distillation sees."""
    flags = distillation_only_flags()
    for seed in seeds:
        run = source / f"seed{seed}"
        if not (run / "summary.json").is_file() or not (run / "_baseline").is_dir():
            raise SystemExit(f"--baseline_from: {run} has no finished run with a baseline; run that row first.")
        changed = argument_changes(run, distill_args, seed, ignored=flags)
        if changed:
            raise SystemExit(
                f"--baseline_from: {run} was run with other training arguments than this row's ({changed}; its "
                f"command: {recorded_arguments(run)}, this row's: {distill_args}); only loss and teacher flags may "
                "differ. Run this row with its own baselines."
            )


def summary_row(summary: dict, model: str) -> dict:
    """The row of distill.py's summary whose model starts with `model` (a run with several teachers has a row each
    before the students)."""
    return next(row for row in summary["models"] if row["model"].startswith(model))


def last_checkpoint(run: Path) -> Path:
    checkpoints = sorted(run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"{run} has no checkpoint: the last epoch cannot be scored.")
    return checkpoints[-1]


def test_accuracy(model_path: Path, test, device: str | None = None) -> float:
    """The saved model's accuracy on the decoded `test` images, in float32, on `device`
    (default: CUDA if there)."""
    # float32, not TF32, on CUDA: parsing TrainingArguments in this process (`resolved_arguments`) may have set TF32
    # globally, which the old allow_tf32 flags no longer override.
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    loaded = load_image_classifier(str(model_path), id2label=None)
    loaded.model.float().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    transform = DeviceImageTransform(
        loaded.input_specification.image_size, train=False, **loaded.input_specification.normalization()
    )
    return (predict_decoded(loaded.model, test, transform) == test.labels).float().mean().item()


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_seeds(
    name: str, seeds: list[int], distill_args: list[str], baseline_from: str | None = None, parallel: int = 1,
    root: Path | None = None,
) -> None:  # fmt: skip
    """Each seed's run of the row `name` (in `root`, default SEEDS_ROOT; with its baseline unless `baseline_from`),
    `parallel` at a time."""
    output = (root or SEEDS_ROOT) / name
    with ThreadPoolExecutor(max_workers=parallel) as pool:  # each thread waits on one distill.py process
        for future in [pool.submit(run_seed, seed, output / f"seed{seed}", distill_args, baseline=not baseline_from)
                       for seed in seeds]:  # fmt: skip
            future.result()


def score_row(
    name: str, seeds: list[int], distill_args: list[str], baseline_from: str | None = None, root: Path | None = None
) -> list[str]:
    """Scores the finished row `name` (in `root`, default SEEDS_ROOT) on its dataset's test split (both students,
    best and last checkpoints) and writes `results.json` and `results.md` beside its runs; returns the lines of
    results.md."""
    root = root or SEEDS_ROOT
    output = root / name
    shared = root / baseline_from if baseline_from else None
    resolved = with_paths_resolved(distill_args)  # as distill.py, which runs in the repository, read them
    dataset_name = resolved[resolved.index("--dataset_name") + 1]
    test = decode_images(load_image_classification_dataset(dataset_name).dataset["test"], source_split="test")
    rows = []
    for seed in seeds:
        run = output / f"seed{seed}"
        summary = json.loads((run / "summary.json").read_text())
        teacher, distilled = summary["models"][0], summary_row(summary, "distilled student")
        baseline_run = run if shared is None else shared / f"seed{seed}"
        baseline = summary_row(json.loads((baseline_run / "summary.json").read_text()), "baseline student")
        rows.append({
            "seed": seed,
            "teacher": teacher.get("test_accuracy"),
            "distilled_best": test_accuracy(run, test),
            "distilled_last": test_accuracy(last_checkpoint(run), test),
            "baseline_best": test_accuracy(baseline_run / "_baseline", test),
            "baseline_last": test_accuracy(last_checkpoint(baseline_run / "_baseline"), test),
            "distilled_seconds": distilled["train_runtime"],
            "baseline_seconds": baseline["train_runtime"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    result = {"name": name, "distill_args": distill_args, "baseline_from": baseline_from, "seeds": rows,
              "test_images": len(test)}  # fmt: skip
    lines = [f"{name}: {len(rows)} seeds ({', '.join(str(row['seed']) for row in rows)}), test {len(test):,} images"]
    for which in ("best", "last"):
        distilled, baseline = [row[f"distilled_{which}"] for row in rows], [row[f"baseline_{which}"] for row in rows]
        (d_mean, d_sd), (b_mean, b_sd) = mean_sd(distilled), mean_sd(baseline)
        gain_mean, gain_sd = mean_sd([d - b for d, b in zip(distilled, baseline)])
        combined = (d_sd**2 + b_sd**2) ** 0.5
        result[which] = {"distilled": [d_mean, d_sd], "baseline": [b_mean, b_sd], "gain": [gain_mean, gain_sd],
                         "combined_sd": combined, "beyond_twice_combined_sd": gain_mean > 2 * combined}  # fmt: skip
        lines.append(
            f"{which} checkpoint: distilled {100 * d_mean:.2f} ± {100 * d_sd:.2f}, baseline {100 * b_mean:.2f} ± "
            f"{100 * b_sd:.2f}, gain {100 * gain_mean:+.2f} ± {100 * gain_sd:.2f} points (paired by seed); "
            f"2 x combined sd = {200 * combined:.2f}: {'beyond' if gain_mean > 2 * combined else 'NOT beyond'} it"
        )
    seconds = {key: mean_sd([row[f"{key}_seconds"] for row in rows]) for key in ("distilled", "baseline")}
    lines.append(f"training time per run (mean): distilled {seconds['distilled'][0]:.0f} s, "
                 f"baseline {seconds['baseline'][0]:.0f} s")  # fmt: skip
    result["seconds"] = {key: value[0] for key, value in seconds.items()}
    (output / "results.json").write_text(json.dumps(result, indent=2))
    (output / "results.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="The row's name: runs go to outputs/seeds/<name>/seed<S>.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline_from", help="Reuse the baselines of this row (its name) instead of training "
                        "new ones: the same seeds and arguments, but for loss and teacher flags.")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=1, help="Seeds run at once (on a GPU that one small model "
                        "leaves mostly idle); their times then include each other's.")  # fmt: skip
    parser.add_argument("distill_args", nargs=argparse.REMAINDER, help="After --: examples/distill.py's arguments.")
    args = parser.parse_args()
    distill_args = args.distill_args[1:] if args.distill_args[:1] == ["--"] else args.distill_args
    if "--dataset_name" not in distill_args:
        raise SystemExit("pass distill.py's --dataset_name after --: the table is scored on its test split.")
    if len(args.seeds) < 2:
        raise SystemExit("--seeds: at least two (three for a table), or there is no standard deviation.")
    if args.baseline_from:
        check_shared_baselines(SEEDS_ROOT / args.baseline_from, args.seeds, distill_args)
    run_seeds(args.name, args.seeds, distill_args, args.baseline_from, args.parallel)
    print("\n".join(score_row(args.name, args.seeds, distill_args, args.baseline_from)))


if __name__ == "__main__":
    main()
