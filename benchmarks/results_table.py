"""Issue 14's results table (section 4) in one call: its rows on full CIFAR-10, 3 seeds each, against same-budget
baselines, run as `distill_seeds.py` runs a row but all rows' seeds at once, `--parallel` processes at a
time (a compact-cnn step leaves an H200 mostly idle), then each finished row scored on the 10,000 test images.

    # on the GPU machine (benchmarks/README.md: "The results table"), CIFAR-10 carried in .device_data/
    python benchmarks/results_table.py --dataset_name .device_data/cifar10 --parallel 8 -- --bf16
    # a CPU dry run as tests/test_results_table.py makes it (two rows, tiny sizes), its runs kept apart
    python benchmarks/results_table.py --dataset_name data/cifar10-sample --rows dkd --seeds 0 1 \
        --runs_dir /tmp/dry -- --max_train_samples 48 ...

Rows (ROWS): CNN teacher -> compact-cnn with KD, DKD, KD + logit standardisation, DKD + logit standardisation, reverse
KL and the main job's KD at T 1 with feature distillation; the ViT teacher -> compact-cnn with entropy-weighted,
uniform and no attention alignment; the CNN teacher cached offline on augmented views against the live one (KD); CNN
teacher -> the CIFAR ViT with DeiT's distillation token and hard distillation. The `kd` row trains the compact-cnn
baselines (the same student from the same start on labels alone), which the other compact-cnn rows, differing from it
only in loss and teacher flags, reuse; the DeiT row trains its own (the same ViT on labels alone).
Runs finished with the same arguments are not run again, so a call cut off by its timeout resumes where it stopped
(one finished with other arguments is refused); no run starts after `--time_budget` seconds; a failed run or row is
reported and the others go on. Writes `results_table.md` and `.json` (every row scored, in ROWS' order) to
`--output_dir` (default `$OUT` when set, else the runs' folder) after each row is scored, and `runs.jsonl` (each
run's outcome, start and wall time) as each run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import distill_seeds

CNN_TEACHER = ["--teacher_model_name_or_path", "pretrained/cnn-cifar10-teacher"]
VIT_TEACHER = ["--teacher_model_name_or_path", "pretrained/vit-cifar-teacher"]
DEIT_STUDENT = ["--model_name_or_path", "vit-cifar", "--config_overrides", '{"distillation_token": true}']
# Every row's losses start here, not from distill.py's defaults, so the table measures the same thing whatever the
# main job's recipe becomes: labels and KD at T 4, half and half, no feature or attention term (a row's flags, after
# these, win).
KD = ["--label_loss_weight", "0.5", "--soft_loss_weight", "0.5", "--temperature", "4", "--feature_loss_weight", "0",
      "--attention_loss_weight", "0"]  # fmt: skip
# name -> (what it is, distill.py flags beyond the shared ones). A row in BASELINE_ROWS trains its own baselines;
# every other row reuses the first one's.
ROWS = {
    "kd": ("CNN teacher -> compact-cnn, KD (T = 4)", [*CNN_TEACHER, *KD]),
    "dkd": ("CNN teacher -> compact-cnn, DKD", [*CNN_TEACHER, *KD, "--soft_loss_type", "dkd"]),
    "kd-ls": ("CNN teacher -> compact-cnn, KD + logit standardisation (T = 2)",
              [*CNN_TEACHER, *KD, "--logit_standardization", "--temperature", "2"]),
    "dkd-ls": ("CNN teacher -> compact-cnn, DKD + logit standardisation (T = 2)",
               [*CNN_TEACHER, *KD, "--soft_loss_type", "dkd", "--logit_standardization", "--temperature", "2"]),
    "reverse-kl": ("CNN teacher -> compact-cnn, reverse KL", [*CNN_TEACHER, *KD, "--soft_loss_type", "reverse_kl"]),
    "kd-t1-features": ("CNN teacher -> compact-cnn, KD at T = 1 + the last feature map (the main job's recipe)",
                       [*CNN_TEACHER, *KD, "--temperature", "1", "--feature_loss_weight", "1"]),
    "vit-entropy": ("ViT teacher -> compact-cnn, KD + attention, entropy-weighted layers",
                    [*VIT_TEACHER, *KD, "--attention_loss_weight", "0.1", "--layer_weighting", "entropy"]),
    "vit-uniform": ("ViT teacher -> compact-cnn, KD + attention, uniform layers",
                    [*VIT_TEACHER, *KD, "--attention_loss_weight", "0.1", "--layer_weighting", "uniform"]),
    "vit-no-attention": ("ViT teacher -> compact-cnn, KD alone", [*VIT_TEACHER, *KD]),
    "offline-kd": ("CNN teacher cached on 8 augmented views -> compact-cnn, KD",
                   [*CNN_TEACHER, *KD, "--offline_teacher", "--offline_teacher_views", "8"]),
    "deit-hard": ("CNN teacher -> CIFAR ViT with a distillation token, DeiT's hard distillation; baseline: the same "
                  "ViT on labels alone",
                  [*DEIT_STUDENT, *CNN_TEACHER, *KD, "--label_loss_weight", "0.5", "--hard_loss_weight", "0.5",
                   "--soft_loss_weight", "0"]),
}  # fmt: skip
BASELINE_ROWS = ("kd", "deit-hard")  # kd's students are every compact-cnn row's baselines


def baselines_of(row: str) -> str:
    """The row whose baseline students `row` is compared with."""
    return row if row in BASELINE_ROWS else BASELINE_ROWS[0]


def table_lines(scored: dict[str, dict], order: list[str]) -> list[str]:
    """The markdown table of the scored rows, in `order`: mean ± sd over seeds in points, best and last
    checkpoints."""

    def cell(pair: list[float]) -> str:
        return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"

    lines = ["| row | distilled, best | baseline, best | gain, best | distilled, last | baseline, last | gain, last "
             "| beyond 2 x combined sd (best / last) | seconds per run (distilled / baseline) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]  # fmt: skip
    for name in [name for name in order if name in scored]:
        result = scored[name]
        best, last = result["best"], result["last"]
        beyond = " / ".join("yes" if each["beyond_twice_combined_sd"] else "no" for each in (best, last))
        lines.append(
            f"| {ROWS[name][0]} | {cell(best['distilled'])} | {cell(best['baseline'])} | {cell(best['gain'])} | "
            f"{cell(last['distilled'])} | {cell(last['baseline'])} | {cell(last['gain'])} | {beyond} | "
            f"{result['seconds']['distilled']:.0f} / {result['seconds']['baseline']:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset_name", required=True, help="CIFAR-10 (a Hub-style folder), scored on its test split."
    )
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_train_epochs", default="3")
    parser.add_argument("--parallel", type=int, default=1, help="distill.py processes at once.")
    parser.add_argument("--time_budget", type=float, default=float("inf"), help="No run starts after this many s.")
    parser.add_argument("--runs_dir", type=Path, default=distill_seeds.SEEDS_ROOT,
                        help="Where the runs go, a row per folder (a dry run's elsewhere: a run finished with other "
                        "arguments is refused).")  # fmt: skip
    parser.add_argument("--output_dir", type=Path, default=os.environ.get("OUT"), help="Where the table goes. "
                        "Default: $OUT, else --runs_dir.")  # fmt: skip
    parser.add_argument("distill_args", nargs=argparse.REMAINDER, help="After --: more distill.py arguments, for "
                        "every run (precision, input pipeline, sizes of a dry run).")  # fmt: skip
    args = parser.parse_args(argv)
    runs = args.runs_dir
    output_dir = Path(args.output_dir or runs)
    extra = args.distill_args[1:] if args.distill_args[:1] == ["--"] else args.distill_args
    if len(args.seeds) < 2:
        raise SystemExit("--seeds: at least two (three for the table), or there is no standard deviation.")
    needed = {*args.rows, *(baselines_of(row) for row in args.rows)}  # a row's baselines come with it
    rows = [row for row in ROWS if row in needed]
    shared = ["--dataset_name", args.dataset_name, "--num_train_epochs", args.num_train_epochs, *extra]
    arguments = {row: [*ROWS[row][1], *shared] for row in rows}

    start = time.time()

    output_dir.mkdir(parents=True, exist_ok=True)
    progress = output_dir / "runs.jsonl"  # each run's outcome and wall time as it ends: what a cut-off call tells

    def run(row: str, seed: int) -> bool:
        if time.time() - start > args.time_budget:
            print(f"{row} seed {seed}: not started (--time_budget {args.time_budget:.0f} s spent)", flush=True)
            return False
        began, outcome = time.time(), "finished"
        try:
            distill_seeds.run_seed(seed, runs / row / f"seed{seed}", arguments[row], baseline=row in BASELINE_ROWS)
        except (Exception, SystemExit) as error:  # the other runs go on; a failed run's log says why
            print(f"{row} seed {seed}: failed ({error})", flush=True)
            outcome = f"failed: {error}"
        with open(progress, "a") as file:
            file.write(json.dumps({"row": row, "seed": seed, "outcome": outcome, "started_s": round(began - start),
                                   "wall_s": round(time.time() - began)}) + "\n")  # fmt: skip
        return outcome == "finished"

    scored, finished, failed = {}, {}, {}

    def score_ready_rows() -> None:
        """Scores each row whose runs and baselines have all finished, and rewrites the table: a call cut off by its
        timeout still returns the rows done by then."""
        for row in rows:
            if row in scored or row in failed or not all(finished.get((each, seed)) for seed in args.seeds
                                                         for each in (row, baselines_of(row))):  # fmt: skip
                continue
            baseline_from = None if row in BASELINE_ROWS else baselines_of(row)
            try:
                if baseline_from:
                    distill_seeds.check_shared_baselines(runs / baseline_from, args.seeds, arguments[row])
                distill_seeds.score_row(row, args.seeds, arguments[row], baseline_from, root=runs)
            except (Exception, SystemExit) as error:  # the other rows are still scored
                print(f"{row}: not scored ({error})", flush=True)
                failed[row] = str(error)
                continue
            scored[row] = json.loads((runs / row / "results.json").read_text())
            header = (f"Rows: {args.dataset_name}, seeds {args.seeds}, {args.num_train_epochs} epochs, arguments for "
                      f"every run: {' '.join(extra) or '(none)'}")  # fmt: skip
            lines = [header, "", *table_lines(scored, rows)]
            (output_dir / "results_table.md").write_text("\n".join(lines) + "\n")
            (output_dir / "results_table.json").write_text(json.dumps({name: scored[name] for name in rows
                                                                       if name in scored}, indent=2))  # fmt: skip

    # The baseline rows' seeds first: the longest runs (each trains two students), and other rows are scored on them.
    jobs = sorted(((row, seed) for row in rows for seed in args.seeds), key=lambda job: job[0] not in BASELINE_ROWS)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(run, *job): job for job in jobs}
        for future in as_completed(futures):
            finished[futures[future]] = future.result()
            score_ready_rows()
    print("\n".join(table_lines(scored, rows)), flush=True)
    missing = [row for row in rows if row not in scored and row not in failed]
    if missing:
        print(f"not finished: {missing}; rerun the same command to resume.", file=sys.stderr)
    if failed:
        print(f"not scored: {failed}", file=sys.stderr)
    return {name: scored[name] for name in rows if name in scored}


if __name__ == "__main__":
    main()
