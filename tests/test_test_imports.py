"""No test module imports from another test module: shared helpers live in tests/helpers.py, a
folder's helpers.py or naive.py, or a conftest.py."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: Imports still to move (file, module); none left.
PENDING: set[tuple[str, str]] = set()


def imported_modules(path: Path, root: Path = TESTS) -> list[str]:
    """The absolute names of the modules ``path`` (under ``root``, the tests folder) imports, relative
    imports resolved."""
    package = ["tests", *path.relative_to(root).parent.parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # ``from . import test_x`` imports the module test_x itself
            names += [f"{module}.{alias.name}" for alias in node.names] if not node.module else [module]
    return names


def test_no_test_module_imports_another():
    found = {(path.relative_to(TESTS.parent).as_posix(), name)
             for path in sorted(TESTS.rglob("*.py"))
             for name in imported_modules(path)
             if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")}
    assert found - PENDING == set(), "move these helpers to tests/helpers.py, a helpers module or a conftest"
    assert PENDING <= found, f"done, drop from PENDING: {sorted(PENDING - found)}"


def test_the_check_sees_absolute_relative_and_plain_imports(tmp_path):
    folder = tmp_path / "tests" / "train"
    folder.mkdir(parents=True)
    (folder / "test_x.py").write_text("import tests.losses.test_a\nfrom tests.train.test_b import f\n"
                                      "from .test_c import g\nfrom ..eval.test_d import h\nfrom . import test_e\n"
                                      "from .helpers import k\n")
    assert imported_modules(folder / "test_x.py", tmp_path / "tests") == [
        "tests.losses.test_a", "tests.train.test_b", "tests.train.test_c", "tests.eval.test_d", "tests.train.test_e",
        "tests.train.helpers"]
