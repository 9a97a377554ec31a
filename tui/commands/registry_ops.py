"""Commands that act on registered versions: tag, diff, verify, delete, gc, import, export, merge, compare, push.

Each is a thin wrapper over a function in registry/; the heavy ones (merge,
compare, push) import torch or huggingface_hub only when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qlora_tui.registry.errors import IntegrityError
from qlora_tui.registry.job_options import add_compare_options, add_merge_options
from qlora_tui.tui.commands.common import print_json, registry_store
from qlora_tui.tui.format import number, size


def cmd_tag(args: argparse.Namespace, home: Path) -> int:
    version = registry_store(home).set_alias(args.ref, args.alias)
    print(f"{version.name}@{args.alias} -> {version.ref}")
    return 0


def cmd_untag(args: argparse.Namespace, home: Path) -> int:
    version = registry_store(home).remove_alias(args.name, args.alias)
    print(f"removed {args.name}@{args.alias} (was {version.ref})")
    return 0


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return number(value)
    return value if isinstance(value, str) else json.dumps(value)


def cmd_diff(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.diff import diff_versions

    store = registry_store(home)
    a, b = store.get(args.a), store.get(args.b)
    differences = diff_versions(a, b)
    if args.json:
        print_json({"a": a.ref, "b": b.ref, "differences": [d.__dict__ for d in differences]})
        return 0
    if not differences:
        print(f"{a.ref} and {b.ref}: no differences in metadata")
        return 0
    print(f"{a.ref} -> {b.ref}")
    section = ""
    for d in differences:
        if d.section != section:
            section = d.section
            print(f"  {section}")
        print(f"    {d.field}: {_shown(d.a)} -> {_shown(d.b)}")
    return 0


def cmd_verify(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.integrity import verify

    reports = verify(registry_store(home), args.ref)
    if args.json:
        print_json([{"ref": r.ref, "path": str(r.location), "checked": r.checked, "ok": r.ok,
                     "problems": [p.__dict__ for p in r.problems]} for r in reports])
    else:
        for report in reports:
            if report.ok:
                print(f"{report.ref}: ok ({report.checked} files)")
                continue
            print(f"{report.ref}: {len(report.problems)} of its files differ from the index ({report.location})")
            for p in report.problems:
                print(f"  {p.problem}: {p.path}" + (f"  ({p.detail})" if p.detail else ""))
    bad = [r.ref for r in reports if not r.ok]
    if bad:
        raise IntegrityError(f"{', '.join(bad)}: stored files differ from the index",
                             hint="restore them from an export (qlora-tui import FILE.tar) or delete the version")
    if not reports and not args.json:
        print("the registry is empty")
    return 0


def cmd_delete(args: argparse.Namespace, home: Path) -> int:
    store = registry_store(home)
    version, children = store.delete(args.ref, force=args.force)
    print(f"deleted {version.ref}")
    if children:
        print(f"  derived versions now without a parent: {', '.join(children)}")
    if not store.is_stored(version):
        print(f"  its files were not in the registry and were kept: {version.path}")
    return 0


def cmd_gc(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.integrity import gc

    report = gc(registry_store(home))
    for path in report.removed:
        print(f"removed {path}")
    print(f"gc: {len(report.removed)} leftovers removed, {size(report.freed_bytes)} freed")
    if report.unindexed:
        print(f"kept {len(report.unindexed)} stored version file(s) the index lacks (they look complete):")
        for path in report.unindexed:
            print(f"  {path}")
        print("  qlora-tui registry rebuild adds them back to the index")
    return 0


def cmd_registry_rebuild(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.rebuild import rebuild_index

    report = rebuild_index(registry_store(home), force=args.force)
    print(f"rebuilt the index: {len(report.versions)} version(s)" +
          (f" ({', '.join(report.versions)})" if report.versions else ""))
    if report.recovered:
        print(f"  from their directories alone (training metadata lost): {', '.join(report.recovered)}")
    for line in report.skipped:
        print(f"  not put back: {line}")
    if report.missing_files:
        print(f"  files missing: {', '.join(report.missing_files)} (qlora-tui verify names them)")
    if report.old_index:
        print(f"  the previous index was kept as {report.old_index}")
    return 0


def cmd_import(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.errors import RegistryError

    source = Path(args.source)
    store = registry_store(home)
    if source.is_file():
        if args.base:
            raise RegistryError("--base applies to an adapter directory; an export archive carries its base model")
        from qlora_tui.registry.transfer import import_archive

        for item in import_archive(store, source, name=args.name):
            if item.already_present:
                print(f"{item.source_ref}: already here as {item.version.ref} (same files)")
            else:
                print(f"imported {item.source_ref} as {item.version.ref}")
        return 0
    if not source.exists():
        raise RegistryError(f"{source}: no such file or directory",
                            hint="import takes a PEFT adapter directory or a .tar made by qlora-tui export")
    if not args.name:
        raise RegistryError(f"{source}: importing an adapter directory needs --name NAME")
    from qlora_tui.registry.importer import import_adapter

    version = import_adapter(store, source, args.name, base=args.base, method=args.method)
    print(f"imported {source} as {version.ref} (base model {version.base_model}, "
          f"{version.extra.get('modules', 0)} adapted modules)")
    return 0


def cmd_export(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.transfer import export_versions

    versions = export_versions(registry_store(home), args.refs, Path(args.file), force=args.force)
    print(f"exported {', '.join(v.ref for v in versions)} to {args.file}")
    return 0


def _progress(message: str, fraction: float) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def cmd_merge(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.merge import merge_version

    result = merge_version(registry_store(home), args.ref, Path(args.out), dtype=args.dtype,
                           base_weights=args.base_weights, force=args.force, name=args.name, check=not args.no_check,
                           on_progress=None if args.quiet else _progress)
    if args.json:
        print_json(result.to_json())
        return 0
    if result.warning and args.quiet:  # otherwise it was printed as it happened
        print(f"warning: {result.warning}", file=sys.stderr)
    print(f"merged {result.adapter.ref} into {result.version.base_model} ({result.dtype}, base weights "
          f"{result.base_weights}, {result.method}) in {result.seconds:.1f} s")
    if result.note:
        print(f"  note: {result.note}")
    if result.fidelity:
        f = result.fidelity
        print(f"  fidelity vs. {f.reference}: top-1 agreement {f.top1_agreement:.1%}, max KL {number(f.max_kl)}, "
              f"mean KL {number(f.mean_kl)} over {f.positions} positions")
    print(f"registered {result.version.ref}\n  files: {result.out_dir}")
    return 0


def cmd_compare(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.compare import compare_generate

    store = registry_store(home)
    if args.reward:
        from qlora_tui.registry.score import reward_version

        reward_version(store, args.reward)  # a wrong ref fails before the base is loaded for generation
    answers = compare_generate(store, args.refs, args.prompt, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p, seed=args.seed, raw=args.raw,
                               on_progress=None if args.json else _progress,
                               on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
    scores: list[float | None] = [None] * len(answers)
    if args.reward:
        from qlora_tui.registry.score import score_answers

        scores = list(score_answers(store, args.reward, args.prompt, [a.text for a in answers],
                                    on_progress=None if args.json else _progress))
    if args.json:
        print_json([a.to_json() | ({"score": s} if s is not None else {}) for a, s in zip(answers, scores)])
        return 0
    ranked = sorted((s for s in scores if s is not None), reverse=True)
    for answer, score in zip(answers, scores):
        scored = f", reward {score:+.3f} (#{ranked.index(score) + 1})" if score is not None else ""
        print(f"== {answer.label}  ({answer.seconds:.2f} s, {answer.new_tokens} tokens{scored})")
        print(answer.text.strip() or "(empty answer)")
    return 0


def cmd_push(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.push import push_version

    record = push_version(registry_store(home), args.ref, args.repo, private=args.private, merged=args.merged)
    if args.json:
        print_json(record.to_json())
        return 0
    print(f"pushed {record.ref} to {record.repo} ({len(record.files)} files)\n  commit {record.commit_id}\n"
          f"  {record.url}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("tag", help="point an alias (prod, best, ...) at a version: NAME@ALIAS then resolves to it")
    p.add_argument("ref", help="NAME@N")
    p.add_argument("alias")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("untag", help="remove an alias")
    p.add_argument("name")
    p.add_argument("alias")
    p.set_defaults(func=cmd_untag)

    p = sub.add_parser("diff", help="what differs between two versions: profile, data set, metrics, base model")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("verify", help="re-hash stored files and name every one that differs or is missing")
    p.add_argument("ref", nargs="?", help="one version (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("delete", help="delete a version (refuses one that others derive from unless --force)")
    p.add_argument("ref", help="NAME@N")
    p.add_argument("--force", action="store_true", help="delete even if other versions derive from it")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("gc", help="remove leftovers of interrupted adds, imports, merges and deletes")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("registry", help="registry maintenance: rebuild the index from the stored versions")
    registry_sub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    r = registry_sub.add_parser("rebuild", help="recreate a lost, emptied or damaged index from the version files")
    r.add_argument("--force", action="store_true", help="rebuild even a healthy index (stop other qlora-tui work)")
    r.set_defaults(func=cmd_registry_rebuild)

    p = sub.add_parser("import", help="register a PEFT LoRA directory made elsewhere, or versions from an export .tar")
    p.add_argument("source", help="adapter directory (adapter_config.json + adapter_model.safetensors) or FILE.tar")
    p.add_argument("--name", help="adapter name to register under (needed for a directory)")
    p.add_argument("--base", help="base model (Hub id, directory or builtin:NAME) when the config does not name it")
    p.add_argument("--method", default="", help="training method to record (sft, dpo, ...)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write versions with their metadata to a .tar (or .tar.gz) for another machine")
    p.add_argument("refs", nargs="+", metavar="REF")
    p.add_argument("file", metavar="FILE.tar")
    p.add_argument("--force", action="store_true", help="overwrite FILE.tar if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("merge", help="merge an adapter into its unquantized base, check fidelity, register the result")
    add_merge_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("compare", help="the base and each adapter answer one prompt, in one batched generate call")
    add_compare_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("push", help="upload a version (or its merged model) to the Hugging Face Hub with a model card")
    p.add_argument("ref", help="NAME, NAME@N or NAME@ALIAS")
    p.add_argument("--repo", required=True, help="OWNER/NAME; created if it does not exist")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--merged", action="store_true", help="push the version's newest merged model instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_push)
