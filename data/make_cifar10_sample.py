# Copyright 2025 The hf_vision_distill Authors.
# SPDX-License-Identifier: Apache-2.0
"""Regenerate `data/cifar10-sample`: the first rows of a Hub-layout CIFAR-10 repository, JPEG bytes copied as they are.

    python data/make_cifar10_sample.py                         # from ../shared/datasets/cifar10
    python data/make_cifar10_sample.py --source /path/to/cifar10 --num_train 5000 --num_test 1000

The source must be laid out like the Hub's `uoft-cs/cifar10` in JPEG form: `plain_text/{train,test}-*.parquet` with
the columns `img` (a datasets Image: `{"bytes", "path"}`) and `label` (a ClassLabel). Its rows are already shuffled,
so the first N are roughly class-balanced; the card written next to the data states the exact class counts.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "datasets" / "cifar10"
DEFAULT_OUTPUT = REPO_ROOT / "data" / "cifar10-sample"
CONFIG_NAME = "plain_text"


def read_first_rows(source: Path, split: str, num_rows: int) -> pa.Table:
    """Read the first `num_rows` rows of a split, keeping the schema and its datasets `huggingface` metadata."""
    files = sorted((source / CONFIG_NAME).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no {CONFIG_NAME}/{split}-*.parquet under {source}; pass --source <a Hub-layout CIFAR-10 folder>."
        )
    batches, remaining, schema = [], num_rows, None
    for file in files:
        parquet_file = pq.ParquetFile(file)
        schema = schema or parquet_file.schema_arrow
        for batch in parquet_file.iter_batches(batch_size=min(remaining, 10_000)):
            batches.append(batch.slice(0, remaining))
            remaining -= len(batches[-1])
            if remaining == 0:
                return pa.Table.from_batches(batches, schema=schema)
    raise ValueError(f"split '{split}' of {source} has only {num_rows - remaining} rows, fewer than {num_rows}.")


def class_names_from_schema(schema: pa.Schema) -> list[str]:
    info = json.loads(schema.metadata[b"huggingface"])
    return info["info"]["features"]["label"]["names"]


def render_card(class_names: list[str], counts: dict[str, Counter], sizes: dict[str, int]) -> str:
    names_yaml = "\n".join(f"          '{index}': {name}" for index, name in enumerate(class_names))
    header = "| class | " + " | ".join(counts) + " |\n|---|" + "---:|" * len(counts)
    rows = "\n".join(
        f"| {index} {name} | " + " | ".join(str(counts[split][index]) for split in counts) + " |"
        for index, name in enumerate(class_names)
    )
    totals = "| total | " + " | ".join(str(sum(counter.values())) for counter in counts.values()) + " |"
    size_lines = ", ".join(f"{split} {size / 1e6:.2f} MB" for split, size in sizes.items())
    return f"""---
pretty_name: CIFAR-10 sample (JPEG)
task_categories:
- image-classification
size_categories:
- 1K<n<10K
configs:
- config_name: {CONFIG_NAME}
  data_files:
  - split: train
    path: {CONFIG_NAME}/train-*
  - split: test
    path: {CONFIG_NAME}/test-*
  default: true
dataset_info:
  config_name: {CONFIG_NAME}
  features:
  - name: img
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names_yaml}
---

# CIFAR-10 sample, laid out as a Hub dataset repository

A small slice of CIFAR-10 shipped with `hf_vision_distill` for tests, examples and quick runs: the first
{sum(counts["train"].values()):,} train rows and the first {sum(counts["test"].values()):,} test rows of the JPEG
CIFAR-10 repository in `../shared/datasets/cifar10` (32x32 RGB, 10 classes). Columns and class names are those of the
Hub's `uoft-cs/cifar10` (`img`, `label`); the JPEG bytes are copied unchanged, not re-encoded. Parquet files:
{size_lines}.

```python
from hf_vision_distill.data import load_image_classification_dataset

data = load_image_classification_dataset("data/cifar10-sample")  # train, validation (10% of train), test
raw = datasets.load_dataset("data/cifar10-sample")  # the same code path as a Hub repo id
```

The source rows are shuffled with a fixed seed, so these first rows are roughly class-balanced. Rows per class:

{header}
{rows}
{totals}

Regenerate it (byte-identical rows, same order) with

    python data/make_cifar10_sample.py --source ../shared/datasets/cifar10

Source of the images: the CIFAR-10 dataset, Alex Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
technical report, University of Toronto, 2009 (https://www.cs.toronto.edu/~kriz/cifar.html), in a public JPEG export.
The pixels went through JPEG encoding once, so they differ slightly from the original binary release.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Hub-layout CIFAR-10 folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write the sample to")
    parser.add_argument("--num_train", type=int, default=5000, help="first rows of the train split to keep")
    parser.add_argument("--num_test", type=int, default=1000, help="first rows of the test split to keep")
    args = parser.parse_args(argv)

    counts, sizes, class_names = {}, {}, None
    for split, num_rows in (("train", args.num_train), ("test", args.num_test)):
        table = read_first_rows(args.source, split, num_rows)
        class_names = class_names or class_names_from_schema(table.schema)
        path = args.output / CONFIG_NAME / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        # No column statistics: min/max of the image bytes would store two whole JPEGs per column chunk.
        pq.write_table(table, path, compression="zstd", write_statistics=["label"])
        counts[split] = Counter(table.column("label").to_pylist())
        sizes[split] = path.stat().st_size
        print(f"{split}: {table.num_rows} rows, {sizes[split] / 1e6:.2f} MB -> {path}")
    (args.output / "README.md").write_text(render_card(class_names, counts, sizes))
    print(f"wrote {args.output / 'README.md'}")


if __name__ == "__main__":
    main()
