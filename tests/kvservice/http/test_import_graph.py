"""Issue 18's import rule, read from the sources with `ast`: cheroot (and `_pyio`, which its
readers build on) is imported by the cheroot adapter and at most the HTTP runner, nowhere else
in kvservice, so every contact with cheroot's internals lives in one small module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "kvservice"
CONFINED = ("cheroot", "_pyio")
ALLOWED = {"kvservice/http/cheroot_adapter.py", "kvservice/http/server.py"}


def imported_modules(source: str) -> set[str]:
    """Every module `source` imports, at any depth (inside functions and TYPE_CHECKING too)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def confined_imports(source: str) -> set[str]:
    return {module for module in imported_modules(source) if module.split(".")[0] in CONFINED}


def test_only_the_adapter_and_the_runner_import_cheroot() -> None:
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(found)
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := confined_imports(path.read_text(encoding="utf-8")))
        and str(path.relative_to(PACKAGE.parent)) not in ALLOWED
    }
    assert offenders == {}
    adapter = (PACKAGE / "http" / "cheroot_adapter.py").read_text(encoding="utf-8")
    assert confined_imports(adapter), "the adapter is where cheroot is: the rule checks it"


@pytest.mark.parametrize(
    "source",
    [
        "import cheroot",
        "from cheroot import wsgi",
        "import cheroot.server as s",
        "import _pyio",
        "def f():\n    from cheroot.wsgi import Gateway_10",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cheroot.errors",
    ],
)
def test_every_form_of_import_is_seen(source: str) -> None:
    assert confined_imports(source)


def test_other_imports_are_not_taken_for_cheroot() -> None:
    assert not confined_imports("import cherootish\nfrom . import cheroot_adapter\nimport pyio")
