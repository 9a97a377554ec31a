"""A guard around the fast kernels patched into a model: a kernel that fails at run time falls back to the plain path.

Kernels come in by patching: Liger rebinds module forwards and modeling functions when the trainer is built, and our
own layers offer a `plain_forward` beside their fused `forward`. A kernel can still fail where it first runs (a
Triton kernel that does not compile for this GPU at step 1), and a missing or broken speed package must never end a
run. So each patched kernel is wrapped: when it raises, the plain code is put back, the step is run again on the
plain path from the state it began in, and a warning goes into the events once the plain step has succeeded.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from qlora_tui.runner.errors import RunError

# Packages whose patches are fast kernels: Liger's, and ours (the fused layers and the test hook's faulty kernel).
# Anything else a library patches while the trainer is built is left alone.
KERNEL_PACKAGES = ("liger_kernel", "qlora_tui.runner.fast")
TRAINER_COUNTERS = ("_metrics", "_total_train_tokens")  # what TRL's compute_loss adds to for each batch
MISSING = object()


class KernelFailed(RunError):
    """A fast kernel raised where it ran; the step it broke is run again on the plain path when that is safe."""

    def __init__(self, kernel: str, error: BaseException, in_backward: bool) -> None:
        super().__init__(f"the fast kernel {kernel} failed: {type(error).__name__}: {error}",
                         hint="set train.liger = false (or drop the package that patched it in) to train without it")
        self.kernel = kernel
        self.error = error
        self.in_backward = in_backward  # it ran as part of a backward pass (a checkpointed layer's recompute)


class Rewindable(Protocol):
    """A per-step counter (the token counter) that a rerun step must not count twice."""

    def mark(self) -> Any: ...

    def rewind(self, mark: Any) -> None: ...


@dataclass
class Patch:
    """One patched attribute: `owner.attribute` holds `kernel` now and held `original` (MISSING: nothing) before."""

    owner: Any
    attribute: str
    original: Any
    kernel: Any
    name: str
    on_instance: bool  # a module instance's own attribute (in its __dict__), not a class or a Python module's

    def install(self, value: Any) -> None:
        if self.on_instance:
            if value is MISSING:
                self.owner.__dict__.pop(self.attribute, None)
            else:
                self.owner.__dict__[self.attribute] = value
        elif value is MISSING:
            delattr(self.owner, self.attribute)
        else:
            setattr(self.owner, self.attribute, value)

    def plain(self) -> Any:
        """What a call reaches on the plain path: the original, or the class's own method for an instance."""
        if self.original is MISSING and self.on_instance:
            return getattr(type(self.owner), self.attribute).__get__(self.owner)
        return self.original


def kernel_name(value: Any) -> str:
    func = getattr(value, "__func__", getattr(value, "func", value))
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"


def is_kernel(value: Any) -> bool:
    return kernel_name(value).startswith(KERNEL_PACKAGES)


class KernelWatch:
    """The model's forwards and modeling functions before the trainer is built, to find what got patched in."""

    def __init__(self, model: Any) -> None:
        self.instances = {id(m): (m, m.__dict__.get("forward", MISSING)) for m in model.modules()}
        self.classes = {cls: cls.__dict__.get("forward", MISSING) for cls in {type(m) for m in model.modules()}}
        self.functions = {name: _functions(sys.modules.get(name)) for name in {c.__module__ for c in self.classes}}

    def patches(self, model: Any) -> list[Patch]:
        """Kernels patched in since the watch began, and our own layers' fused forwards (they carry plain_forward)."""
        found = []
        for module in model.modules():
            _, before = self.instances.get(id(module), (module, MISSING))
            now = module.__dict__.get("forward", MISSING)
            if now is not before and now is not MISSING and is_kernel(now):
                found.append(Patch(module, "forward", before, now, kernel_name(now), on_instance=True))
            elif now is MISSING and callable(getattr(module, "plain_forward", None)):
                found.append(Patch(module, "forward", module.plain_forward, module.forward,
                                   kernel_name(type(module).forward), on_instance=True))
        for cls, before in self.classes.items():
            now = cls.__dict__.get("forward", MISSING)
            if now is not before and is_kernel(now):
                found.append(Patch(cls, "forward", before, now, kernel_name(now), on_instance=False))
        for name, before_functions in self.functions.items():
            owner = sys.modules.get(name)
            for attribute, now in _functions(owner).items():
                if now is not before_functions.get(attribute, MISSING) and is_kernel(now):
                    found.append(Patch(owner, attribute, before_functions.get(attribute, MISSING), now,
                                       kernel_name(now), on_instance=False))
        return found

    def guard(self, trainer: Any, warn: Callable[[str], None], rewind: list[Rewindable]) -> KernelGuard:
        """Wrap every kernel patched into the trainer's model, and its training and evaluation steps."""
        guard = KernelGuard(self.patches(trainer.model), warn, rewind)
        guard.install(trainer)
        return guard


def _functions(module: Any) -> dict[str, Any]:
    if module is None:
        return {}
    return {k: v for k, v in vars(module).items() if callable(v) and not isinstance(v, type)}


@dataclass
class StepStart:
    """What a step may change before it fails, kept to run it again from the same start."""

    marks: list[Any]
    counters: dict[str, Any]
    rng: tuple[Any, Any]
    grads: dict[Any, Any] | None  # only until one step has passed: LoRA gradients, or None where there were none


@dataclass
class KernelGuard:
    """One run's wrapped kernels and the trainer steps they guard; `warnings` is what the version records."""

    patches: list[Patch]
    warn: Callable[[str], None]
    rewind: list[Rewindable]
    fallen: dict[str, str] = field(default_factory=dict)  # kernel -> why it fell back
    warnings: list[str] = field(default_factory=list)
    proven: bool = False  # a whole training step has passed with the kernels in
    _unreported: list[str] = field(default_factory=list)

    @property
    def active(self) -> list[str]:
        return sorted({p.name for p in self.patches} - set(self.fallen))

    def install(self, trainer: Any) -> None:
        for patch in self.patches:
            patch.install(self._wrapped(patch))
        if self.patches:
            trainer.training_step = self._guarded_step(trainer, trainer.training_step)
            trainer.prediction_step = self._guarded_prediction(trainer.prediction_step)

    def _wrapped(self, patch: Patch) -> Callable[..., Any]:
        def kernel(*args: Any, **kwargs: Any) -> Any:
            if patch.name in self.fallen:  # something kept a reference to the kernel: send it the plain way
                return patch.plain()(*args, **kwargs)
            try:
                return patch.kernel(*args, **kwargs)
            except Exception as err:
                if isinstance(err, KernelFailed) or _out_of_memory(err):
                    raise
                self.fall_back([patch.name], f"{type(err).__name__}: {err}")
                raise KernelFailed(patch.name, err, _in_backward()) from err

        return kernel

    def fall_back(self, names: list[str], why: str) -> None:
        """Put the plain code back for every patch of these kernels."""
        for patch in self.patches:
            if patch.name in names and patch.name not in self.fallen:
                patch.install(patch.original)
        for name in names:
            self.fallen.setdefault(name, why)
            self._unreported.append(name)

    def _guarded_step(self, trainer: Any, step: Callable[..., Any]) -> Callable[..., Any]:
        def training_step(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            while True:
                start = self._step_start(trainer)
                try:
                    loss = step(model, copy.copy(inputs), *args, **kwargs)
                except Exception as err:
                    if not self._recover(err, start, trainer):
                        raise
                    continue
                self.proven = True
                self._report(trainer.state.global_step + 1)
                return loss

        return training_step

    def _guarded_prediction(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def prediction_step(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            while True:
                try:
                    result = step(model, copy.copy(inputs), *args, **kwargs)
                except Exception as err:
                    if _failed_kernel(err) is None:  # no gradients here: a kernel's failure is always safe to redo
                        raise
                    continue
                self._report(None)
                return result

        return prediction_step

    def _step_start(self, trainer: Any) -> StepStart:
        import torch

        counters = {k: copy.deepcopy(getattr(trainer, k)) for k in TRAINER_COUNTERS if hasattr(trainer, k)}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        grads = None
        if not self.proven:
            grads = {p: None if p.grad is None else p.grad.clone()
                     for p in trainer.model.parameters() if p.requires_grad}
        return StepStart([r.mark() for r in self.rewind], counters, (torch.get_rng_state(), cuda), grads)

    def _recover(self, err: Exception, start: StepStart, trainer: Any) -> bool:
        """Whether the step can run again on the plain path from where it began (after falling back)."""
        if _out_of_memory(err):
            return False
        failed = _failed_kernel(err)
        if failed is not None:
            # a failure in the backward pass (a recomputed forward) may have added to some gradients already
            if failed.in_backward and start.grads is None:
                return False
        elif start.grads is None or not self.active:
            return False
        else:  # a backward kernel failed in the first step: none can be named, so every one falls back
            self.fall_back(self.active, f"the first step failed with them in ({type(err).__name__}: {err})")
        self._restore(start, trainer)
        return True

    def _restore(self, start: StepStart, trainer: Any) -> None:
        import torch

        for counter, mark in zip(self.rewind, start.marks):
            counter.rewind(mark)
        for key, value in start.counters.items():
            setattr(trainer, key, value)
        torch.set_rng_state(start.rng[0])
        if start.rng[1] is not None:
            torch.cuda.set_rng_state_all(start.rng[1])
        for param, grad in (start.grads or {}).items():
            param.grad = grad

    def _report(self, step: int | None) -> None:
        """Warn once per kernel, after the step it broke has passed on the plain path."""
        for name in dict.fromkeys(self._unreported):
            count = sum(1 for p in self.patches if p.name == name)
            where = f"at step {step}" if step is not None else "in evaluation"
            message = (f"the fast kernel {name} failed {where} ({self.fallen[name]}); its {count} "
                       f"patch{'es' if count > 1 else ''} fell back to the plain path and the run goes on")
            self.warnings.append(message)
            self.warn(message)
        self._unreported.clear()


def _failed_kernel(err: BaseException) -> KernelFailed | None:
    """The KernelFailed behind an error, which autograd or a library may have raised again as another."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, KernelFailed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread (unknown counts as yes: the safe side)."""
    import torch

    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is None or task() != -1


def _out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
