"""What a lent GPU box has, and, there, the carried wheels installed and everything the runs import verified.

The box (/work/.library/device/KINDS.md, "Python packages already there") has Python 3.12 with CUDA torch,
transformers, accelerate, pandas, xxhash, pyarrow, nvidia-ml-py, pytest and more, and cannot reach a registry;
bench/gpu_wheels.py fetches the rest here. bench/gpu_suite.sh calls, there:

  python3 bench/gpu_box.py size       tree + carried wheels, as the device tool counts them, against 60 MiB
  python3 bench/gpu_box.py install    the carried wheels into /tmp/site (Unsloth's into /tmp/site-unsloth) when
                                      they are for this Python, the project linked into /tmp/qlora
  python3 bench/gpu_box.py verify     every requirement the carried wheels put on the box's packages met, every
                                      module the runs use imported; one JSON line each
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
MANIFEST = "manifest.json"
LIMIT_MIB = 60.0  # the device tool carries 64 MiB; keep a margin for files added after the fetch
MIB = 1024 ** 2

# The box's packages (KINDS.md, read on 2026-11-17), and the versions its pip list showed where one was shown.
BOX_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-
it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions
nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-
mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"""
BOX_PACKAGES = {canonicalize_name(name) for name in BOX_LIST.split()}
BOX_VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "huggingface-hub": "1.33.0", "tokenizers": "0.23.2",
                "safetensors": "0.8.0", "accelerate": "1.15.0", "numpy": "2.5.2", "triton": "3.6.0"}

# The modules the runs import, each checked on the box after install (liger_kernel needs triton: GPU boxes only).
MODULES = ["torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "safetensors",
           "tokenizers", "huggingface_hub", "textual", "tomli_w", "platformdirs", "pynvml", "gguf", "pandas", "xxhash",
           "pyarrow", "jinja2", "regex", "numpy", "pytest", "pytest_asyncio", "syrupy", "pexpect", "pyte", "xdist",
           "qlora_tui.runner.train", "qlora_tui.tui.app", "qlora_tui.registry.merge"]
GPU_ONLY_MODULES = ["liger_kernel.transformers"]
GPU_ONLY_PACKAGES = {"triton"}
# The box's packages the project imports itself (the closure finds the ones its carried wheels need).
BOX_IMPORTED = ["transformers", "accelerate", "safetensors", "tokenizers", "huggingface-hub", "pandas", "pyarrow",
                "xxhash", "numpy", "jinja2", "regex", "nvidia-ml-py", "pytest", "pytest-xdist", "rich", "sentencepiece"]


def tested_version(name: str) -> str | None:
    """The version this machine's suite ran with, preferred so the box runs what was tested."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def carried_bytes(extra: list[Path]) -> tuple[int, int]:
    """(working tree, extra paths) in bytes, as the device tool counts them: tracked and untracked-but-not-ignored
    files, plus the carried folders."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    tree = sum((ROOT / p).stat().st_size for p in listed if p and (ROOT / p).is_file())
    carried = sum(f.stat().st_size for d in extra if d.exists() for f in d.rglob("*") if f.is_file())
    return tree, carried


def link_project(target: Path) -> Path:
    """qlora_tui as the checkout's own folders (symlinks), so the tree runs as it is without a build."""
    package = target / "qlora_tui"
    package.mkdir(parents=True, exist_ok=True)
    for part in ("core", "runner", "registry", "tui", "profiles"):
        link = package / part
        if not link.exists():
            link.symlink_to(ROOT / part)
    return target


def install(site: Path, unsloth_site: Path, project: Path, jsonl: Path | None) -> int:
    began = time.monotonic()
    core = sorted(WHEELS.glob("*.whl"))
    extra = sorted((WHEELS / "unsloth").glob("*.whl"))
    record: dict[str, Any] = {"what": "install", "carried": len(core), "carried_unsloth": len(extra)}
    manifest_path = WHEELS / MANIFEST
    built_for = json.loads(manifest_path.read_text())["python"] if manifest_path.exists() else None
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if core and built_for != here:  # a dry run on another Python: its own packages, the carried ones untouched
        record["skipped"] = f"the carried wheels are for CPython {built_for}; this is {here}"
        core = extra = []
    for wheels, where in ((core, site), (extra, unsloth_site)):
        if not wheels:
            continue
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(where),
                               *map(str, wheels)], capture_output=True, text=True)
        if done.returncode != 0:
            record["error"] = f"pip install --target {where} failed: {done.stderr[-1500:]}"
            append(jsonl, record)
            print(record["error"])
            return 1
    link_project(project)
    record["note"] = "installed the carried wheels" if core else "none installed: this Python's own packages"
    record["seconds"] = round(time.monotonic() - began, 1)
    append(jsonl, record)
    print(f"install: {record['note']} ({len(core)} + {len(extra)} wheels) in {record['seconds']} s")
    return 0


def verify(jsonl: Path | None, gpu: bool) -> int:
    """Every box package the closure relies on meets what it was asked for; every module the runs use imports."""
    manifest_path = WHEELS / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    unmet = []
    for name, wanted in ((manifest or {}).get("project", {}).get("box_needs") or {}).items():
        if name in GPU_ONLY_PACKAGES and not gpu:
            continue
        version = tested_version(name)
        for spec in wanted:
            req = Requirement(spec)
            if version is None or not req.specifier.contains(version, prereleases=True):
                unmet.append(f"{spec} (the box has {version or 'none'})")
    modules = MODULES + (GPU_ONLY_MODULES if gpu else [])
    imported, failed = import_each(sys.executable, modules, dict(os.environ))
    record = {"what": "verify", "manifest": manifest is not None, "unmet": unmet, "imported": imported,
              "failed": failed}
    append(jsonl, record)
    print(f"verify: {len(imported)} of {len(modules)} modules import; unmet requirements: {unmet or 'none'}"
          + (f"; failed imports: {failed}" if failed else ""))
    return 1 if failed else 0


IMPORT_EACH = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        out[name] = [True, str(getattr(sys.modules[name.split(".")[0]], "__version__", ""))]
    except Exception as err:
        out[name] = [False, f"{type(err).__name__}: {err}"]
print(json.dumps(out))
"""


def import_each(python: str, modules: list[str], env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(imported: version, failed: error) for each module, imported one after another in one fresh process."""
    done = subprocess.run([python, "-c", IMPORT_EACH, *modules], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {}, {m: f"the import process failed: {done.stderr.strip()[-300:]}" for m in modules}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return ({m: v for m, (ok, v) in result.items() if ok}, {m: v for m, (ok, v) in result.items() if not ok})


def append(jsonl: Path | None, record: dict[str, Any]) -> None:
    """One figure, appended and flushed the moment it is known (a timeout later loses nothing before it)."""
    if jsonl is None:
        return
    record = {"t": round(time.time(), 1), **record}
    with open(jsonl, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"))
    p.add_argument("--unsloth-site", type=Path, default=Path("/tmp/site-unsloth"))
    p.add_argument("--project", type=Path, default=Path("/tmp/qlora"))
    p.add_argument("--jsonl", type=Path, default=None)
    p = sub.add_parser("verify")
    p.add_argument("--jsonl", type=Path, default=None)
    p.add_argument("--gpu", action="store_true")
    p = sub.add_parser("size")
    p.add_argument("--jsonl", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "install":
        return install(args.site, args.unsloth_site, args.project, args.jsonl)
    if args.command == "verify":
        return verify(args.jsonl, args.gpu)
    tree, wheels = carried_bytes([WHEELS])
    total = (tree + wheels) / MIB
    append(args.jsonl, {"what": "size", "tree_mib": round(tree / MIB, 2), "wheels_mib": round(wheels / MIB, 2),
                        "total_mib": round(total, 2), "limit_mib": LIMIT_MIB, "fits": total <= LIMIT_MIB})
    print(f"size: tree {tree / MIB:.2f} MiB + wheels {wheels / MIB:.2f} MiB = {total:.2f} MiB (limit {LIMIT_MIB:.0f})")
    return 0 if total <= LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
