"""Shared pytest fixtures: paths to the real datasets the tests read, and an offline Hub."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# The tests never need the Hub; offline mode makes a Hub lookup fail at once instead of after network retries.
# Set before huggingface_hub is imported, which reads it once. Tests of a local Hub server override it themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The workspace keeps Hub-layout dataset repositories beside the repository: ../shared/datasets/<name>.
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def _shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not (path / "README.md").is_file():
        pytest.skip(f"shared dataset not available: {path} (expected a Hub-layout dataset repository there)")
    return path


def load_example(name: str):
    """Imports examples/<name>.py as a module, so tests call its main(argv)."""
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the recipe's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cifar10_path() -> Path:
    """`../shared/datasets/cifar10`: CIFAR-10 as JPEG parquet, columns `img` and `label`; skips when absent."""
    return _shared_dataset("cifar10")


@pytest.fixture(scope="session")
def fashion_mnist_path() -> Path:
    """`../shared/datasets/fashion_mnist`: grayscale PNG parquet, columns `image` and `label`; skips when absent."""
    return _shared_dataset("fashion_mnist")


@pytest.fixture(scope="session")
def cifar10_sample_path() -> Path:
    """The CIFAR-10 sample shipped in `data/cifar10-sample` (5,000 train and 1,000 test rows)."""
    return REPO_ROOT / "data" / "cifar10-sample"
