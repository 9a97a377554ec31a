"""Whether a run ended worse than it started by its own measure: a plain warning, never a failure.

A preference or RL run that lowers its held-out alignment figure, or a run whose
eval loss ends above where it started, still registers its adapter (it may be
what the user wanted to see), but the `done` event, `qlora-tui run`, `show`,
the Registry screen and the model card all carry the warning.
"""

from __future__ import annotations

from typing import Any

DEGENERATE_RISE = 0.25  # this much more of the greedy answers degenerate than before training is flagged


def _f(value: float) -> str:
    return f"{value:.3g}"


def alignment_warnings(metrics: dict[str, Any], method: str, where: str) -> list[str]:
    """One line per alignment figure that ended below its starting value."""
    out: list[str] = []
    on = f" on {where}" if where else ""
    if method == "rlhf":
        before, after = metrics.get("align/reward_before"), metrics.get("align/reward_after")
        if before is not None and after is not None and after < before:
            out.append(f"regression: the reward model's mean score of sampled answers fell from {_f(before)} to "
                       f"{_f(after)}{on}: the policy got worse at what RL optimises (try a lower train.lr or a "
                       "higher method.beta)")
        g_before, g_after = metrics.get("align/greedy_reward_before"), metrics.get("align/greedy_reward_after")
        if g_before is not None and g_after is not None and g_after < g_before:
            rose = after is not None and before is not None and after >= before
            out.append(f"regression: the reward of greedy answers fell from {_f(g_before)} to {_f(g_after)}{on}"
                       + (" while the sampled reward rose: what training samples improved, what greedy decoding "
                          "answers did not (try a lower method.temperature or a higher method.beta)" if rose else ""))
        d_before, d_after = metrics.get("align/degenerate_before"), metrics.get("align/degenerate_after")
        if d_before is not None and d_after is not None and d_after - d_before >= DEGENERATE_RISE:
            out.append(f"reward hacking: {d_after:.0%} of the greedy answers{on} are degenerate (empty, no letter "
                       f"or digit, or one character or word over and over), up from {d_before:.0%}; the reward "
                       "model scores them high, a reader would not (a higher method.beta, a lower train.lr or fewer "
                       "steps keep the policy nearer its SFT start)")
        return out
    before, after = metrics.get("align/accuracy_before"), metrics.get("align/accuracy_after")
    if before is None or after is None:
        return out
    what = "ranking accuracy" if method == "reward" else "preference accuracy"
    margin_before, margin_after = metrics.get("align/margin_before", 0.0), metrics.get("align/margin_after", 0.0)
    if after < before:
        out.append(f"regression: {what} fell from {_f(before)} to {_f(after)}{on}"
                   + ("" if method == "reward" else ": the adapter prefers the chosen answers less often than the "
                      "policy it started from (try a lower train.lr, fewer steps or a higher method.beta)"))
    elif after == before and margin_after < margin_before:
        out.append(f"regression: {what} stayed at {_f(after)} and the mean margin fell from {_f(margin_before)} to "
                   f"{_f(margin_after)}{on}")
    return out


def eval_loss_warnings(log_history: list[dict[str, Any]]) -> list[str]:
    """Eval loss that ends above the first evaluation's (needs evaluations at two steps or more; a step evaluated
    twice, as the last step can be, counts once, by its first figure)."""
    by_step: dict[int, float] = {}
    for h in log_history:
        if isinstance(h.get("eval_loss"), (int, float)):
            by_step.setdefault(int(h.get("step", 0)), float(h["eval_loss"]))
    evals = sorted(by_step.items())
    if len(evals) < 2 or evals[-1][1] <= evals[0][1]:
        return []
    (first_step, first), (last_step, last) = evals[0], evals[-1]
    best_step, best = min(evals, key=lambda e: e[1])
    return [f"regression: eval loss rose from {_f(first)} (step {first_step}) to {_f(last)} (step {last_step}); "
            f"it was lowest, {_f(best)}, at step {best_step}: the adapter overfits (fewer steps or a lower train.lr)"]
