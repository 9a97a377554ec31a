"""Throughput, MFU and memory per run: real tokens counted for every method, the fast path said, the plan checked.

Expectations that depend on the machine are derived from it: a CPU run says
what it could not measure, a GPU run measures it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qlora_tui.core.gpu_peaks import peak_bf16_tflops, utilisation_pct
from qlora_tui.registry.store import open_store
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.fast.choice import choose_fast_path, flash_available
from qlora_tui.runner.fast.packed_attention import PACKED_ATTENTION
from qlora_tui.runner.measure import MEMORY_CHECK_STEP, TokenCounter, memory_comparison
from qlora_tui.runner.rundir import list_runs
from tests.conftest import quick_profile
from tests.runner.helpers import events_of
from tests.runner.test_bad_input import assert_failed_before_training, keep_signal_handlers, run_in_process

__all__ = ["keep_signal_handlers"]  # the runner's entry point sets signal handlers; this fixture restores them


def tiny_config(home: Path) -> object:
    from qlora_tui.core.builtin import builtin_model_dir
    from qlora_tui.core.models import BaseModel
    from qlora_tui.runner.model import load_config

    return load_config(BaseModel("builtin:tiny-llama", builtin_model_dir(home, "builtin:tiny-llama"), "", ""), False)


@pytest.mark.parametrize(("name", "label", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0),
    ("NVIDIA H200", "H200 SXM", 989.0),
    ("NVIDIA GH200 480GB", "GH200", 989.0),
    ("NVIDIA A100-SXM4-40GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA L40S", "L40S", 362.0),
    ("NVIDIA L4", "L4", 121.0),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 165.2),
    ("NVIDIA GeForce RTX 3090", "GeForce RTX 3090", 71.0),
])
def test_known_gpus_have_their_dense_bf16_peak(name: str, label: str, tflops: float) -> None:
    assert peak_bf16_tflops(name) == (label, tflops)


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla T4", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 3090 Ti",
                                  "cpu", ""])
def test_an_unknown_gpu_gets_no_mfu_rather_than_a_wrong_one(name: str) -> None:
    assert peak_bf16_tflops(name) is None and utilisation_pct(3.2e14, 1.0, name) is None


def test_utilisation_is_flops_per_second_over_the_peak() -> None:
    # 3.2e14 FLOP in one second on a 989 TFLOPS H100: 32.4%
    assert utilisation_pct(3.2e14, 1.0, "NVIDIA H100 80GB HBM3") == 32.4  # three significant figures


def test_token_counter_counts_real_tokens_of_training_forwards_only(model_home: Path) -> None:
    from transformers import AutoModelForCausalLM

    from qlora_tui.core.builtin import builtin_model_dir

    model = AutoModelForCausalLM.from_pretrained(builtin_model_dir(model_home, "builtin:tiny-llama"),
                                                 dtype=torch.float32)
    counter = TokenCounter()
    counter.attach(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13], [5, 6, 7, 8, 9, 0, 0, 0, 0]])
    mask = (torch.arange(9) < torch.tensor([[9], [5]])).long()
    model.train()
    model(input_ids=ids, attention_mask=mask, use_cache=False)  # padded: 14 real tokens of 18
    assert counter.take() == 14
    model(ids[:1, :7], position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3]]), use_cache=False)  # packed: no padding
    assert counter.take() == 7
    with torch.no_grad():  # a reference or evaluation forward
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    model.eval()
    model(input_ids=ids, attention_mask=mask, use_cache=False)
    assert counter.take() == 0 and counter.total == 21
    counter.detach()
    model.train()
    model(input_ids=ids, attention_mask=mask, use_cache=False)
    assert counter.take() == 0


def test_memory_check_warns_only_beyond_fifteen_percent() -> None:
    gib = 1024 ** 3 / 1e9  # GB per GiB
    measured = {"gpu_mem_peak_gb": 9.0, "gpu_mem_reserved_peak_gb": 10.0 / gib}  # 10 GB reserved
    fields, warning = memory_comparison(11.4, measured, 3)
    assert fields["off_pct"] == pytest.approx(14.0) and warning is None
    fields, warning = memory_comparison(12.0, measured, 3)
    assert fields["measured_peak_reserved_gb"] == pytest.approx(10.0) and fields["off_pct"] == pytest.approx(20.0)
    assert warning is not None and "20% above the measured peak (10.00 GB" in warning
    _, warning = memory_comparison(8.0, measured, 3)
    assert warning is not None and "20% below" in warning and "NVML cannot see this process" in warning
    # with NVML's view of the process, the CUDA context (what it holds beyond torch's reserve) is counted too
    now = {**measured, "gpu_mem_reserved_gb": 9.0}
    fields, warning = memory_comparison(12.0, now, 3, process_gib=9.0 + 0.75 / gib)
    assert fields["measured_peak_gb"] == pytest.approx(10.75) and fields["off_pct"] == pytest.approx(11.6, abs=0.1)
    assert warning is None and "0.75 GB of CUDA context" in fields["measured"]


def test_the_fast_path_packs_sft_only_and_says_why_not_elsewhere(model_home: Path) -> None:
    config = tiny_config(model_home)
    sft = choose_fast_path(quick_profile(), config)
    cuda = torch.cuda.is_available()
    assert sft.packing and "within rows" in sft.packing_note
    if not cuda:
        # packed rows get our per-row attention, never SDPA's T x T block mask
        assert sft.attn_implementation == PACKED_ATTENTION and "no T x T mask" in sft.attn_note
        assert not sft.liger and sft.liger_note.startswith("no CUDA GPU")
    else:
        assert sft.attn_implementation in (PACKED_ATTENTION, "flash_attention_2", "flash_attention_3")
    asked = quick_profile()
    asked.model.attn_implementation = "sdpa"  # asked for by name: SDPA it is, block mask and all
    assert choose_fast_path(asked, config).attn_implementation == "sdpa"
    dpo = quick_profile()
    dpo.train.method = "dpo"
    off = choose_fast_path(dpo, config)
    assert not off.packing and "DPOTrainer switches padding_free off" in off.packing_note
    assert off.attn_implementation in ("sdpa", "flash_attention_2", "flash_attention_3")  # padded rows: SDPA's mask
    unpacked = quick_profile(packing=False, liger=False)
    chosen = choose_fast_path(unpacked, config)
    assert (chosen.packing, chosen.packing_note) == (False, "train.packing = false")
    assert (chosen.liger, chosen.liger_note) == (False, "train.liger = false")


@pytest.mark.skipif(torch.cuda.is_available() and flash_available("flash_attention_2"),
                    reason="flash-attention is installed on this GPU machine, so the request is valid here")
def test_asking_for_flash_attention_where_there_is_none_fails_before_loading(home: Path) -> None:
    profile = quick_profile("flash")
    profile.model.attn_implementation = "flash_attention_2"
    code, run = run_in_process(home, profile)
    error = assert_failed_before_training(home, run, code, "run", r"flash_attention_2 needs the flash-attn")
    assert 'model.attn_implementation = "auto"' in error["hint"]
    with pytest.raises(RunError):
        choose_fast_path(profile, tiny_config(home))


def test_a_run_records_its_path_throughput_and_memory_plan(trained_home: Path) -> None:
    (run,) = list_runs(trained_home)
    (start,) = events_of(run, "start")
    assert start["packing"] is True and start["attn_implementation"] in (PACKED_ATTENTION, "flash_attention_2",
                                                                         "flash_attention_3")
    assert start["checkpointing"] == "off"  # the demo profile's train.gradient_checkpointing = false
    compute = "bf16" if torch.cuda.is_available() else "fp32"  # quant.compute_dtype = "auto"
    assert start["dtypes"] == {"stream": compute, "base": f"nf4 4-bit, dequantized to {compute}", "lora": "fp32"}
    assert start["memory_estimate_gb"] > 0 and start["memory_estimate_note"].startswith("qlora-tui estimate")
    assert any(e["message"].startswith("fast path: attention ") for e in events_of(run, "log"))
    # the demo (dropout 0, all seven projections, a Llama) trains through our fused LoRA layers, and says so
    assert start["fused_lora"] is True
    assert any(e["message"].startswith("fused LoRA layers: ") for e in events_of(run, "log"))
    recorded = open_store(trained_home).get("quick@1").extra["fast_path"]
    assert recorded["fused_lora"] and recorded["fused_lora_projections"] == 4 * 7  # every projection of 4 layers
    assert recorded["fused_lora_attention_layers"] == recorded["fused_lora_mlp_layers"] == 4
    steps = events_of(run, "step")
    seen = [e["tokens_seen"] for e in steps]
    assert seen == sorted(seen) and seen[0] > 0 and all(e["tokens_per_s"] > 0 for e in steps)
    assert seen[-1] == steps[-1]["num_tokens"]  # TRL's own count of the same real tokens
    done = events_of(run, "done")[0]["summary"]
    assert done["tokens_trained"] == seen[-1] and done["tokens_per_s_avg"] > 0
    assert_flops_per_token_within_the_rows(tiny_config(trained_home), steps, done)
    assert all(e["rss_peak_gb"] > 0.1 for e in steps) and done["rss_peak_gb"] > 0.1
    assert done["rss_peak_since"] == "training began"
    (reset,) = [e for e in events_of(run, "log") if e["message"].startswith("memory: loading peaked at")]
    assert reset["message"].endswith("the peak RSS in step events counts from when training began")
    if torch.cuda.is_available():
        assert all(e["gpu_mem_reserved_peak_gb"] >= e["gpu_mem_peak_gb"] > 0 for e in steps)
        (check,) = events_of(run, "memory_check")
        assert check["step"] == MEMORY_CHECK_STEP and check["estimate_gb"] == start["memory_estimate_gb"]
        assert done["gpu_mem_reserved_peak_gb"] > 0
    else:
        assert start["memory_measured"].startswith("not measured: CPU run")
        assert not events_of(run, "memory_check") and "gpu_mem_peak_gb" not in steps[-1]
        assert "mfu_pct" not in steps[-1] and "mfu_pct_avg" not in done



def assert_flops_per_token_within_the_rows(config: Any, steps: list[dict[str, Any]], done: dict[str, Any]) -> None:
    """Each step's model FLOPs per token, less the linear layers' share (worked out by hand from the config), leaves
    attention for a mean of 1 to (max_seq_len + 1) / 2 keys a token: packed rows are counted one by one, never as
    one long row (eight demo rows packed would average far more)."""
    h, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    kv, layers, mlp = h // heads * kv_heads, config.num_hidden_layers, config.intermediate_size
    frozen = layers * (2 * h * h + 2 * h * kv + 3 * h * mlp) + config.vocab_size * h
    trained = layers * 8 * ((h + h) * 2 + (h + kv) * 2 + (h + mlp) * 3)  # the demo's LoRA: r=8 on 7 projections
    linear = 4 * frozen + 6 * trained
    longest_mean = (quick_profile().train.max_seq_len + 1) / 2
    figures = [e["flops_per_token"] for e in steps] + [done["flops_per_token_avg"]]
    means = [(flops - linear) / (12 * layers * h) for flops in figures]
    assert all(1 <= mean <= longest_mean for mean in means), means
