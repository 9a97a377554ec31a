"""The parts' import contracts (docs/design.md), checked over the source's syntax trees, so a violation fails
here before it reaches a user: core imports no other part; registry imports neither runner nor tui; runner
reaches the registry only through its store; runner and registry never import textual; the app imports only
the runner's small face and no heavy library when a module loads; and no two modules import each other, even
through an import inside a function. Each rule is also shown catching a deliberate violation in a small
source tree made for it, so a rule that stopped seeing anything would fail too."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("core", "runner", "registry", "tui")
HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "safetensors")
OLD_TOP_LEVEL = ("runner", "registry", "tui", "core")
# What the app may import of the runner: reading runs (events, run dirs), launching them (directly, on resume,
# through the queue, after the distributed pre-flight, as a Slurm script), planning memory before a launch, and
# the data preview's report. Training itself (train, methods, model, callbacks, ...) only runs in the child.
RUNNER_FACE = (
    "qlora_tui.runner.events", "qlora_tui.runner.rundir", "qlora_tui.runner.launch", "qlora_tui.runner.resume_rule",
    "qlora_tui.runner.queue.entries", "qlora_tui.runner.queue.runner", "qlora_tui.runner.dist.plan",
    "qlora_tui.runner.dist.slurm", "qlora_tui.runner.estimate.memory", "qlora_tui.runner.estimate.plan",
    "qlora_tui.runner.data.preflight",
    "qlora_tui.runner.data.preview",
)
REGISTRY_LIGHT = ("store", "records", "errors", "staging", "integrity", "diff", "basemodel", "quant", "worker")


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # as written; `from a.b import c` also yields a.b.c when that is a module of ours
    at_load: bool  # runs when the importing module loads (not inside a function)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(["qlora_tui", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def modules_of(root: Path, part: str) -> list[Path]:
    return sorted((root / part).rglob("*.py"))


def imports(root: Path, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    for node in ast.walk(tree):
        at_load = id(node) not in inside
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, at_load)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield Import(path, node.lineno, node.module, at_load)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    yield Import(path, node.lineno, f"{node.module}.{alias.name}", at_load)


def all_imports(root: Path, part: str) -> list[Import]:
    known = {module_name(root, p) for q in PARTS for p in modules_of(root, q)}
    return [i for p in modules_of(root, part) for i in imports(root, p, known)]


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(root: Path, part: str, forbidden: tuple[str, ...], *, allowed: tuple[str, ...] = (),
               at_load_only: bool = False) -> list[str]:
    return [f"{i.path.relative_to(root)}:{i.line}: imports {i.module}" for i in all_imports(root, part)
            if within(i.module, forbidden) and not within(i.module, allowed) and (i.at_load or not at_load_only)]


def import_cycles(root: Path) -> list[list[str]]:
    """Every set of our modules that import each other, directly or round a loop (imports inside functions
    count: they only hide the loop until the function runs)."""
    paths = {module_name(root, p): p for part in PARTS for p in modules_of(root, part)}
    packages = {m for m, p in paths.items() if p.name == "__init__.py"}
    graph = {m: {i.module for i in imports(root, p, set(paths)) if i.module in paths and i.module != m
                 and i.module not in packages} for m, p in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def core_imports_no_other_part(root: Path) -> list[str]:
    return violations(root, "core", ("qlora_tui.runner", "qlora_tui.registry", "qlora_tui.tui"))


def registry_imports_neither_runner_nor_tui(root: Path) -> list[str]:
    return violations(root, "registry", ("qlora_tui.runner", "qlora_tui.tui"))


def runner_reaches_the_registry_only_through_its_store(root: Path) -> list[str]:
    return violations(root, "runner", ("qlora_tui.tui", "qlora_tui.registry"), allowed=("qlora_tui.registry.store",))


def runner_and_registry_never_import_textual(root: Path) -> list[str]:
    return violations(root, "runner", ("textual",)) + violations(root, "registry", ("textual",))


def app_imports_only_the_runner_face(root: Path) -> list[str]:
    return violations(root, "tui", ("qlora_tui.runner",), allowed=RUNNER_FACE)


def no_heavy_library_when_a_module_loads(root: Path, part: str) -> list[str]:
    return violations(root, part, HEAVY, at_load_only=True)


def the_registry_metadata_half_loads_light(root: Path) -> list[str]:
    return [f"{i.path.relative_to(root)}:{i.line}: imports {i.module}" for i in all_imports(root, "registry")
            if i.path.stem in REGISTRY_LIGHT and i.at_load and i.module.split(".")[0] in HEAVY]


# ---------------------------------------------------------------- the contracts, on our source


def test_core_imports_no_other_part() -> None:
    assert core_imports_no_other_part(ROOT) == []


def test_registry_imports_neither_runner_nor_tui() -> None:
    assert registry_imports_neither_runner_nor_tui(ROOT) == []


def test_runner_reaches_the_registry_only_through_its_store() -> None:
    assert runner_reaches_the_registry_only_through_its_store(ROOT) == []


def test_runner_and_registry_never_import_textual() -> None:
    assert runner_and_registry_never_import_textual(ROOT) == []


def test_the_app_imports_only_the_runner_face() -> None:
    assert app_imports_only_the_runner_face(ROOT) == []
    face = [name.removeprefix("qlora_tui.").replace(".", "/") + ".py" for name in RUNNER_FACE]
    assert [f for f in face if not (ROOT / f).is_file()] == []  # the face names modules that exist


@pytest.mark.parametrize("part", ["tui", "core"])
def test_no_heavy_library_when_a_module_loads(part: str) -> None:
    assert no_heavy_library_when_a_module_loads(ROOT, part) == []


def test_the_registry_metadata_half_loads_light() -> None:
    assert the_registry_metadata_half_loads_light(ROOT) == []


def test_no_two_modules_import_each_other() -> None:
    assert import_cycles(ROOT) == []


# ---------------------------------------------------------------- each rule catches a violation


@pytest.fixture
def broken_tree(tmp_path: Path) -> Path:
    """A source tree with one violation of each rule (and one clean module per part, which must not be named)."""
    files = {
        "core/ok.py": "import json\n",
        "core/reaches_out.py": "from qlora_tui.runner.events import read_events\n",
        "core/heavy.py": "import torch\n",
        "registry/ok.py": "def f():\n    import torch\n",
        "registry/store.py": "import transformers\n",
        "registry/uses_runner.py": "def f():\n    from qlora_tui.runner.train import run_training\n",
        "registry/screen.py": "from textual.app import App\n",
        "runner/__init__.py": "",
        "runner/events.py": "from qlora_tui.registry.store import open_store\n",
        "runner/train.py": "def f():\n    from qlora_tui.registry.merge import merge_version\n",
        "runner/a.py": "from qlora_tui.runner.b import x\n",
        "runner/b.py": "def f():\n    from qlora_tui.runner.a import y\n",
        "tui/ok.py": "from qlora_tui.runner.events import read_events\ndef f():\n    import torch\n",
        "tui/trains.py": "from qlora_tui.runner import train\n",
        "tui/heavy.py": "import peft\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_each_rule_names_the_deliberate_violation(broken_tree: Path) -> None:
    assert core_imports_no_other_part(broken_tree) == ["core/reaches_out.py:1: imports qlora_tui.runner.events"]
    assert registry_imports_neither_runner_nor_tui(broken_tree) == [
        "registry/uses_runner.py:2: imports qlora_tui.runner.train"]
    assert runner_reaches_the_registry_only_through_its_store(broken_tree) == [
        "runner/train.py:2: imports qlora_tui.registry.merge"]
    assert runner_and_registry_never_import_textual(broken_tree) == ["registry/screen.py:1: imports textual.app"]
    assert app_imports_only_the_runner_face(broken_tree) == [
        "tui/trains.py:1: imports qlora_tui.runner", "tui/trains.py:1: imports qlora_tui.runner.train"]
    assert no_heavy_library_when_a_module_loads(broken_tree, "tui") == ["tui/heavy.py:1: imports peft"]
    assert no_heavy_library_when_a_module_loads(broken_tree, "core") == ["core/heavy.py:1: imports torch"]
    assert the_registry_metadata_half_loads_light(broken_tree) == ["registry/store.py:1: imports transformers"]
    assert import_cycles(broken_tree) == [["qlora_tui.runner.a", "qlora_tui.runner.b"]]


# ---------------------------------------------------------------- packaging


BARE_IN_CODE_STRING = re.compile(r"(\b(from|import)\s+|-m\s+|\"-m\",\s*\")(runner|registry|tui|core)\b")


def test_everything_imports_the_installed_namespace() -> None:
    """A bare top-level name (runner, tui) would find whatever distribution owns that name, or only work from a checkout
    (also in code handed to a child interpreter as a string, which a checkout's cwd would hide)."""
    found = []
    for folder in (*PARTS, "tests", "bench", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    names = []
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: imports {n}" for n in names
                          if n.split(".")[0] in OLD_TOP_LEVEL]
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        BARE_IN_CODE_STRING.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert found == []


def test_the_tests_run_this_checkout() -> None:
    """The README installs the checkout editable: a copy installed before an edit would test stale code."""
    import qlora_tui.core
    import qlora_tui.runner

    assert Path(qlora_tui.runner.__file__).resolve().parent == ROOT / "runner"
    assert Path(qlora_tui.core.__file__).resolve().parent == ROOT / "core"


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {folder: name for name, folder in config["package-dir"].items()}
    expected = set()
    for part in PARTS:
        for init in (ROOT / part).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT).parts
            expected.add(".".join([mapping[relative[0]], *relative[1:]]))
    assert expected - set(config["packages"]) == set()
