"""Start-up of the light commands: `qlora-tui --help`, `runs` and `adapters` must not import torch.

Times each command as a user runs it (the installed console script when it is
on PATH, else the module) over a data home with runs and adapters in it, and
checks in-process that no heavy library was imported. Target: each < 0.5 s.
Usage: python bench/bench_cli_startup.py [--home HOME] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets")


def command() -> list[str]:
    script = shutil.which("qlora-tui")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", help="data home to list (default: a synthetic one with 50 runs, 200 versions)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    home = Path(args.home) if args.home else synthetic_home()
    base = command()
    env = dict(os.environ)
    for extra in (["--help"], ["runs"], ["adapters"]):
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run([*base, "--home", str(home), *extra], env=env, capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        print(f"qlora-tui {' '.join(extra):10s} median {statistics.median(times) * 1000:6.0f} ms  "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})  target < 500 ms")
    code = (
        "import sys, io, contextlib\nfrom qlora_tui.tui.cli import main\n"
        "for a in (['--help'], ['runs'], ['adapters']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: main(['--home', sys.argv[1], *a])\n"
        "        except SystemExit: pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    imported = subprocess.run([sys.executable, "-c", code, str(home)], env=env, capture_output=True, text=True)
    print(f"heavy modules imported by --help/runs/adapters: {imported.stdout.strip()}")


def synthetic_home() -> Path:
    import json
    import tempfile

    from qlora_tui.registry.store import NewVersion, open_store

    home = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    for i in range(50):
        run = home / "runs" / f"20260101-0000{i:02d}-bench-{i:04x}"
        run.mkdir(parents=True)
        (run / "profile.toml").write_text('name = "bench"\n')
        with open(run / "events.jsonl", "w") as f:
            f.write(json.dumps({"v": 1, "seq": 1, "t": 1.0, "type": "start", "run_id": run.name,
                                "profile_name": "bench", "method": "sft", "max_steps": 500}) + "\n")
            for step in range(1, 501):
                f.write(json.dumps({"v": 1, "seq": step + 1, "t": 1.0 + step, "type": "step", "step": step,
                                    "max_steps": 500, "loss": 2.0 - step / 500}) + "\n")
            f.write(json.dumps({"v": 1, "seq": 502, "t": 600.0, "type": "done", "registry_ref": "bench@1"}) + "\n")
    source = home / "src"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    (source / "adapter_model.safetensors").write_bytes(b"x" * 1024)
    store = open_store(home)
    for i in range(200):
        store.add(f"bench{i % 20}", source, NewVersion(base_model="builtin:tiny-llama", method="sft"))
    return home


if __name__ == "__main__":
    main()
