"""Alignment methods on the tiny model with real TRL: each moves its metric the right way, with lineage.

The session fixture starts from the SFT adapter `quick@1` of trained_home and
adds: a DPO run on top of it, a reward model, and an RL run against that
reward model, so the RLHF chain SFT -> reward -> RL is exercised end to end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from qlora_tui.core.profile.files import dumps_profile, load_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.quant import resolve_compute_dtype, torch_dtype
from qlora_tui.registry.store import open_store
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.rundir import create_run, list_runs, summarize
from tests.conftest import ROOT, run_to_end
from tests.runner.helpers import events_of

pytestmark = pytest.mark.slow


def preference_profile(name: str, method: str, steps: int, **method_options: object) -> Profile:
    """The DPO demo on the first 16 original demo pairs from the bare base: too few prompts to hold any out, so the
    run measures (and says it measures) on its training pairs: these tests check that each method moves its own
    figure the right way; the held-out gains of the shipped chains are in test_alignment_chains.py."""
    profile = load_profile(ROOT / "profiles" / "demo-dpo.toml")
    profile.name, profile.train.method, profile.train.max_steps = name, method, steps
    profile.train.save_steps = steps
    profile.model.adapter, profile.data.path, profile.data.max_rows = "", "builtin:demo-preferences", 16
    profile.train.lr, profile.train.eval_steps = 2e-3, 0  # what these tests were tuned on, not the demo chain's
    profile.data.eval_fraction = 0.0
    for key, value in method_options.items():
        setattr(profile.method, key, value)
    profile.method_keys = tuple(method_options)
    return profile


@pytest.fixture(scope="session")
def aligned_home(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("aligned") / "home"
    shutil.copytree(trained_home, home, symlinks=True)
    dpo = preference_profile("dpo-on-sft", "dpo", 40)
    dpo.model.adapter = "quick@1"
    run_to_end(home, dpo)
    reward = load_profile(ROOT / "profiles" / "demo-rlhf-reward.toml")
    reward.name, reward.train.max_steps, reward.data.max_rows = "rm", 60, 16
    reward.model.adapter = "quick@1"  # a reward model may start from the SFT policy, as InstructGPT's does
    run_to_end(home, reward)
    rl = load_profile(ROOT / "profiles" / "demo-rlhf.toml")
    rl.name, rl.model.adapter, rl.method.reward_model, rl.train.max_steps = "rl", "quick@1", "rm@1", 10
    run_to_end(home, rl)
    return home


def run_named(home: Path, name: str) -> object:
    return next(r for r in list_runs(home) if summarize(r).state.profile_name == name)


def test_dpo_from_sft_records_lineage_reference_and_alignment(aligned_home: Path) -> None:
    store = open_store(aligned_home)
    version = store.get("dpo-on-sft")
    assert version.method == "dpo" and version.parent_ref == "quick@1"
    assert [v.ref for v in store.lineage(version.ref)] == ["quick@1", "dpo-on-sft@1"]
    m = version.metrics
    assert m["align/accuracy_after"] > m["align/accuracy_before"]
    assert m["align/margin_after"] > m["align/margin_before"]
    assert m["align/reward_accuracy"] > 0.5 and m["align/pairs"] == 16
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(m)
    run = run_named(aligned_home, "dpo-on-sft")
    (start,) = events_of(run, "start")
    assert start["reference"].startswith("quick@1 (the starting SFT policy")
    assert start["alignment_slice"] == "training pairs (too few prompts to hold any out)"
    steps = events_of(run, "step")
    assert all("rewards/accuracies" in e for e in steps)


def test_preference_run_starts_from_the_sft_weights_not_a_fresh_lora(aligned_home: Path) -> None:
    """The baseline measured at step 0 equals base + quick@1, computed here independently."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from qlora_tui.core.builtin import builtin_model_dir
    from qlora_tui.core.profile.schema import DataSection
    from qlora_tui.runner.alignment.measure import answer_logps
    from qlora_tui.runner.data.preference import to_alignment_examples
    from qlora_tui.runner.data.rows import read_rows
    from qlora_tui.runner.model import keep_trainable_4bit_layout

    run = run_named(aligned_home, "dpo-on-sft")
    (baseline,) = events_of(run, "alignment_baseline")
    pairs = to_alignment_examples(read_rows(DataSection(path="builtin:demo-preferences")), "dpo", "preference").examples
    compute = resolve_compute_dtype("auto")  # what the run computed in: fp32 on the CPU, bf16 on a GPU
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch_dtype(compute))
    base = AutoModelForCausalLM.from_pretrained(builtin_model_dir(aligned_home, "builtin:tiny-llama"),
                                                quantization_config=quant, dtype=torch_dtype(compute))
    sft_path = open_store(aligned_home).get("quick@1").path
    # the run keeps bitsandbytes' training layout (no CPU inference repack, whose bf16 kernel rounds ~0.03 apart
    # on CPUs with AVX512-BF16); measure the same way, or the comparison depends on the machine
    keep_trainable_4bit_layout(base)
    model = PeftModel.from_pretrained(base, str(sft_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    first = pairs[:4]
    chosen = answer_logps(model, tokenizer, [p["prompt"] for p in first], [p["chosen"] for p in first], 128)
    rejected = answer_logps(model, tokenizer, [p["prompt"] for p in first], [p["rejected"] for p in first], 128)
    expected = [c - r for c, r in zip(chosen, rejected)]
    # the run's model kept its norms and head in fp32 (k-bit training prep); in bf16 that rounds differently here
    tolerance = 1e-3 if compute == "fp32" else 0.25
    assert baseline["baseline"]["deltas"][:4] == pytest.approx(expected, abs=tolerance)
    with model.disable_adapter():
        bare_c = answer_logps(model, tokenizer, [p["prompt"] for p in first], [p["chosen"] for p in first], 128)
    # the SFT adapter matters, so the check above means something
    assert bare_c != pytest.approx(chosen, abs=max(1e-2, 4 * tolerance))


def test_dpo_from_scratch_improves_preference_on_its_pairs_measured_as_it_trains(home: Path) -> None:
    profile = preference_profile("dpo", "dpo", 40)
    profile.train.eval_steps = 10
    run = run_to_end(home, profile)
    m = open_store(home).get("dpo").metrics
    assert m["align/accuracy_after"] > m["align/accuracy_before"] and m["align/reward_accuracy"] > 0.5
    assert events_of(run, "start")[0]["reference"].startswith("the base model")
    measured = events_of(run, "alignment_step")
    assert [e["step"] for e in measured] == [0, 10, 20, 30, 40]
    assert measured[0]["align/accuracy"] == m["align/accuracy_before"]
    assert measured[-1]["align/accuracy"] == m["align/accuracy_after"]
    best = max(measured, key=lambda e: (e["align/accuracy"], e["align/margin"]))
    assert m["align/best_step"] == best["step"] and m["align/best_accuracy"] == best["align/accuracy"]


def test_orpo_improves_preference_without_a_reference(home: Path) -> None:
    run = run_to_end(home, preference_profile("orpo", "orpo", 120, beta=2.0))
    m = open_store(home).get("orpo").metrics
    assert m["align/accuracy_after"] > m["align/accuracy_before"]
    assert m["align/margin_after"] > m["align/margin_before"]
    assert "align/reward_accuracy" not in m  # reference-free: no implicit reward
    assert events_of(run, "start")[0]["reference"] == "none (ORPO is reference-free)"
    assert "log_odds_ratio" in events_of(run, "step")[-1]
    # TRL's ORPO trainer counts no tokens; the runner counts the real ones itself
    assert all(e["tokens_per_s"] > 0 for e in events_of(run, "step")[1:])
    assert m["tokens_per_s_avg"] > 0 and m["tokens_trained"] > 0


def test_kto_on_unpaired_rows_and_on_pairs(home: Path) -> None:
    unpaired = preference_profile("kto-rows", "kto", 10, beta=0.1)
    unpaired.data.path, unpaired.data.format = "builtin:demo-kto", "kto"
    run = run_to_end(home, unpaired)
    assert "align/accuracy_after" not in open_store(home).get("kto-rows").metrics  # no pairs to measure on
    assert events_of(run, "preflight")[0]["format"] == "kto"
    paired = preference_profile("kto", "kto", 60, beta=0.1)
    paired.data.format = "auto"
    run_to_end(home, paired)
    m = open_store(home).get("kto").metrics
    assert m["align/accuracy_after"] > m["align/accuracy_before"] and m["align/reward_accuracy"] > 0.5


def test_reward_model_learns_to_rank_chosen_first(aligned_home: Path) -> None:
    """Started from the SFT adapter quick@1: its LoRA weights, plus a new score head, trained; lineage says so."""
    store = open_store(aligned_home)
    version = store.get("rm")
    assert version.kind == "reward" and version.method == "reward"
    assert [v.ref for v in store.lineage(version.ref)] == ["quick@1", "rm@1"]
    m = version.metrics
    assert m["align/accuracy_after"] > m["align/accuracy_before"]
    assert m["align/margin_after"] > m["align/margin_before"]
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in (config.get("modules_to_save") or [])
    from safetensors.torch import load_file

    trained, start = (load_file(str(v.path / "adapter_model.safetensors")) for v in (version, store.get("quick@1")))
    key = next(k for k in start if "lora_A" in k)
    cosine = torch.nn.functional.cosine_similarity(trained[key].flatten(), start[key].flatten(), dim=0)
    assert cosine > 0.5  # grown from quick@1's weights (a fresh LoRA's random A would be near 0)


def test_rl_against_the_reward_model_measures_sampled_and_greedy_reward_with_kl_control(aligned_home: Path) -> None:
    """The plumbing of the third stage (lineage, KL, both reward figures on held-out prompts); that the shipped
    demo raises them is test_alignment_chains.py's job."""
    store = open_store(aligned_home)
    version = store.get("rl")
    assert version.method == "rlhf" and [v.ref for v in store.lineage("rl")] == ["quick@1", "rl@1"]
    m = version.metrics
    assert {"align/reward_before", "align/reward_after", "align/greedy_reward_before",
            "align/greedy_reward_after"} <= set(m)
    assert version.extra["alignment_slice"].startswith(f"{int(m['align/prompts'])} held-out prompts")
    run = run_named(aligned_home, "rl")
    steps = events_of(run, "step")
    assert all("reward" in e and "kl" in e for e in steps)
    assert any(e["kl"] != 0 for e in steps)
    (baseline,) = events_of(run, "alignment_baseline")
    assert len(baseline["baseline"]["sampled_scores"]) == 4 * len(baseline["baseline"]["scores"])


def test_rlhf_refuses_a_version_that_is_not_a_reward_model(aligned_home: Path, tmp_path: Path) -> None:
    from qlora_tui.runner.__main__ import main as runner_main

    home = tmp_path / "home"
    shutil.copytree(aligned_home, home, symlinks=True)
    profile = load_profile(ROOT / "profiles" / "demo-rlhf.toml")
    profile.model.adapter, profile.method.reward_model = "quick@1", "dpo-on-sft@1"
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    assert runner_main([str(run.path)]) == 1
    (error,) = events_of(run, "error")
    assert error["message"] == "method.reward_model: dpo-on-sft@1 is a 'adapter' version, not a reward model"


def test_bad_preference_file_fails_with_file_and_line_before_training(home: Path, tmp_path: Path) -> None:
    from qlora_tui.runner.__main__ import main as runner_main

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    profile = preference_profile("bad", "dpo", 5)
    profile.data.path = str(data)
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    assert runner_main([str(run.path)]) == 1
    (error,) = events_of(run, "error")
    assert error["message"] == (f"{data}:2: preference row lacks 'rejected'; preference rows have chosen, "
                                "rejected (optional: prompt)")
    assert not events_of(run, "start") and open_store(home).list_versions() == []


def test_dpo_can_precompute_reference_log_probs(home: Path) -> None:
    profile = preference_profile("dpo-pre", "dpo", 6, precompute_ref_log_probs=True)
    run = run_to_end(home, profile)
    assert summarize(run).status == "done"
    assert all("rewards/accuracies" in e for e in events_of(run, "step"))
    assert "precompute_ref_log_probs = true" in open_store(home).get("dpo-pre").profile


def test_every_method_records_real_tokens_per_second(aligned_home: Path) -> None:
    """SFT, DPO, reward and RL runs all count their real tokens; only SFT packs, and the others say why not."""
    store = open_store(aligned_home)
    for run in list_runs(aligned_home):
        (start,) = events_of(run, "start")
        steps = events_of(run, "step")
        assert steps and all(e["tokens_per_s"] > 0 for e in steps), start["method"]
        assert start["packing"] is (start["method"] == "sft"), start["packing_note"]
        done = events_of(run, "done")[0]
        metrics = store.get(done["registry_ref"]).metrics
        assert metrics["tokens_per_s_avg"] > 0 and metrics["tokens_trained"] == steps[-1]["tokens_seen"]
