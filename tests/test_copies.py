"""Each model folder is self-contained (its files are copied beside the weights for `trust_remote_code`), so a few
helpers exist in several of them. A `# Copied from module.name` line above a copy promises it equals the original;
this keeps the promise (transformers' `check_copies` does the same for its models), and the shipped teacher's code is
the package's."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = sorted((REPO / "hf_vision_distill" / "models").glob("*/modeling_*.py"))
COPIED_FROM = re.compile(r"^# Copied from ([\w.]+)\.(\w+)$")


def copies() -> list[tuple[Path, str, str, str]]:
    """(file, function name, original module, original name) for every marked copy."""
    found = []
    for path in MODEL_FILES:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = COPIED_FROM.match(line.strip())
            if match:
                name = re.match(r"\s*(?:def|class) (\w+)", lines[number + 1]).group(1)
                found.append((path, name, match.group(1), match.group(2)))
    return found


def test_there_are_copies_to_check():
    assert len(copies()) >= 6  # take_indices and classification_loss in three families each


@pytest.mark.parametrize(("path", "name", "module", "original"), copies(), ids=lambda value: str(value)[-40:])
def test_a_copy_equals_its_original(path, name, module, original):
    source = path.read_text()
    tree = ast.parse(source)
    [node] = [node for node in tree.body if getattr(node, "name", None) == name]
    copy = ast.get_source_segment(source, node).replace(name, original)
    expected = inspect.getsource(getattr(importlib.import_module(module), original))
    assert copy.strip() == expected.strip(), f"{path.name}:{name} differs from {module}.{original}; copy it again"


SHIPPED_TEACHERS = [("vit-cifar-teacher", "vit"), ("cnn-cifar10-teacher", "airbench_cnn")]


@pytest.mark.parametrize(("teacher", "family"), SHIPPED_TEACHERS)
def test_the_shipped_teachers_code_is_the_packages(teacher, family):
    for name in (f"modeling_{family}.py", f"configuration_{family}.py"):
        shipped = (REPO / "pretrained" / teacher / name).read_text()
        assert shipped == (REPO / "hf_vision_distill" / "models" / family / name).read_text(), name
