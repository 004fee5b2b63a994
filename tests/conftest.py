"""Shared pytest fixtures: paths to the real datasets the tests read, and an offline Hub."""

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hub_server import LocalHubServer, run_hub_client

# The tests never need the Hub; offline mode makes a Hub lookup fail at once instead of after network retries.
# Set before huggingface_hub is imported, which reads it once. Tests that talk to the local Hub server
# (tests/hub_server.py) keep it: their clients run in subprocesses with LocalHubServer.client_env().
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


# What a process prints when it aborts in torch's teardown at exit, after the script's work is done and the process
# group is destroyed (recipes.run_recipe): seen in 3 of about 90 two-process runs here, not reproduced on demand.
TEARDOWN_ABORT = "terminate called without an active exception"


def run_two_processes(script: str, arguments: list[str], output_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Runs examples/<script> on 2 CPU processes with torchrun (gloo) and fails the test on any error. One rerun, from
    an empty output folder, when a process aborted in teardown; any other failure, or that abort twice, fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(REPO_ROOT / "examples" / script), *arguments]  # fmt: skip
    for attempt in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
        if result.returncode == 0 or TEARDOWN_ABORT not in result.stderr or attempt == 1:
            break
        warnings.warn(f"{script}: a process aborted in teardown after its work; running it once more", stacklevel=2)
        shutil.rmtree(output_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


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


@pytest.fixture
def hub() -> Iterator[LocalHubServer]:
    """A fresh local Hub server per test; fails the test if a handler crashed or a client called an endpoint we
    lack."""
    with LocalHubServer() as server:
        yield server
    assert not server.internal_errors, "\n".join(server.internal_errors)
    assert not server.unhandled_requests, f"clients called endpoints the server lacks: {server.unhandled_requests}"


@pytest.fixture
def hub_env(hub: LocalHubServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a client process of `hub`, authenticated as its default user."""
    env = hub.client_env(tmp_path / "hf_home")
    env["OMP_NUM_THREADS"] = "1"  # clients that import torch must not compete with the machine's other jobs
    return env


@pytest.fixture
def client(hub_env: dict[str, str], tmp_path: Path) -> Callable[[str], str]:
    """Runs a client script against `hub`, authenticated as its default user; returns the script's stdout."""
    return lambda code: run_hub_client(code, hub_env, cwd=tmp_path)
