"""Test hook: fast kernels that fail where they first run, as a Triton kernel that does not compile would.

`QLORA_TUI_FAULT=kernel_fails_in=forward` patches every decoder layer's MLP, as Liger patches in its SwiGLU, with
a forward that raises on its first call; `kernel_fails_in=backward` patches the first layer's MLP with one whose
backward raises (the backward pass reaches it after every later layer, so those LoRA weights already hold
gradients when it fails). Each is patched in where Liger's kernels are, after the trainer is built, so the run's
kernel guard finds it the same way. (RMSNorm would be the other choice, but transformers' hub-kernel layer drops
instance forwards of the layers it manages whenever the model switches between train and eval.)
"""

from __future__ import annotations

import os
from typing import Any

import torch

FAULT_ENV = "QLORA_TUI_FAULT"  # test hook, shared with runner/callbacks.py
FAULT_PREFIX = "kernel_fails_in="


def install_faulty_kernel(model: Any) -> str | None:
    """Patch the kernel the test hook asks for into `model`; returns where it fails, None without the hook."""
    value = os.environ.get(FAULT_ENV, "")
    if not value.startswith(FAULT_PREFIX):
        return None
    where = value[len(FAULT_PREFIX):]
    mlps = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    mlps = [layer.mlp for layer in mlps]
    if where == "forward":
        for mlp in mlps:
            mlp.__dict__["forward"] = mlp_that_does_not_compile.__get__(mlp)
    elif where == "backward":
        mlps[0].__dict__["forward"] = mlp_whose_backward_does_not_compile.__get__(mlps[0])
    else:
        raise ValueError(f"{FAULT_ENV}: {value!r}; kernel_fails_in= takes forward or backward")
    return where


def mlp_that_does_not_compile(self: Any, x: Any) -> Any:
    raise RuntimeError("test kernel (QLORA_TUI_FAULT=kernel_fails_in=forward) failed to compile")


def mlp_whose_backward_does_not_compile(self: Any, x: Any) -> Any:
    """The plain SwiGLU MLP, its output passed through a step whose backward raises."""
    return FailsInBackward.apply(type(self).forward(self, x))


class FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any) -> Any:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        raise RuntimeError("test kernel (QLORA_TUI_FAULT=kernel_fails_in=backward) failed to compile")
