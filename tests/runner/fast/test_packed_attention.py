"""Packed attention: a padding-free batch gives each row what it gets alone, with no T x T mask anywhere.

The oracles are transformers' own SDPA path: each row run alone, and the same
rows as a right-padded batch. Models are small random fp32 Llamas (one with
GQA), a Mistral and a Qwen2 whose sliding window is shorter than most rows.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qlora_tui.runner.fast.packed_attention import (
    PACKED_ATTENTION,
    packed_attention_note,
    register_packed_attention,
)

LENGTHS = [13, 5, 21, 9, 5]  # two of one length share an SDPA call; a window of 6 cuts into four of them
VOCAB = 101


def tiny_model(kind: str) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    shape = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 256}
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=4))
    elif kind == "llama-gqa":
        model = LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=2))
    elif kind == "mistral-window":
        model = MistralForCausalLM(MistralConfig(**shape, num_key_value_heads=2, sliding_window=6))
    else:  # qwen2: the first layer full attention, the second a sliding window
        model = Qwen2ForCausalLM(Qwen2Config(**shape, num_key_value_heads=2, use_sliding_window=True,
                                             sliding_window=6, max_window_layers=1))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                      init_lora_weights=False)  # B != 0, so the adapters change the forward and both get gradients
    return get_peft_model(model, lora).float()


MODELS = ["llama", "llama-gqa", "mistral-window", "qwen2-window"]


def rows(lengths: list[int] = LENGTHS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def packed_inputs(parts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows laid end to end with position ids restarting at 0, as TRL's padding-free collator lays them."""
    return {"input_ids": torch.cat(parts)[None],
            "position_ids": torch.cat([torch.arange(len(p)) for p in parts])[None]}


def row_loss_sum(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of one row (logits and ids of that row only)."""
    return torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")


def split_rows(flat: torch.Tensor) -> list[torch.Tensor]:
    return list(flat.split(LENGTHS))


def lora_grads(model: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_packed_attention()


@pytest.mark.parametrize("kind", MODELS)
def test_packed_rows_match_each_row_alone_and_the_padded_batch(kind: str) -> None:
    model = tiny_model(kind)
    parts = rows()
    # the oracle: SDPA, each row alone (logits) and the right-padded batch (loss and LoRA gradients)
    model.set_attn_implementation("sdpa")
    alone = [model(input_ids=p[None], use_cache=False).logits[0].detach() for p in parts]
    width = max(LENGTHS)
    padded_ids = torch.zeros(len(parts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(parts), width, dtype=torch.long)
    for i, p in enumerate(parts):
        padded_ids[i, :len(p)], attention_mask[i, :len(p)] = p, 1
    padded_logits = model(input_ids=padded_ids, attention_mask=attention_mask, use_cache=False).logits
    padded_loss = sum(row_loss_sum(padded_logits[i, :len(p)], p) for i, p in enumerate(parts))
    padded_loss.backward()
    padded_grads = lora_grads(model)

    model.set_attn_implementation(PACKED_ATTENTION)
    packed_logits = model(**packed_inputs(parts), use_cache=False).logits[0]
    packed_loss = sum(row_loss_sum(logits, p) for logits, p in zip(split_rows(packed_logits), parts))
    packed_loss.backward()
    packed_grads = lora_grads(model)

    for got, want in zip(split_rows(packed_logits.detach()), alone):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-6, atol=1e-5)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) == 2 * 5 * 2  # A and B, 5 modules, 2 layers
    for name, grad in packed_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, padded_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_without_packed_attention_sdpa_would_mix_rows_that_share_no_boundaries() -> None:
    """The control for the test above: the same tokens without position ids attend across rows, so it can fail."""
    model = tiny_model("llama-gqa")
    model.set_attn_implementation(PACKED_ATTENTION)
    parts = rows()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=p[None], use_cache=False).logits[0] for p in parts])
        joined = model(input_ids=torch.cat(parts)[None], use_cache=False).logits[0]
    assert (joined - alone)[LENGTHS[0]:].abs().max() > 1e-2


@pytest.mark.parametrize("collator", ["trl", "trl-pad-to-8", "transformers-flattening", "position-ids-only"])
def test_collators_boundaries_reach_the_attention(collator: str) -> None:
    """TRL's padding-free collator and transformers' flattening collator pass cu_seq_lens; both are read right."""
    from transformers import DataCollatorWithFlattening
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = tiny_model("mistral-window")
    model.set_attn_implementation(PACKED_ATTENTION)
    parts = rows()
    examples = [{"input_ids": p.tolist()} for p in parts]
    if collator.startswith("trl"):
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True,
                                                pad_to_multiple_of=8 if collator.endswith("8") else None)(examples)
        assert "cu_seq_lens_q" in batch and "attention_mask" not in batch
    elif collator == "transformers-flattening":
        batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_tensors="pt")(examples)
        assert "cu_seq_lens_q" in batch
    else:
        batch = packed_inputs(parts)
    batch.pop("labels", None)
    total = sum(LENGTHS)
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0]
        model.set_attn_implementation("sdpa")
        alone = torch.cat([model(input_ids=p[None], use_cache=False).logits[0] for p in parts])
    assert logits.shape[0] >= total  # pad_to_multiple_of adds one-token documents after the rows
    torch.testing.assert_close(logits[:total], alone, rtol=0, atol=2e-5)


class SquareTensorProbe(TorchDispatchMode):
    """Records every tensor an op makes whose last two dimensions are both at least `size` (a T x T mask/score)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.square: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.ndim >= 2 and min(tensor.shape[-2:]) >= self.size:
                self.square.append((str(func), tuple(tensor.shape)))
        return out


@pytest.mark.parametrize("kind", ["llama-gqa", "mistral-window"])
def test_no_t_by_t_tensor_is_built_in_forward_or_backward(kind: str) -> None:
    model = tiny_model(kind)
    lengths = [3 * n for n in LENGTHS]
    inputs = packed_inputs(rows(lengths))
    total = sum(lengths)
    assert total > VOCAB > 96 > 64  # no weight, activation or logits matrix is that wide in its last two dimensions
    seen: dict[str, SquareTensorProbe] = {}
    masks: dict[str, list[Any]] = {}
    for implementation in ("sdpa", PACKED_ATTENTION):
        model.set_attn_implementation(implementation)
        received: list[Any] = []
        hook = model.base_model.model.model.layers[0].register_forward_pre_hook(
            lambda module, args, kwargs, into=received: into.append(kwargs.get("attention_mask")), with_kwargs=True)
        with SquareTensorProbe(total) as probe:
            model(**inputs, use_cache=False).logits.sum().backward()
        hook.remove()
        seen[implementation], masks[implementation] = probe, received
    # the control: SDPA builds the block-diagonal (1, 1, T, T) mask and hands it to every layer
    assert masks["sdpa"][0] is not None and tuple(masks["sdpa"][0].shape) == (1, 1, total, total)
    assert any(shape[-2:] == (total, total) for _, shape in seen["sdpa"].square)
    assert masks[PACKED_ATTENTION] == [None]
    assert seen[PACKED_ATTENTION].square == []


@pytest.mark.parametrize("kind", ["llama-gqa", "mistral-window"])
@pytest.mark.parametrize("side", ["right", "left", "none"])
def test_padded_batches_are_unchanged(kind: str, side: str) -> None:
    """Padded either side, or rows of one length longer than the window with no padding at all: SDPA's result."""
    model = tiny_model(kind)
    parts = rows([21, 21, 21]) if side == "none" else rows()
    width = max(len(p) for p in parts)
    ids = torch.zeros(len(parts), width, dtype=torch.long)
    mask = torch.zeros(len(parts), width, dtype=torch.long)
    for i, p in enumerate(parts):
        span = slice(0, len(p)) if side == "right" else slice(width - len(p), width)
        ids[i, span], mask[i, span] = p, 1
    results = {}
    for implementation in ("sdpa", PACKED_ATTENTION):
        model.set_attn_implementation(implementation)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        (logits * mask[..., None]).sum().backward()
        results[implementation] = (logits.detach(), lora_grads(model))
    (sdpa_logits, sdpa_grads), (ours_logits, our_grads) = results["sdpa"], results[PACKED_ATTENTION]
    torch.testing.assert_close(ours_logits, sdpa_logits, rtol=0, atol=1e-6)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, sdpa_grads[name], rtol=0, atol=1e-6, msg=name)


def test_generation_with_a_cache_matches_sdpa() -> None:
    """Choosing it for a run is safe beyond training: a left-padded batched generate goes the SDPA way."""
    model = tiny_model("mistral-window").eval()
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])
    mask = (torch.arange(7) >= torch.tensor([[3], [0]])).long()
    outputs = {}
    for implementation in ("sdpa", PACKED_ATTENTION):
        model.set_attn_implementation(implementation)
        outputs[implementation] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                                                 do_sample=False, pad_token_id=0)
    assert torch.equal(outputs["sdpa"], outputs[PACKED_ATTENTION])


def test_boundaries_that_do_not_fit_the_batch_are_refused() -> None:
    model = tiny_model("llama")
    model.set_attn_implementation(PACKED_ATTENTION)
    inputs = packed_inputs(rows())
    bad = torch.tensor([0, 13, 18, 30], dtype=torch.int32)  # ends at 30; the batch holds 53 tokens
    with pytest.raises(ValueError, match=r"cu_seq_lens_q must rise from 0 to the batch's 1 x 53 = 53 tokens"):
        model(**inputs, cu_seq_lens_q=bad, cu_seq_lens_k=bad, use_cache=False)


def test_registering_is_idempotent_and_from_pretrained_takes_the_name(tmp_path: Any) -> None:
    from transformers import AutoModelForCausalLM

    assert register_packed_attention() == register_packed_attention() == PACKED_ATTENTION
    tiny_model("llama").get_base_model().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=PACKED_ATTENTION)
    assert loaded.config._attn_implementation == PACKED_ATTENTION


def test_the_note_names_the_kernel_this_machine_gets() -> None:
    note = packed_attention_note()
    if not torch.cuda.is_available():
        assert "SDPA over each packed document (no CUDA GPU" in note
    assert "no T x T mask" in note and "padded rows: SDPA" in note


@pytest.mark.cuda
def test_flash_varlen_matches_each_row_alone_on_the_gpu() -> None:
    from qlora_tui.runner.fast.packed_attention import flash_attn_ready

    if not flash_attn_ready():
        pytest.skip("flash-attn is not installed; packed rows use SDPA per document (tested on the CPU)")
    model = tiny_model("mistral-window").to("cuda", torch.bfloat16)
    model.set_attn_implementation(PACKED_ATTENTION)
    parts = [p.cuda() for p in rows()]
    inputs = {k: v.cuda() for k, v in packed_inputs(parts).items()}
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits[0].float()
        model.set_attn_implementation("sdpa")
        alone = torch.cat([model(input_ids=p[None], use_cache=False).logits[0].float() for p in parts])
    torch.testing.assert_close(packed, alone, rtol=0, atol=0.05)
