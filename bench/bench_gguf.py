"""GGUF export time and peak memory: the demo model and a randomly initialised Llama-shaped model of about 1 GB.

Each export runs in a fresh subprocess that reports its own peak resident
memory (VmHWM) and the export's seconds (merge of a rank-16 LoRA on all seven
projections, conversion, read-back check; imports excluded), for f16 and q8_0,
and for --adapter-only (the adapter plus the base as GGUF). The 1 GB model is
the one bench_merge.py builds (float32, 16 layers, 200 MB shards), with the
tiny model's tokenizer (its table padded to the model's 32000 entries).
Usage: python bench/bench_gguf.py [--layers 16] [--skip-big]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = "builtin:tiny-llama"


def bench_merge_module() -> object:
    spec = importlib.util.spec_from_file_location("bench_merge", ROOT / "bench" / "bench_merge.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def rss_anon_mb() -> float:
    """Anonymous resident memory: what the process allocated, without the file pages it has mapped."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(home: Path, ref: str, out: Path, quant: str, adapter_only: bool) -> None:
    import threading

    import torch  # noqa: F401  imports happen before the clock starts

    from qlora_tui.registry.gguf_export import export_gguf
    from qlora_tui.registry.store import open_store

    store = open_store(home)
    peak = [rss_anon_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_anon_mb())

    threading.Thread(target=sample, daemon=True).start()
    baseline = rss_anon_mb()
    started = time.perf_counter()
    result = export_gguf(store, ref, out, quant=quant, adapter_only=adapter_only, force=True)
    seconds = time.perf_counter() - started
    done.set()
    sizes = out.stat().st_size + (result.base_gguf.stat().st_size if result.base_gguf else 0)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": bench_merge_module().peak_rss_mb(),  # type: ignore[attr-defined]
                      "peak_anon_mb": peak[0], "anon_before_mb": baseline, "file_mb": sizes / 2**20}))


def measure(home: Path, ref: str, work: Path, quant: str, adapter_only: bool) -> dict[str, float]:
    out = work / f"{ref.replace('@', '-')}-{quant}{'-adapter' if adapter_only else ''}.gguf"
    command = [sys.executable, __file__, "--child", str(home), ref, str(out), quant] + (
        ["--adapter-only"] if adapter_only else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"export of {ref} failed:\n{result.stderr[-3000:]}")
    for path in work.glob("*.gguf"):
        path.unlink()
    return json.loads(result.stdout.strip().splitlines()[-1])


def setup(work: Path, layers: int, big: bool) -> tuple[Path, list[tuple[str, str, float]]]:
    """A data home with the demo adapter (a PEFT LoRA on the tiny model) and, with big, the 1 GB one."""
    sys.path.insert(0, str(ROOT))
    from qlora_tui.core.builtin import ensure_builtin_model
    from qlora_tui.registry.importer import import_adapter
    from qlora_tui.registry.store import open_store
    from tests.registry.conftest import make_peft_adapter

    home = work / "home"
    tiny = ensure_builtin_model(home, TINY)
    store = open_store(home)
    import_adapter(store, make_peft_adapter(tiny, work / "tiny-lora", seed=1, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), "demo", base=TINY)
    tiny_mb = sum(p.stat().st_size for p in tiny.glob("*.safetensors")) / 2**20
    models = [(f"demo model (tiny Llama, {tiny_mb / 4:.2f}M parameters)", "demo@1", tiny_mb)]
    if big:
        merge = bench_merge_module()
        base = work / "big"
        size = merge.build_model(base, layers, 200)  # type: ignore[attr-defined]
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(tiny / name, base / name)
        merge.build_adapter(base, work / "big-lora", layers)  # type: ignore[attr-defined]
        import_adapter(store, work / "big-lora", "big", base=str(base))
        models.append((f"Llama-shaped, {layers} layers, fp32", "big@1", size / 2**20))
    return home, models


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("HOME", "REF", "OUT", "QUANT"))
    parser.add_argument("--adapter-only", action="store_true")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    if args.child:
        home, ref, out, quant = args.child
        child(Path(home), ref, Path(out), quant, args.adapter_only)
        return
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        work = Path(tmp)
        home, models = setup(work, args.layers, not args.skip_big)
        print("| model | safetensors | export | seconds | peak RSS (VmHWM) | peak anonymous RSS (after imports) "
              "| GGUF size |")
        print("|---|---|---|---|---|---|---|")
        for label, ref, mb in models:
            for quant, adapter_only in (("f16", False), ("q8_0", False), ("f16", True)):
                figures = measure(home, ref, work, quant, adapter_only)
                what = f"{quant}{' --adapter-only (+ base)' if adapter_only else ' merged'}"
                print(f"| {label} | {mb:.0f} MB | {what} | {figures['seconds']:.1f} | "
                      f"{figures['peak_rss_mb']:.0f} MB | {figures['peak_anon_mb']:.0f} MB "
                      f"({figures['peak_anon_mb'] - figures['anon_before_mb']:.0f} MB) | {figures['file_mb']:.1f} MB |",
                      flush=True)


if __name__ == "__main__":
    main()
