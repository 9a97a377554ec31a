"""The parts' import contracts (DESIGN.md), checked over the source's syntax trees, so a violation fails
here before it reaches a user: core imports no other part; registry imports neither runner nor tui; runner
reaches the registry only through its store; tui never imports a heavy library when a module loads."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("core", "runner", "registry", "tui")
HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "safetensors")
OLD_TOP_LEVEL = ("runner", "registry", "tui", "core")


def modules_of(part: str) -> list[Path]:
    return sorted((ROOT / part).rglob("*.py"))


def imports(path: Path, *, module_level_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a file; with module_level_only, those that run when it loads
    (not inside a function), which is what decides whether importing the module pulls in torch."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes: list[ast.AST] = []
    if module_level_only:
        stack: list[ast.AST] = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def violations(part: str, forbidden: tuple[str, ...], *, allowed: tuple[str, ...] = (),
               module_level_only: bool = False) -> list[str]:
    found = []
    for path in modules_of(part):
        for line, module in imports(path, module_level_only=module_level_only):
            hit = any(module == f or module.startswith(f + ".") for f in forbidden)
            if hit and not any(module == a or module.startswith(a + ".") for a in allowed):
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return found


def test_core_imports_no_other_part() -> None:
    assert violations("core", ("qlora_tui.runner", "qlora_tui.registry", "qlora_tui.tui")) == []


def test_registry_imports_neither_runner_nor_tui() -> None:
    assert violations("registry", ("qlora_tui.runner", "qlora_tui.tui")) == []


def test_runner_reaches_the_registry_only_through_its_store() -> None:
    assert violations("runner", ("qlora_tui.tui", "qlora_tui.registry"), allowed=("qlora_tui.registry.store",)) == []


@pytest.mark.parametrize("part", ["tui", "core"])
def test_no_heavy_library_when_a_module_loads(part: str) -> None:
    assert violations(part, HEAVY, module_level_only=True) == []


def test_the_registry_metadata_half_loads_light() -> None:
    light = [p for p in modules_of("registry") if p.stem in ("store", "records", "errors", "staging", "integrity",
                                                               "diff", "basemodel", "quant", "worker")]
    found = [f"{p.relative_to(ROOT)}:{line}: imports {m}" for p in light
             for line, m in imports(p, module_level_only=True) if m.split(".")[0] in HEAVY]
    assert found == []


BARE_IN_CODE_STRING = re.compile(r"(\b(from|import)\s+|-m\s+|\"-m\",\s*\")(runner|registry|tui|core)\b")


def test_everything_imports_the_installed_namespace() -> None:
    """A bare top-level name (runner, tui) would find whatever distribution owns that name, or only work from a checkout
    (also in code handed to a child interpreter as a string, which a checkout's cwd would hide)."""
    found = []
    for folder in (*PARTS, "tests", "bench", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, module in imports(path):
                if module.split(".")[0] in OLD_TOP_LEVEL:
                    found.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        BARE_IN_CODE_STRING.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert found == []


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {folder: name for name, folder in config["package-dir"].items()}
    expected = set()
    for part in PARTS:
        for init in (ROOT / part).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT).parts
            expected.add(".".join([mapping[relative[0]], *relative[1:]]))
    assert expected - set(config["packages"]) == set()
