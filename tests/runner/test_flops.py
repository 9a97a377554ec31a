"""The FLOPs behind MFU and HFU, checked against arithmetic done by hand from the architecture: what a token of an
8B QLoRA run costs (the docs' worked example), the keys each row attends, and the weights a trained model has."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlora_tui.core.device import process_memory, reset_memory_peaks
from qlora_tui.core.gpu_peaks import (
    TrainedShape,
    TrainedWork,
    causal_keys,
    hardware_flops,
    model_flops,
    recompute_flops,
    utilisation_pct,
)
from qlora_tui.runner.measure import TokenCounter, trained_shape

HIDDEN, LAYERS, HEADS, KV_HEADS, MLP, VOCAB, RANK = 4096, 32, 32, 8, 14336, 128256, 16


def llama_8b_by_hand() -> tuple[int, int, int]:
    """(frozen, trained, head) weights of Llama-3.1-8B with LoRA r=16 on every linear layer of its blocks."""
    kv = HIDDEN // HEADS * KV_HEADS
    projections = [(HIDDEN, HIDDEN), (HIDDEN, kv), (HIDDEN, kv), (HIDDEN, HIDDEN),  # q, k, v, o: (in, out)
                   (HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN)]  # gate, up, down
    frozen = LAYERS * sum(i * o for i, o in projections) + VOCAB * HIDDEN
    trained = LAYERS * sum(RANK * (i + o) for i, o in projections)
    return frozen, trained, VOCAB * HIDDEN


def test_an_8b_qlora_token_costs_what_the_docs_work_out() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=RANK, target_modules="all-linear",
                                                                    task_type="CAUSAL_LM"))
    frozen, trained, head = llama_8b_by_hand()
    shape = trained_shape(model)
    assert shape == TrainedShape(frozen, trained, head, LAYERS, HEADS * (HIDDEN // HEADS))
    assert (frozen, trained) == (7_504_658_432, 41_943_040)
    row = TrainedWork(2048, causal_keys(2048))  # one full row of 2,048 tokens: 1,024.5 keys a token on average
    per_token = model_flops(shape, row) / 2048
    linear, attention = 4 * frozen + 6 * trained, 12 * LAYERS * HIDDEN * 1024.5
    assert per_token == pytest.approx(linear + attention) == pytest.approx(31.88e9, rel=1e-3)
    assert recompute_flops(shape, row) / 2048 == pytest.approx(2 * (frozen - head + trained) + attention / 3)
    assert hardware_flops(shape, row, recomputes=False) == model_flops(shape, row)
    # the old count, 6 x every matmul weight and no attention, overstated this run's MFU 1.42x
    assert 6 * (frozen + trained) / per_token == pytest.approx(1.42, abs=0.005)
    # 30% MFU on a 989 TFLOPS H100 SXM is about 9,300 real tokens/s
    assert utilisation_pct(per_token * 9306, 1.0, "NVIDIA H100 80GB HBM3") == pytest.approx(30.0, abs=0.05)


def test_a_small_figure_is_kept_to_three_significant_figures_not_rounded_to_zero() -> None:
    assert utilisation_pct(1.234567e8, 1.0, "NVIDIA H200") == pytest.approx(1.25e-5, rel=1e-2)
    assert utilisation_pct(1e8, 1.0, "cpu") is None and utilisation_pct(0.0, 1.0, "NVIDIA H200") is None


def test_the_counter_counts_the_keys_each_real_token_attends_in_its_own_row(model_home: Path) -> None:
    from transformers import AutoModelForCausalLM

    from qlora_tui.core.builtin import builtin_model_dir

    model = AutoModelForCausalLM.from_pretrained(builtin_model_dir(model_home, "builtin:tiny-llama"),
                                                 dtype=torch.float32)
    model.train()
    counter = TokenCounter()
    counter.attach(model)
    ids = torch.arange(5, 23).view(2, 9)
    right = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])  # rows of 9 and 5 real tokens
    model(input_ids=ids, attention_mask=right, use_cache=False)
    assert counter.take_work() == TrainedWork(14, 45 + 15)
    left = right.flip(-1)  # the same rows padded on the left
    model(input_ids=ids, attention_mask=left, use_cache=False)
    assert counter.take_work() == TrainedWork(14, 45 + 15)
    positions = (left.cumsum(-1) - 1).clamp(min=0)  # what a collator gives a left-padded batch
    model(input_ids=ids, attention_mask=left, position_ids=positions, use_cache=False)
    assert counter.take_work() == TrainedWork(14, 45 + 15)
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1]])  # rows of 3, 4 and 2 in one, no padding
    model(ids[:1], position_ids=packed, use_cache=False)
    assert counter.take_work() == TrainedWork(9, 6 + 10 + 3)  # not the 45 of one row of 9
    model(ids[:1, :4], use_cache=False)  # no mask, no positions: one causal row
    assert counter.take_work() == TrainedWork(4, 10)
    assert counter.total_work == TrainedWork(55, 60 + 60 + 60 + 19 + 10)


def test_trained_shape_counts_4bit_weights_unpacked_and_only_the_active_adapter(model_home: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qlora_tui.core.builtin import builtin_model_dir
    from qlora_tui.core.quant import bnb_config

    folder = builtin_model_dir(model_home, "builtin:tiny-llama")
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = full.config
    linear = sum(m.weight.numel() for m in full.modules() if isinstance(m, torch.nn.Linear))
    quantized = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=bnb_config(4))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(quantized, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    head_dim = config.hidden_size // config.num_attention_heads
    kv, h, mlp = config.num_key_value_heads * head_dim, config.hidden_size, config.intermediate_size
    lora = config.num_hidden_layers * 8 * ((h + h) * 2 + (h + kv) * 2 + (h + mlp) * 3)
    expected = TrainedShape(linear, lora, config.vocab_size * h, config.num_hidden_layers,
                            config.num_attention_heads * head_dim)
    assert trained_shape(model) == expected
    model.add_adapter("ref", LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))  # a frozen reference
    assert trained_shape(model) == expected


def test_peak_rss_starts_over_once_loading_is_done() -> None:
    hold = bytearray(400 * 1024 ** 2)  # a loading peak of 400 MiB more than now
    hold[::4096] = b"x" * len(hold[::4096])  # touch every page so it is resident
    peak_while_loading = process_memory()["rss_peak_gb"]
    del hold
    before = reset_memory_peaks()
    # the kernel syncs its per-thread RSS counters lazily, so the two readings may differ by a few pages
    assert before["rss_load_peak_gb"] == pytest.approx(peak_while_loading, abs=0.01)
    assert before["rss_peak_since"] == "training began"
    assert process_memory()["rss_peak_gb"] < peak_while_loading - 0.3
