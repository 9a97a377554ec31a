"""The latest eval results of a version, one per prompt set and benchmark task, as short lines for `show`, the
app and the model card."""

from __future__ import annotations

from qlora_tui.registry.evalrecords import KIND_BENCH, EvalResult


def latest_per_set(results: list[EvalResult]) -> list[EvalResult]:
    """The newest result of each (kind, set or task), in the order they were first run."""
    latest: dict[tuple[str, str], EvalResult] = {}
    for result in sorted(results, key=lambda r: r.created):
        latest[(result.kind, result.name)] = result
    return list(latest.values())


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def result_line(result: EvalResult) -> str:
    """One line: `prompts demo: 75.0% passed (15/20; base 10.0%), vs quick@1: 2 newly fail`."""
    s = result.summary
    if result.kind == KIND_BENCH:
        metrics, base = s.get("metrics") or {}, s.get("base_metrics") or {}
        shown = [f"{k.split(',')[0]} {_score(v)} (base {_score(base.get(k))})" for k, v in sorted(metrics.items())
                 if "," in k and "_stderr" not in k]
        return f"bench {result.name}: {', '.join(shown) or 'no metrics'}"
    rate = s.get("pass_rate")
    line = f"prompts {result.name}: " + (f"{rate:.1%} passed ({s.get('passed')}/{s.get('scored')}" if rate is not None
                                          else f"{s.get('prompts')} prompts, none scored (")
    base = s.get("base_pass_rate")
    line += f"; base {base:.1%})" if base is not None else ")"
    if s.get("previous"):
        failing = s.get("newly_failing") or []
        line += f", vs {s['previous']}: {len(failing)} newly fail" if failing else f", vs {s['previous']}: no new fails"
    return line
