"""The app imports the registry's metadata half: none of it may pull in torch & co. at import time."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import qlora_tui.registry

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "safetensors", "huggingface_hub", "textual")


def test_no_registry_module_imports_heavy_libraries() -> None:
    modules = sorted(f"qlora_tui.registry.{m.name}" for m in pkgutil.iter_modules(qlora_tui.registry.__path__))
    assert {f"qlora_tui.registry.{m}" for m in ("store", "merge", "compare", "push", "worker")} <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules + ['qlora_tui.tui.commands.registry_ops']!r}: importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
