"""The wheels a lent GPU box lacks, found and fetched here, and checked in a bare venv standing in for the box.

The device tool carries at most 64 MiB, working tree included, and the box cannot reach a registry, so:

  python3 bench/gpu_wheels.py fetch    the dependency closure of what the project imports, less what the box has
                                       (bench/gpu_box.py lists it), downloaded for CPython 3.12 / manylinux x86_64
                                       into .whl/ (bitsandbytes cut to its CPU and CUDA 13 libraries; Unsloth's
                                       wheel to its library, in .whl/unsloth/), with a manifest; tree + wheels must
                                       come to under 60 MiB, and Unsloth's set is dropped first if they do not
  python3 bench/gpu_wheels.py check    a fresh venv with no site packages but torch and stand-ins for the box's
                                       packages, the closure installed --no-deps, every module imported
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from gpu_box import (
    BOX_IMPORTED,
    BOX_PACKAGES,
    BOX_VERSIONS,
    LIMIT_MIB,
    MANIFEST,
    MIB,
    MODULES,
    WHEELS,
    carried_bytes,
    import_each,
    link_project,
    tested_version,
)
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYTHON = "3.12"  # the box's

# What the project and its tests import that the box lacks, at the versions tested on the CPU. Carried even where
# the box has a copy (peft), so the GPU runs the versions the CPU suite passed with.
PROJECT = ["trl==1.16.0", "bitsandbytes==0.50.2", "datasets==5.2.0", "peft==0.21.2", "liger-kernel==0.8.5",
           "textual==8.2.8", "tomli-w==1.2.0", "platformdirs==4.14.9", "gguf==0.19.0", "pytest-asyncio==1.5.0",
           "pytest-textual-snapshot==1.1.0", "pexpect==4.9.0", "pyte==0.8.2"]
# Unsloth for the side-by-side's third recipe, in a folder of its own: it pins trl <= 1.15 and datasets < 5.
UNSLOTH = ["unsloth==2026.10.9", "unsloth-zoo==2026.10.9", "trl==1.15.0", "datasets==4.8.5"]
UNSLOTH_SHARED = {"bitsandbytes", "peft", "dill", "multiprocess"}  # taken from the project's set
# bitsandbytes ships a library per CUDA and ROCm version (43 MB); the box's torch is built for CUDA 13.
BNB_KEEP = ("libbitsandbytes_cpu", "libbitsandbytes_cuda13")
UNSLOTH_DROP = ("studio/",)  # Unsloth's web UI (26 MB): the library does not import it


def target_environment(python: str) -> dict[str, str]:
    env = dict(default_environment())
    env.update(python_version=python, python_full_version=f"{python}.0", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
               platform_python_implementation="CPython", os_name="posix")
    return env


# ---------------------------------------------------------------- here: the closure, fetched and slimmed


class NotOnRegistry(Exception):
    pass


def download(spec: str, folder: Path, python: str) -> Path:
    """One wheel for CPython `python` on manylinux x86_64, without its dependencies."""
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.glob("*.whl"))
    platforms = [a for n in (39, 35, 34, 31, 28, 27, 24, 17) for a in ("--platform", f"manylinux_2_{n}_x86_64")]
    platforms += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--python-version", python, "--implementation", "cp", *platforms, "-d", str(folder), spec],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NotOnRegistry(f"pip download {spec} failed:\n{done.stderr[-2000:]}")
    name = canonicalize_name(Requirement(spec).name)
    new = [p for p in set(folder.glob("*.whl")) - before] or [p for p in folder.glob("*.whl")
                                                               if canonicalize_name(wheel_name(p)) == name]
    return max(new, key=lambda p: p.stat().st_mtime)


def wheel_name(path: Path) -> str:
    return path.name.split("-")[0]


def wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def requirements_of(wheel: Path, extras: set[str], env: dict[str, str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def closure(roots: list[str], folder: Path, python: str, have: dict[str, str]) -> dict[str, Any]:
    """Download `roots` and every dependency the box lacks; `have` maps what is already carried to its version."""
    env = target_environment(python)
    carried: dict[str, Path] = {}
    needs: dict[str, list[str]] = {}  # what each box package must satisfy, for verify to check there
    extras_done: dict[str, set[str]] = {}
    queue = [(Requirement(spec), True) for spec in roots]
    while queue:
        req, root = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in have and not root:
            continue
        if name in BOX_PACKAGES and not root:
            needs.setdefault(name, []).append(str(req))
            known = BOX_VERSIONS.get(name)
            if known is None or req.specifier.contains(known, prereleases=True):
                continue
            print(f"  the box's {name} {known} does not meet {req}: carrying one that does")
        wanted = set(req.extras)
        if name in carried and wanted <= extras_done[name]:
            continue
        if name not in carried:
            local = tested_version(name)
            spec = f"{req.name}=={local}" if not root and local and req.specifier.contains(local, True) else \
                str(req).split(";")[0]
            carried[name] = download(spec, folder, python)
            extras_done[name] = set()
        extras_done[name] |= wanted
        for dep in requirements_of(carried[name], extras_done[name], env):
            queue.append((dep, False))
    return {"carried": {n: wheel_version(p) for n, p in carried.items()},
            "files": {n: p.name for n, p in carried.items()}, "box_needs": needs}


def slim(wheel: Path, keep: Any) -> int:
    """Rewrite `wheel` without the files `keep(name)` refuses, its RECORD to match; returns the bytes saved."""
    before = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if keep(n)]
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        rows = [r for r in csv.reader(io.StringIO(z.read(record).decode())) if r and keep(r[0])]
        data = {n: z.read(n) for n in names if n != record}
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in data.items():
            z.writestr(name, content)
        z.writestr(record, out.getvalue())
    tmp.replace(wheel)
    return before - wheel.stat().st_size


def bnb_keep(name: str) -> bool:
    return not name.endswith(".so") or name.rsplit("/", 1)[-1].startswith(BNB_KEEP)


def unsloth_keep(name: str) -> bool:
    return not name.startswith(UNSLOTH_DROP)


def fetch(folder: Path, python: str, with_unsloth: bool) -> dict[str, Any]:
    if folder.exists():
        for old in folder.rglob("*.whl"):
            old.unlink()
    print(f"fetching the project's closure for CPython {python} into {folder}")
    project = closure(PROJECT, folder, python, {})
    bnb = folder / project["files"]["bitsandbytes"]
    saved = slim(bnb, bnb_keep)
    print(f"  bitsandbytes: kept the CPU and CUDA 13 libraries ({saved / MIB:.1f} MiB less)")
    manifest: dict[str, Any] = {"python": python, "project": project, "unsloth": None}
    if with_unsloth:
        print("fetching Unsloth's set (its own folder: it pins trl <= 1.15, datasets < 5)")
        have = {n: v for n, v in project["carried"].items() if n in UNSLOTH_SHARED}
        sub = closure(UNSLOTH, folder / "unsloth", python, have)
        saved = slim(folder / "unsloth" / sub["files"]["unsloth"], unsloth_keep)
        print(f"  unsloth: left out its web UI ({saved / MIB:.1f} MiB less)")
        manifest["unsloth"] = sub
    tree, wheels = carried_bytes([folder])
    if manifest["unsloth"] and (tree + wheels) / MIB > LIMIT_MIB:
        dropped = sum(f.stat().st_size for f in (folder / "unsloth").rglob("*.whl"))
        for f in (folder / "unsloth").rglob("*.whl"):
            f.unlink()
        manifest["unsloth"] = {"dropped": f"tree + wheels came to {(tree + wheels) / MIB:.1f} MiB with it "
                                          f"({dropped / MIB:.1f} MiB), over {LIMIT_MIB:.0f}"}
        tree, wheels = carried_bytes([folder])
    manifest.update(tree_mib=round(tree / MIB, 2), wheels_mib=round(wheels / MIB, 2),
                    total_mib=round((tree + wheels) / MIB, 2), limit_mib=LIMIT_MIB)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------- here: a bare venv standing in for the box


def check(python_version: str, keep: Path | None) -> int:
    """Install the closure into a venv holding only torch and stand-ins for the box's packages, import each module.

    The stand-ins are the box's packages the closure and the project rely on, with every box package they need in
    turn, at the box's versions where KINDS.md gives them (else the ones tested here). This machine's Python may not
    be the box's 3.12: the same versions are fetched for this Python instead.
    """
    work = keep or Path(tempfile.mkdtemp(prefix="qlora-boxcheck-"))
    py = work / "venv" / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={tested_version('torch')}"], check=True)
    manifest = fetch(work / "wheels", python_version, with_unsloth=False)
    wanted = set(manifest["project"]["box_needs"]) | set(map(canonicalize_name, BOX_IMPORTED))
    box = box_stand_ins(sorted(wanted - {"torch"}), work / "box", python_version)
    print(f"stand-ins for the box's packages ({len(box)}): {' '.join(sorted(box))}")
    for folder in (work / "box", work / "wheels"):
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *map(str, folder.glob("*.whl"))],
                       check=True)
    env = {**os.environ, "PYTHONPATH": str(link_project(work / "qlora"))}
    imported, errors = import_each(str(py), MODULES, env)
    for module in MODULES:
        print(f"  import {module}: {'ok ' + imported[module] if module in imported else errors[module]}")
    failed = sorted(errors)
    print(f"bare venv at {work / 'venv'}: {len(MODULES) - len(failed)} of {len(MODULES)} modules import"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def box_stand_ins(names: list[str], folder: Path, python: str) -> dict[str, str]:
    """Wheels standing in for the box's packages `names` and the box packages they need, transitively."""
    env = target_environment(python)
    done: dict[str, str] = {}
    queue = list(names)
    while queue:
        name = canonicalize_name(queue.pop(0))
        if name in done or name == "torch":
            continue
        version = BOX_VERSIONS.get(name) or tested_version(name)
        try:
            wheel = download(f"{name}=={version}" if version else name, folder, python)
        except NotOnRegistry:  # the box's build is newer than the registry's (numpy 2.5.2 when last read)
            print(f"  note: {name} {version} is not on the registry; the version tested here stands in")
            wheel = download(f"{name}=={tested_version(name)}", folder, python)
        done[name] = wheel_version(wheel)
        for dep in requirements_of(wheel, set(), env):
            dep_name = canonicalize_name(dep.name)
            if dep_name in BOX_PACKAGES:
                queue.append(dep_name)
            elif dep_name not in done:
                print(f"  note: the box's {name} needs {dep}, which its package list does not show")
    return done


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("--no-unsloth", action="store_true")
    p = sub.add_parser("check")
    p.add_argument("--work", type=Path, default=None, help="keep the bare venv here (reused when present)")
    args = parser.parse_args()
    try:
        if args.command == "check":
            return check(f"{sys.version_info.major}.{sys.version_info.minor}", args.work)
        manifest = fetch(WHEELS, PYTHON, with_unsloth=not args.no_unsloth)
    except NotOnRegistry as err:
        print(err)
        return 1
    unsloth = manifest["unsloth"]
    said = "not asked for" if unsloth is None else unsloth.get("dropped", "carried")
    print(f"tree {manifest['tree_mib']} MiB + wheels {manifest['wheels_mib']} MiB = {manifest['total_mib']} MiB "
          f"(limit {LIMIT_MIB:.0f}); Unsloth: {said}")
    return 0 if manifest["total_mib"] <= LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
