"""Commands about the adapter registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qlora_tui.tui.commands.common import print_json, registry_store
from qlora_tui.tui.format import labelled_lines, number, percent, size, table, timestamp


def cmd_adapters(args: argparse.Namespace, home: Path) -> int:
    versions = registry_store(home).list_versions(args.name)
    if args.json:
        print_json([v.to_json() | {"files": None, "profile": None} for v in versions])
        return 0
    if not versions:
        print("no adapters registered yet: a finished run registers its adapter")
        return 0
    print(table(
        ["REF", "KIND", "METHOD", "BASE MODEL", "LOSS", "SIZE", "CREATED", "PARENT", "ALIASES"],
        [[v.ref, v.kind, v.method, v.base_model, number(v.metrics.get("final_loss")), size(v.size_bytes),
          timestamp(v.created), v.parent_ref or "", ",".join(v.aliases)] for v in versions],
    ))
    return 0


def cmd_show(args: argparse.Namespace, home: Path) -> int:
    store = registry_store(home)
    version = store.get(args.ref)
    if args.json:
        from qlora_tui.registry.evalsummary import latest_per_set

        evals = [r.to_json(with_answers=False) for r in latest_per_set(store.evals(version.ref, with_answers=False))]
        print_json(version.to_json() | {"lineage": [v.ref for v in store.lineage(version.ref)], "evals": evals})
        return 0
    print(f"{version.ref}  ({version.kind})")
    for warning in version.extra.get("warnings") or []:
        print(f"  warning: {warning}")
    lines = [
        ("base model", f"{version.base_model}" + (f"  [{version.base_revision}]" if version.base_revision else "")),
        ("method", version.method or "-"),
        ("created", timestamp(version.created)),
        ("lineage", " -> ".join(v.ref for v in store.lineage(version.ref))),
        ("data set", version.dataset or "-"),
        ("data fingerprint", version.dataset_fingerprint or "-"),
        ("run", version.run_id or "-"),
        ("aliases", ", ".join(version.aliases) or "-"),
        ("path", str(version.path)),
        ("size", size(version.size_bytes)),
    ]
    lines += performance_lines(version.metrics)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key.ljust(width)}  {value}")
    if version.metrics:
        print("  metrics")
        for key, value in sorted(version.metrics.items()):
            shown = number(value) if isinstance(value, (int, float)) else json.dumps(value)
            print(f"    {key}: {shown}")
    for key, value in sorted(version.extra.items()):
        if key != "warnings":
            for label, shown in labelled_lines(key, value, indent="  "):
                print(f"{label}: {shown}" if shown else label)
    if version.library_versions:
        print("  libraries  " + ", ".join(f"{k} {v}" for k, v in sorted(version.library_versions.items())))
    print("  files")
    for f in version.files:
        print(f"    {f.path}  {size(f.size)}  sha256:{f.sha256}")
    for p in version.pushes:
        print(f"  pushed  {p.repo}  {p.commit_id}  {p.url}")
    from qlora_tui.registry.evalsummary import latest_per_set, result_line

    latest = latest_per_set(store.evals(version.ref, with_answers=False))
    if latest:
        print("  evals (latest per set)")
        for result in latest:
            print(f"    {result_line(result)}")
    if version.profile and args.profile:
        print("  profile\n" + "\n".join(f"    {line}" for line in version.profile.splitlines()))
    return 0


def performance_lines(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """What a run cost and gained, in words: real tokens/s and MFU, peak GPU memory against the plan, alignment."""
    def num(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    lines = []
    if (rate := num("tokens_per_s_avg")) is not None:
        mfu, hfu = num("mfu_pct_avg"), num("hfu_pct_avg")
        lines.append(("throughput", f"{rate:,.0f} tokens/s (real tokens, run average)"
                      + (f", MFU {percent(mfu)}" if mfu is not None else ", MFU - (CPU or a GPU without a known peak)")
                      + (f", HFU {percent(hfu)} (with checkpointing's recompute)"
                         if hfu is not None and mfu is not None and hfu > mfu else "")))
    if (peak := num("gpu_mem_peak_gb")) is not None:
        reserved, plan = num("gpu_mem_reserved_peak_gb"), num("memory_estimate_gb")
        lines.append(("GPU memory", f"peak {peak:.2f} GiB allocated"
                      + (f", {reserved:.2f} GiB reserved" if reserved is not None else "")
                      + (f"; the plan said {plan:.2f} GB" if plan is not None else "")))
    if (rss := num("rss_peak_gb")) is not None:
        since = metrics.get("rss_peak_since")
        lines.append(("host memory", f"peak RSS {rss:.2f} GiB"
                      + (f" (since {since})" if isinstance(since, str) else "")))
    pairs = {w: (num(f"align/{w}_before"), num(f"align/{w}_after")) for w in ("accuracy", "margin", "reward")}
    gains = [f"{what} {a:.3g} -> {b:.3g}" for what, (a, b) in pairs.items() if a is not None and b is not None]
    if gains:
        lines.append(("alignment", ", ".join(gains)))
    return lines


def add_commands(sub: Any) -> None:
    p = sub.add_parser("adapters", help="list registered adapters and their versions")
    p.add_argument("name", nargs="?", help="only this adapter's versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("show", help="show one version's metadata (NAME, NAME@N or NAME@ALIAS)")
    p.add_argument("ref")
    p.add_argument("--profile", action="store_true", help="also print the profile it was trained with")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
