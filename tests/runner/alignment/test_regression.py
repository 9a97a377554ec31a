"""Regression warnings: a run that ends worse than it started by its own measure says so, in words."""

from __future__ import annotations

from qlora_tui.runner.events import fold_events
from qlora_tui.runner.regression import alignment_warnings, eval_loss_warnings
from qlora_tui.tui.follow import alignment_lines

HELD = "24 held-out pairs"


def pairs(before: float, after: float, margin_before: float = 0.5, margin_after: float = 1.0) -> dict[str, float]:
    return {"align/accuracy_before": before, "align/accuracy_after": after,
            "align/margin_before": margin_before, "align/margin_after": margin_after}


def test_preference_accuracy_that_falls_is_a_regression() -> None:
    (line,) = alignment_warnings(pairs(0.792, 0.708), "dpo", HELD)
    assert line.startswith("regression: preference accuracy fell from 0.792 to 0.708 on 24 held-out pairs")
    (line,) = alignment_warnings(pairs(0.9, 0.85), "reward", HELD)
    assert line == "regression: ranking accuracy fell from 0.9 to 0.85 on 24 held-out pairs"
    (line,) = alignment_warnings(pairs(0.75, 0.75, 1.0, 0.4), "orpo", HELD)
    assert "stayed at 0.75 and the mean margin fell from 1 to 0.4" in line


def test_a_gain_or_no_measure_is_not_a_regression() -> None:
    assert alignment_warnings(pairs(0.583, 0.833), "dpo", HELD) == []
    assert alignment_warnings(pairs(0.75, 0.75, 0.5, 0.6), "kto", HELD) == []
    assert alignment_warnings({"steps": 10}, "dpo", "") == []
    rl = {"align/reward_before": 0.39, "align/reward_after": 0.65,
          "align/greedy_reward_before": 1.0, "align/greedy_reward_after": 1.2}
    assert alignment_warnings(rl, "rlhf", HELD) == []


def test_rl_names_sampled_and_greedy_reward_falls_apart() -> None:
    rl = {"align/reward_before": 0.39, "align/reward_after": 0.65,
          "align/greedy_reward_before": 2.361, "align/greedy_reward_after": 0.819}
    (line,) = alignment_warnings(rl, "rlhf", "24 held-out prompts")
    assert line.startswith("regression: the reward of greedy answers fell from 2.36 to 0.819 on 24 held-out prompts "
                           "while the sampled reward rose")
    both = alignment_warnings({**rl, "align/reward_after": 0.2}, "rlhf", "")
    assert len(both) == 2 and both[0].startswith("regression: the reward model's mean score of sampled answers fell "
                                                 "from 0.39 to 0.2")


def test_eval_loss_that_ends_above_its_start() -> None:
    history = [{"loss": 2.0, "step": 5}, {"eval_loss": 1.5, "step": 10}, {"eval_loss": 1.2, "step": 20},
               {"eval_loss": 1.7, "step": 30}]
    (line,) = eval_loss_warnings(history)
    assert line.startswith("regression: eval loss rose from 1.5 (step 10) to 1.7 (step 30); it was lowest, 1.2, "
                           "at step 20")
    assert eval_loss_warnings(history[:3]) == [] and eval_loss_warnings(history[-1:]) == []


def test_two_evaluations_at_the_same_step_are_not_a_rise() -> None:
    """Found by the chain test: a 15-step DPO run with eval_steps 20 was evaluated twice at its last step (0.838,
    then 0.839) and warned "eval loss rose from 0.838 (step 15) to 0.839 (step 15)". One step is one measure."""
    history = [{"loss": 2.0, "step": 15}, {"eval_loss": 0.838, "step": 15}, {"eval_loss": 0.839, "step": 15}]
    assert eval_loss_warnings(history) == []
    later = [*history, {"eval_loss": 0.9, "step": 25}]
    (line,) = eval_loss_warnings(later)
    assert line.startswith("regression: eval loss rose from 0.838 (step 15) to 0.9 (step 25)")


def test_warnings_and_alignment_steps_fold_into_the_run_state() -> None:
    events = [
        {"type": "start", "t": 1, "method": "dpo", "alignment_slice": HELD},
        {"type": "alignment_step", "step": 0, "align/accuracy": 0.5, "align/margin": 0.1},
        {"type": "step", "step": 10, "loss": 0.6},
        {"type": "alignment_step", "step": 10, "align/accuracy": 0.7, "align/margin": 0.9},
        {"type": "done", "t": 2, "summary": {**pairs(0.5, 0.4), "align/best_step": 10.0},
         "warnings": ["regression: preference accuracy fell"]},
    ]
    state = fold_events(events)
    assert state.alignment_slice == HELD and state.warnings == ["regression: preference accuracy fell"]
    assert state.metric_history["align/accuracy"] == [(0, 0.5), (10, 0.7)]
    assert alignment_lines("dpo", state.summary) == ["preference accuracy: 0.5 -> 0.4, mean margin 0.5 -> 1",
                                                     "best measured at step 10"]
    rl = {"align/reward_before": 0.39, "align/reward_after": 0.65, "align/greedy_reward_before": 2.361,
          "align/greedy_reward_after": 2.5}
    assert alignment_lines("rlhf", rl) == ["reward of sampled answers (what RL optimises): 0.39 -> 0.65",
                                           "reward of greedy answers: 2.361 -> 2.5"]


def test_the_alignment_measure_holds_out_prompts_by_default() -> None:
    """With data.eval_fraction = 0 a fifth of the prompts is set aside for the measure and never trained on; the
    split is by prompt, so a pair the data repeats, or a KTO row of a held-out pair, is not trained on either."""
    import json

    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.runner.alignment.holdout import measurement_split
    from qlora_tui.runner.data.preference import to_alignment_examples
    from qlora_tui.runner.data.rows import read_rows
    from tests.conftest import ROOT

    def prompts(rows: list[dict[str, object]]) -> set[str]:
        return {json.dumps(r["prompt"]) for r in rows}

    profile = load_profile(ROOT / "profiles" / "demo-rlhf-reward.toml")
    profile.data.eval_fraction = 0.0
    raw = read_rows(profile.data)
    rows = to_alignment_examples(raw, "reward", "preference").examples
    assert len(prompts(rows)) < len(rows)  # the demo repeats prompts (and whole pairs)
    train, evaluation, held, words = measurement_split(raw, profile, rows)
    assert evaluation == [] and len(train) + len(held) == len(rows) and not prompts(train) & prompts(held)
    assert len(prompts(held)) == int(len(prompts(rows)) * 0.2)
    assert words == (f"{len(held)} held-out pairs (data.eval_fraction is 0, so 20% of the prompts were set aside "
                     "for this measure; none is trained on)")
    profile.data.eval_fraction = 0.25
    train, evaluation, held, words = measurement_split(raw, profile, rows)
    assert evaluation == held and not prompts(train) & prompts(held)
    assert words.endswith("held-out pairs (the data.eval_fraction split; none is trained on)")

    profile.train.method, profile.data.eval_fraction = "kto", 0.0
    kto_rows = to_alignment_examples(raw, "kto", "preference").examples
    train, evaluation, held, _ = measurement_split(raw, profile, kto_rows)
    assert held and evaluation == [] and not prompts(train) & prompts(held)
    assert len(train) == 2 * (len(rows) - len(held))

    profile.train.method = "dpo"
    few = rows[:10]
    train, _, held, words = measurement_split(raw, profile, few)
    assert train == few == held and words == "training pairs (too few prompts to hold any out)"


def test_answers_that_collapse_into_repeats_are_flagged_as_reward_hacking() -> None:
    """Issue 13, found running the demo: RL at beta 0.02 answered "...................." to every held-out prompt,
    which the reward model scored 9 (its SFT start: 0.2). A higher reward must not hide that. At the shipped beta a
    seed answered a lone "." (bench_alignment, seed 3), which a reader would not want either."""
    from qlora_tui.runner.alignment.measure import is_degenerate

    assert [is_degenerate(a) for a in ("....................", ".\ufffd.\ufffd. is. is. is. is........", "", "  ",
                                       "is is is is", ".", " ?! ")] == [True] * 7
    assert [is_degenerate(a) for a in ("Tuesday", "7", "Tuesday.", "17 plus 25 is 42.", "No, not at all.",
                                       "the cat and the dog and the bird")] == [False] * 6
    metrics = {"align/reward_before": -0.19, "align/reward_after": 9.42, "align/greedy_reward_before": 0.17,
               "align/greedy_reward_after": 9.18, "align/degenerate_before": 0.0, "align/degenerate_after": 1.0}
    (warning,) = alignment_warnings(metrics, "rlhf", "32 held-out prompts")
    assert warning.startswith("reward hacking: 100% of the greedy answers on 32 held-out prompts are degenerate")
    metrics["align/degenerate_after"] = 0.2
    assert alignment_warnings(metrics, "rlhf", "") == []
