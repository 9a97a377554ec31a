"""The carried wheels' bookkeeping: a slimmed wheel still installs and lists exactly its files, the dependencies
read from a wheel follow the box's platform and the extras asked for."""

from __future__ import annotations

import csv
import importlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def gpu_wheels(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/gpu_wheels.py, imported as the script imports its neighbours (bench/ on the path)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("gpu_wheels")


def make_wheel(folder: Path) -> Path:
    """A small real wheel: a package with a CPU and two CUDA libraries, and its RECORD."""
    wheel = folder / "fakebnb-1.0-py3-none-any.whl"
    files = {"fakebnb/__init__.py": b"VERSION = '1.0'\n", "fakebnb/libbitsandbytes_cpu.so": b"cpu",
             "fakebnb/libbitsandbytes_cuda130.so": b"13" * 100, "fakebnb/libbitsandbytes_cuda118.so": b"11" * 5000,
             "fakebnb-1.0.dist-info/METADATA": (
                 b"Metadata-Version: 2.1\nName: fakebnb\nVersion: 1.0\nRequires-Dist: numpy>=1.17\n"
                 b"Requires-Dist: colorama; sys_platform == 'win32'\nRequires-Dist: tomli; python_version < '3.11'\n"
                 b"Requires-Dist: rich; extra == 'pretty'\n"),
             "fakebnb-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}
    record = io.StringIO()
    csv.writer(record, lineterminator="\n").writerows([[n, "", str(len(c))] for n, c in files.items()]
                                                       + [["fakebnb-1.0.dist-info/RECORD", "", ""]])
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in files.items():
            z.writestr(name, content)
        z.writestr("fakebnb-1.0.dist-info/RECORD", record.getvalue())
    return wheel


def test_a_slimmed_wheel_lists_only_the_files_it_kept_and_still_installs(tmp_path: Path, gpu_wheels: ModuleType
                                                                           ) -> None:
    module = gpu_wheels
    wheel = make_wheel(tmp_path)
    saved = module.slim(wheel, module.bnb_keep)
    assert saved > 0
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        recorded = {row[0] for row in csv.reader(io.StringIO(z.read("fakebnb-1.0.dist-info/RECORD").decode()))}
    assert "fakebnb/libbitsandbytes_cuda118.so" not in names | recorded
    assert {"fakebnb/libbitsandbytes_cpu.so", "fakebnb/libbitsandbytes_cuda130.so"} <= names
    assert recorded == names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True)
    assert sorted(p.name for p in (target / "fakebnb").glob("*.so")) == ["libbitsandbytes_cpu.so",
                                                                          "libbitsandbytes_cuda130.so"]


def test_requirements_follow_the_box_platform_and_the_extras_asked_for(tmp_path: Path, gpu_wheels: ModuleType) -> None:
    module = gpu_wheels
    wheel = make_wheel(tmp_path)
    box = module.target_environment("3.12")
    assert [str(r) for r in module.requirements_of(wheel, set(), box)] == ["numpy>=1.17"]
    assert [r.name for r in module.requirements_of(wheel, {"pretty"}, box)] == ["numpy", "rich"]
    assert "tomli" in [r.name for r in module.requirements_of(wheel, set(), module.target_environment("3.10"))]
