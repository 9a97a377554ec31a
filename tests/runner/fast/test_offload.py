"""Offloaded checkpointing: a 4-bit NF4 base with LoRA gets the gradients it gets with plain checkpointing or none.

The oracles are transformers' own non-reentrant checkpointing and no
checkpointing at all, on the same locally saved random Llama loaded through
bitsandbytes; the mechanism is checked through the hook's own counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qlora_tui.runner.errors import RunError
from qlora_tui.runner.fast.offload import (
    OffloadedCheckpoint,
    active_offload,
    enable_offloaded_checkpointing,
    offload_note,
)

LAYERS = 3


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("random-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    return path


def qlora_model(path: Path, checkpointing: str, device: str = "cpu") -> Any:
    """The 4-bit base + LoRA as the runner builds it; `checkpointing` is none, plain, offload-base or offload-peft."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float32,
                                                 device_map={"": device})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing == "plain",
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    if checkpointing == "offload-base":
        enable_offloaded_checkpointing(model)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False))
    if checkpointing == "offload-peft":
        enable_offloaded_checkpointing(peft_model)
    return peft_model.train()


def loss_and_grads(model: Any, device: str = "cpu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (2, 19), generator=generator).to(device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("where", ["offload-base", "offload-peft"])
def test_offloaded_gradients_equal_plain_checkpointing_and_none(saved_llama: Path, where: str) -> None:
    results = {mode: loss_and_grads(qlora_model(saved_llama, mode)) for mode in ("none", "plain", where)}
    loss, grads = results["none"]
    assert len(grads) == LAYERS * 7 * 2  # every LoRA A and B of the seven linear layers
    for mode in ("plain", where):
        other_loss, other_grads = results[mode]
        torch.testing.assert_close(other_loss, loss, rtol=0, atol=1e-6)
        assert other_grads.keys() == grads.keys()
        for name, grad in grads.items():
            assert grad.abs().max() > 0, name
            torch.testing.assert_close(other_grads[name], grad, rtol=0, atol=1e-6, msg=f"{mode}: {name}")


def test_each_layer_input_goes_through_the_offload_hook_and_comes_back(saved_llama: Path) -> None:
    model = qlora_model(saved_llama, "offload-peft")
    offload = active_offload(model)
    assert isinstance(offload, OffloadedCheckpoint)
    decoder_layers = model.get_base_model().model.layers
    assert all(layer.gradient_checkpointing and layer._gradient_checkpointing_func is offload
               for layer in decoder_layers)
    with torch.no_grad():  # no autograd, nothing to save or offload
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert offload.saved == 0
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    loss = model(input_ids=ids, labels=ids).loss
    # one saved tensor per layer: its hidden-state input, and nothing from inside the layer (that is recomputed)
    assert (offload.saved, offload.restored) == (LAYERS, 0)
    loss.backward()
    assert (offload.saved, offload.restored) == (LAYERS, LAYERS)
    assert offload.offloaded_bytes == 0  # on the CPU the inputs already live in host memory


def test_enabling_twice_keeps_one_input_grad_hook(saved_llama: Path) -> None:
    model = qlora_model(saved_llama, "offload-peft")
    enable_offloaded_checkpointing(model)
    assert len(model.get_base_model()._require_grads_hooks) == 1
    _, grads = loss_and_grads(model)
    assert all(g.abs().max() > 0 for g in grads.values())


def test_a_model_that_is_not_a_transformers_model_is_refused() -> None:
    with pytest.raises(RunError, match=r"train.gradient_checkpointing: offloading needs a transformers model, "
                                       r"got Linear"):
        enable_offloaded_checkpointing(torch.nn.Linear(2, 2))


def test_the_note_says_where_inputs_wait() -> None:
    assert ("pinned host memory" if torch.cuda.is_available() else "already live in host memory") in offload_note()


@pytest.mark.cuda
def test_on_the_gpu_inputs_wait_in_pinned_host_memory_and_free_gpu_memory(saved_llama: Path) -> None:
    peaks = {}
    for mode in ("plain", "offload-peft"):
        model = qlora_model(saved_llama, mode, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        ids = torch.randint(0, 97, (8, 1024), device="cuda")
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() - start
        if mode == "offload-peft":
            offload = active_offload(model)
            assert offload is not None and offload.saved == offload.restored == LAYERS
            assert offload.offloaded_bytes == LAYERS * 8 * 1024 * 64 * 4
        del model
    assert peaks["offload-peft"] < peaks["plain"]
