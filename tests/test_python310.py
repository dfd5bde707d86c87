"""The package runs on Python 3.10 (pyproject's requires-python): its modules parse with 3.10's
grammar and use none of the standard library names that 3.11 or later added. The tests run on
3.11, where these would import fine, so the check reads the source instead of importing it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("python", "tools", "tests") for p in (ROOT / d).rglob("*.py"))

# module -> names added in Python 3.11+ (imported `from module import name` or used `module.name`)
NEWER = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform", "override", "get_overloads",
               "clear_overloads", "TypeAliasType"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Timeout", "Runner", "Barrier"},
    "enum": {"StrEnum", "ReprEnum", "verify", "member", "nonmember", "global_enum", "EnumCheck", "FlagBoundary"},
    "datetime": {"UTC"},
    "hashlib": {"file_digest"},
    "contextlib": {"chdir"},
    "itertools": {"batched"},
    "operator": {"call"},
    "math": {"exp2", "cbrt"},
    "sys": {"exception"},
    "logging": {"getLevelNamesMapping"},
    "inspect": {"getmembers_static", "markcoroutinefunction"},
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _problems(path: Path) -> list[str]:
    source = path.read_text()
    try:
        tree = ast.parse(source, str(path), feature_version=(3, 10))  # except*, PEP 695 ... are errors
    except SyntaxError as exc:
        return [f"{exc.lineno}: syntax newer than Python 3.10 ({exc.msg})"]
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name in NEWER_MODULES]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if node.module in NEWER_MODULES:
                found.append(f"{line}: from {node.module} import ...")
            found += [f"{line}: from {node.module} import {a.name}" for a in node.names
                      if a.name in NEWER.get(node.module or "", ())]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in NEWER.get(node.value.id, ()):
                found.append(f"{line}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            found.append(f"{line}: {node.id}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runs_on_python_310(path):
    assert not _problems(path), f"{path.relative_to(ROOT)}: {_problems(path)}"


def test_the_check_sees_newer_python(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import tomllib\nfrom typing import Self\nimport datetime\nx = datetime.UTC\n"
                   "try:\n    pass\nexcept* ValueError:\n    pass\n")
    assert _problems(bad) and "syntax" in _problems(bad)[0]
    bad.write_text("import tomllib\nfrom typing import Self\nimport datetime\nx = datetime.UTC\n")
    assert len(_problems(bad)) == 3
