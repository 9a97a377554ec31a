"""A registered version's record as the Registry screen shows it: fields, metrics, tables, files, pushes."""

from __future__ import annotations

import json

from rich.text import Text

from qlora_tui.registry.records import AdapterVersion
from qlora_tui.tui.format import labelled_lines, number, size, timestamp


def details_text(version: AdapterVersion, lineage: list[str]) -> Text:
    """The version's fields, metrics, tables (as labelled lines), files, Hub pushes and profile, as one text."""
    text = Text()
    text.append(f"{version.ref}", style="bold")
    text.append(f"  ({version.kind})\n", style="dim")
    for warning in version.extra.get("warnings") or []:
        text.append(f"warning: {warning}\n", style="bold yellow")
    rows = [
        ("base model", version.base_model + (f"  [{version.base_revision}]" if version.base_revision else "")),
        ("method", version.method or "-"),
        ("created", timestamp(version.created)),
        ("lineage", " -> ".join(lineage)),
        ("data set", version.dataset or "-"),
        ("data fingerprint", version.dataset_fingerprint or "-"),
        ("run", version.run_id or "-"),
        ("aliases", ", ".join(version.aliases) or "-"),
        ("size", size(version.size_bytes)),
        ("path", str(version.path)),
    ]
    for key, value in rows:
        text.append(f"{key}: ", style="dim")
        text.append(f"{value}\n")
    if version.metrics:
        text.append("\nmetrics\n", style="bold")
        for key, value in sorted(version.metrics.items()):
            shown = number(value) if isinstance(value, (int, float)) else json.dumps(value)
            text.append(f"  {key}: {shown}\n")
    for key, value in sorted((k, v) for k, v in version.extra.items() if k != "warnings"):
        text.append("\n")
        for label, shown in labelled_lines(key, value):
            text.append(f"{label}" + (": " if shown else ""), style="bold" if not label.startswith(" ") else "dim")
            text.append(f"{shown}\n")
    text.append("\nfiles\n", style="bold")
    for f in version.files:
        text.append(f"  {f.path}  {size(f.size)}  {f.sha256[:12]}\n")
    if version.pushes:
        text.append("\nHub pushes\n", style="bold")
        for p in version.pushes:
            text.append(f"  {p.repo}  {p.commit_id[:12]}  {p.url}  {timestamp(p.pushed)}\n")
    if version.profile:
        text.append("\nprofile\n", style="bold")
        text.append(version.profile, style="dim")
    return text
