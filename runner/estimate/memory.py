"""The memory plan of a profile: what a run will hold on the GPU, component by component, before it is launched.

Shapes come from the weights' safetensors headers when they are at hand, else
from the config (never the tensor data), so the plan is instant and works
offline; the app redraws it as the user edits the New-run form.
This module must stay importable without torch, transformers, peft, trl or
bitsandbytes. docs/memory-estimator.md says where every number comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.device import detect_gpu
from qlora_tui.core.errors import ProfileError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.estimate.experts import check_lora_on_stacks, expert_treatment, missing_targets_error
from qlora_tui.runner.estimate.known_models import find_model_config
from qlora_tui.runner.estimate.model_shape import Linear, ModelShape, Stacked
from qlora_tui.runner.estimate.per_gpu import per_gpu
from qlora_tui.runner.estimate.plan import GB, Component, MemoryPlan, compute_bytes
from qlora_tui.runner.estimate.weight_shapes import count_model

CUDA_OVERHEAD_GB = 0.75  # CUDA context, cuBLAS workspace and loaded kernels
HEADROOM_SHARE = 0.10  # kept free for allocator fragmentation and short-lived buffers (dequantized tiles)
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 weights
DOUBLE_QUANT_BLOCK = 256  # double quant: 8-bit absmax with one fp32 constant per 256 of them
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes' 8-bit optimizers keep 32-bit state for smaller tensors
ADAM_32BIT = ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit")
ADAM_8BIT = ("adamw_8bit", "paged_adamw_8bit")
# Rows per batch row: preference methods run the chosen and the rejected completion (KTO its KL pairs).
ROWS_PER_EXAMPLE = {"sft": 1, "dpo": 2, "orpo": 2, "kto": 2, "reward": 2, "rlhf": 1}


# ---------------------------------------------------------------- LoRA


Adapted = Linear | Stacked


def lora_modules(shape: ModelShape, targets: list[str], model_id: str) -> list[Adapted]:
    """What LoRA adapts: named nn.Linear modules, or "all-linear": every block linear (never the output head)
    and, for the MoE families PEFT converts, the experts and routers as target parameters."""
    if targets == ["all-linear"]:
        return [*shape.linears, *(s for s in shape.stacked if s.all_linear)]
    missing = [t for t in targets if t not in shape.module_names()]
    if missing:
        raise missing_targets_error(model_id, missing, shape.module_names(), shape.experts is not None)
    return [linear for linear in shape.linears if linear.name in targets]


@dataclass(frozen=True)
class Trainable:
    """`count` trainable tensors of rows x cols (vectors have one row)."""

    rows: int
    cols: int
    count: int

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.count


def trainable_tensors(shape: ModelShape, modules: list[Adapted], profile: Profile) -> list[Trainable]:
    """Every trainable tensor: LoRA A (r x in) and B (out x r), DoRA magnitudes, and biases lora.bias trains.

    PEFT gives a stack of E experts one A of (r * E) x in and one B of out x (r * E), r doubled on gate_up_proj.
    """
    r, lora = profile.lora.r, profile.lora
    check_lora_on_stacks(modules, profile)
    tensors: list[Trainable] = []
    for m in modules:
        rank = r * m.experts * m.lora_rank_factor if isinstance(m, Stacked) else r
        tensors += [Trainable(rank, m.in_features, m.count), Trainable(m.out_features, rank, m.count)]
        if lora.use_dora:
            tensors.append(Trainable(1, m.out_features, m.count))
    with_bias = shape.linears if lora.bias == "all" else modules if lora.bias == "lora_only" else ()
    tensors += [Trainable(1, m.out_features, m.count) for m in with_bias if isinstance(m, Linear) and m.bias]
    return tensors


def optimizer_state_bytes(optimizer: str, tensors: list[Trainable]) -> float:
    """Bytes of optimizer state the trainable tensors need under `optimizer` (profile.train.optimizer)."""
    total = 0.0
    for t in tensors:
        numel = t.rows * t.cols
        if optimizer in ADAM_32BIT:
            per = 8.0 * numel  # fp32 first and second moments
        elif optimizer in ADAM_8BIT:
            per = 8.0 * numel if numel < BNB_8BIT_MIN_SIZE else 2.0 * numel + 8.0 * math.ceil(numel / 256)
        elif optimizer == "adafactor":
            per = 4.0 * (t.rows + t.cols) if t.rows > 1 else 4.0 * numel  # factored second moment
        else:  # sgd without momentum keeps no state
            per = 0.0
        total += per * t.count
    return total


OPTIMIZER_NOTES = {
    "adamw_torch": "32-bit AdamW: 8 bytes per trainable param",
    "adamw_torch_fused": "32-bit AdamW (fused): 8 bytes per trainable param",
    "paged_adamw_32bit": "paged 32-bit AdamW: 8 bytes per trainable param; paged: spills to CPU memory under pressure",
    "adamw_8bit": "8-bit AdamW: 2 bytes per trainable param",
    "paged_adamw_8bit": "paged 8-bit AdamW: 2 bytes per trainable param; paged: spills to CPU memory under pressure",
    "adafactor": "Adafactor: factored second moment, row + column sums per matrix",
    "sgd": "SGD without momentum: no state",
}


# ---------------------------------------------------------------- the plan


def quantized_weight_bytes(linears: tuple[Linear, ...] | list[Linear], bits: int | str,
                           double_quant: bool) -> tuple[float, float]:
    """(bytes of quantized weights, bytes of their quantization constants) for the blocks' linear layers."""
    data = consts = 0.0
    for m in linears:
        n = m.in_features * m.out_features
        if bits == 4:
            blocks = math.ceil(n / NF4_BLOCK)
            per_consts = (blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCK)) if double_quant else 4 * blocks
            data, consts = data + m.count * math.ceil(n / 2), consts + m.count * per_consts
        else:  # 8-bit LLM.int8: one fp32 scale per output row
            data, consts = data + m.count * n, consts + m.count * 4 * m.out_features
    return data, consts


def estimate_profile(profile: Profile, home: Path, gpu_gb: float | None = None, batch_size: int | None = None,
                     seq_len: int | None = None) -> MemoryPlan:
    """The memory plan of `profile`; `gpu_gb` (else the detected GPU) decides `fits`, None when neither is known.

    `home` is the data home the run would use: the built-in model's weights are read there when built (its
    shape is known without them). Raises ModelError saying why when the model cannot be counted.
    """
    for flag, value in (("--batch-size", batch_size), ("--seq-len", seq_len), ("--gpu-gb", gpu_gb)):
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise ProfileError(f"{flag}: must be a positive number, got {value}")
    config = find_model_config(profile.model.id, profile.model.revision, home=home)
    counted = count_model(profile.model.id, profile.model.revision, config, home)
    shape = counted.shape
    batch = batch_size or profile.train.batch_size
    seq = seq_len or profile.train.max_seq_len
    modules = lora_modules(shape, profile.lora.target_modules, profile.model.id)
    notes = list(counted.notes)
    tensors = trainable_tensors(shape, modules, profile)
    trainable = sum(t.params for t in tensors)
    nbytes, dtype_name = compute_bytes(profile)
    rows = ROWS_PER_EXAMPLE.get(profile.train.method, 1)
    gc = profile.train.gradient_checkpointing

    components = _weight_components(shape, profile, nbytes, dtype_name)
    if profile.train.method == "rlhf":
        # RL scores samples with a reward model: a second copy of the base, quantized the same way.
        base_gb = sum(c.gb for c in components)
        components.append(Component("reward model (second base)", base_gb,
                                    "method.reward_model: the base again with its LoRA and score head, frozen"))
    components += [
        Component("LoRA weights", 4 * trainable / GB, f"{_count(trainable)} trainable params in fp32"),
        Component("gradients", 4 * trainable / GB, "fp32, trainable params only (the base is frozen)"),
        Component("optimizer states", optimizer_state_bytes(profile.train.optimizer, tensors) / GB,
                  OPTIMIZER_NOTES[profile.train.optimizer]),
    ]
    activations, eager_extra = _activation_components(shape, modules, profile, batch * rows, seq, nbytes)
    components += activations
    components.append(Component("CUDA context and kernels", CUDA_OVERHEAD_GB, "fixed"))
    total = sum(c.gb for c in components if c.counted)
    unused = next(c for c in activations if c.name.startswith("activations") and not c.counted)
    used = next(c for c in activations if c.in_use)
    notes += _plan_notes(profile, shape, rows, eager_extra, dtype_name)
    experts = expert_treatment(shape, modules, profile, dtype_name)
    if experts is not None:
        notes.append(experts.sentence())

    detected = None if gpu_gb is not None else detect_gpu()
    card_gb = gpu_gb if gpu_gb is not None else (detected[1] if detected else None)
    headroom = None if card_gb is None else HEADROOM_SHARE * card_gb
    return per_gpu(MemoryPlan(
        profile_name=profile.name, model_id=profile.model.id, config_source=config.source,
        shape_source=counted.source, model_type=shape.model_type, total_params=shape.total_params,
        active_params=shape.active_params,
        quantized_params=shape.linear_weights if profile.quant.bits != "none" else 0,
        trainable_params=trainable, quantization=_quant_label(profile, dtype_name), method=profile.train.method,
        batch_size=batch, seq_len=seq, gradient_checkpointing=gc, components=components, total_gb=total,
        total_gb_other_checkpointing=total - used.gb + unused.gb, gpu_name=detected[0] if detected else None,
        gpu_gb=card_gb, headroom_gb=headroom, fits=None if card_gb is None else total <= card_gb * (1 - HEADROOM_SHARE),
        lora_targets=sorted({m.name for m in modules}), notes=notes,
        experts=experts.as_event() if experts is not None else None,
    ), profile, shape.layers)


def _activation_components(shape: ModelShape, modules: list[Adapted], profile: Profile, rows: int, seq: int,
                           nbytes: int) -> tuple[list[Component], float]:
    """Activation lines with and without checkpointing (only the profile's one counted), logits; eager extra GB."""
    tokens = rows * seq
    one_layer, eager_per_layer = _layer_activation_bytes(shape, modules, profile, tokens, seq, nbytes)
    layer_inputs = shape.layers * tokens * shape.hidden * nbytes
    gc = bool(profile.train.gradient_checkpointing)
    if profile.train.gradient_checkpointing == "offload":
        checkpointed, how = one_layer, (f"one layer recomputed in backward; the layer inputs "
                                        f"({layer_inputs / GB:.2f} GB) wait in pinned host memory (offload)")
    else:
        checkpointed = layer_inputs + one_layer
        how = f"layer inputs ({nbytes}*hidden bytes per token per layer) + one layer recomputed in backward"
    out = [
        Component("activations, checkpointed", checkpointed / GB, how, counted=gc, in_use=gc),
        Component("activations, not checkpointed", shape.layers * one_layer / GB,
                  f"every layer's activations for {tokens:,} tokens (SDPA attention: no seq^2 term)",
                  counted=not gc, in_use=not gc),
    ]
    if profile.train.method == "reward":
        out.append(Component("logits and loss", 0.0, "a scalar score per row; no vocabulary logits"))
    else:
        out.append(Component("logits and loss", tokens * shape.vocab * (nbytes + 8) / GB,
                             f"{rows} x {seq:,} tokens x {shape.vocab:,} vocab: logits + fp32 copy + log-softmax"))
    eager_extra = (eager_per_layer if gc else shape.layers * eager_per_layer) / GB
    return out, eager_extra


def _weight_components(shape: ModelShape, profile: Profile, nbytes: int, dtype_name: str) -> list[Component]:
    bits, unquantized, stacked = profile.quant.bits, shape.unquantized_params, shape.stacked_params
    if bits == "none":
        return [Component("base: all weights", shape.total_params * nbytes / GB,
                          f"{_count(shape.total_params)} params in {dtype_name}, unquantized")]
    data, consts = quantized_weight_bytes(shape.linears, bits, profile.quant.double_quant)
    if bits == 4:
        kind = profile.quant.type.upper()
        how = "double-quantized constants" if profile.quant.double_quant else "fp32 constants"
        note = (f"{_count(shape.linear_weights)} weights in {kind}, 0.5 bytes each + {how} "
                f"({8 * consts / max(1, shape.linear_weights):.3f} bit/param)")
    else:
        note = f"{_count(shape.linear_weights)} weights in int8, 1 byte each + fp32 row scales"
    out = [Component(f"base: linear layers ({bits}-bit)", (data + consts) / GB, note)]
    if stacked:
        out.append(Component("base: experts, routers", stacked * nbytes / GB,
                             f"{_count(stacked)} params in {dtype_name}: MoE experts and routers are parameters, "
                             f"not nn.Linear modules, and bitsandbytes quantizes only nn.Linear"))
    out += [
        Component("base: embeddings, head, norms", (unquantized - stacked) * nbytes / GB,
                  f"{_count(unquantized - stacked)} params in {dtype_name}; bitsandbytes leaves them unquantized"),
        Component("fp32 upcast of those", unquantized * (4 - nbytes) / GB,
                  "prepare_model_for_kbit_training casts every non-quantized param to fp32"
                  + (" (experts included)" if stacked else "")),
    ]
    return out


def _layer_activation_bytes(shape: ModelShape, modules: list[Adapted], profile: Profile, tokens: int, seq: int,
                            nbytes: int) -> tuple[float, float]:
    """(bytes one block keeps for backward, extra bytes one block's eager attention would add).

    Per token, in 16-bit: 11*h attention + 4*h norms, MLP 2*h + 8*i gated or 3*h + 4*i plain
    (34*h for a GPT MLP of 4*h), after Korthikanti et al. 2022; a mixture of experts runs its MLP once per
    routed expert, plus the shared one. LoRA adds its dropped-out input and r per token, and LoRA on a stack
    of experts materializes W + BA for the whole stack once per block.
    """
    h, scale = shape.hidden, nbytes / 2
    mlp = _mlp_bytes(h, shape.intermediate, shape.gated_mlp)
    if shape.experts is not None:
        e = shape.experts
        moe = e.per_token * _mlp_bytes(h, e.intermediate, True) + 2 * e.count  # + the router's logits
        moe += _mlp_bytes(h, e.shared_intermediate, True) if e.shared_intermediate else 0
        mlp = (e.layers * moe + (shape.layers - e.layers) * mlp) / shape.layers
    per_token = (15 * h + mlp) * scale
    dropout = profile.lora.dropout > 0
    linears = [m for m in modules if isinstance(m, Linear)]
    lora = sum(m.count * ((m.in_features * (nbytes + 1) if dropout else 0) + profile.lora.r * nbytes)
               for m in linears) / shape.layers
    weight_bytes = nbytes if profile.quant.bits == "none" else 4  # experts are upcast to fp32 with a k-bit base
    merged = sum(m.params * weight_bytes for m in modules if isinstance(m, Stacked)) / shape.layers
    eager = 5 * shape.heads * seq * scale  # softmax output, its dropout mask and output, per token
    return tokens * (per_token + lora) + merged, tokens * eager


def _mlp_bytes(h: int, i: int, gated: bool) -> float:
    """16-bit bytes one token keeps in one MLP: its input, and the gate, up, activation and product (or up, act)."""
    return 2 * h + 8 * i if gated else 3 * h + 4 * i


def _plan_notes(profile: Profile, shape: ModelShape, rows: int, eager_extra_gb: float, dtype_name: str) -> list[str]:
    notes = [f"activations assume every row fills max_seq_len; PyTorch SDPA attention (eager attention would "
             f"add {eager_extra_gb:.2f} GB)"]
    if shape.experts is not None:
        e = shape.experts
        shared = " and the shared expert" if e.shared_intermediate else ""
        notes.append(f"mixture of experts: {e.count} experts in each of {e.layers} blocks, {e.per_token} routed per "
                     f"token; all experts' weights are resident ({_count(shape.total_params)} params), activations "
                     f"count the {e.per_token} routed ones{shared} ({_count(shape.active_params)} params per token)")
    if profile.quant.bits != "none":
        kept = "embeddings, output head, norms" + (", MoE experts and routers" if shape.stacked else "")
        notes.append(f"quantized by bitsandbytes: the blocks' nn.Linear layers ({', '.join(shape.module_names())}); "
                     f"kept in {dtype_name}: {kept}")
    if rows > 1:
        notes.append(f"train.method = {profile.train.method!r}: each batch row runs {rows} sequences")
    if profile.train.method == "rlhf":
        notes.append("rlhf: the KV cache of sampled completions is not counted")
    if profile.quant.compute_dtype == "auto":
        notes.append(f"compute dtype {dtype_name}: bf16 on cards that support it, else fp16")
    return notes


def _quant_label(profile: Profile, dtype_name: str) -> str:
    q = profile.quant
    if q.bits == "none":
        return f"none ({dtype_name} weights)"
    if q.bits == 8:
        return f"8-bit int8, {dtype_name} compute"
    return f"4-bit {q.type.upper()}{', double quant' if q.double_quant else ''}, {dtype_name} compute"


def _gb(value: float) -> str:
    return "<0.01" if 0 < value < 0.005 else f"{value:.2f}"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


# ---------------------------------------------------------------- the GPU and the printout


def fit_sentence(plan: MemoryPlan) -> str:
    """One line a person reads: fits with how much to spare, does not fit and by how much, or unknown card."""
    if plan.gpu_gb is None or plan.headroom_gb is None or plan.spare_gb is None:
        return "card size unknown (no GPU detected): pass --gpu-gb N to check a card"
    card = f"{plan.gpu_gb:g} GB card" if plan.gpu_name is None else f"{plan.gpu_gb:.1f} GB {plan.gpu_name}"
    usable = plan.gpu_gb - plan.headroom_gb
    article = "an" if card.startswith("8") or card.split(" ")[0].split(".")[0] in ("11", "18") else "a"
    if plan.fits:
        return (f"fits {article} {card} with {plan.spare_gb:.1f} GB to spare "
                f"(after keeping {plan.headroom_gb:.1f} GB, {HEADROOM_SHARE:.0%} of the card, free for "
                f"fragmentation and temporary buffers)")
    return (f"does not fit {article} {card}: needs {plan.total_gb:.1f} GB, {usable:.1f} GB usable "
            f"after {HEADROOM_SHARE:.0%} headroom")


def format_plan(plan: MemoryPlan) -> str:
    """The plan as the CLI prints it: a summary, an aligned component table, the total and the verdict."""
    gc_word = {True: "on", False: "off", "offload": "offloaded"}.get(plan.gradient_checkpointing, "on")
    rows_word = "row" if plan.batch_size == 1 else "rows"
    pct = 100 * plan.trainable_params / max(1, plan.total_params + plan.trainable_params)
    active = f" ({_count(plan.active_params)} active per token)" if plan.active_params != plan.total_params else ""
    lines = [
        f"Memory plan for {plan.profile_name} (estimate; GB = 10^9 bytes)",
        f"  model   {plan.model_id}: {_count(plan.total_params)} params{active}, {plan.model_type}",
        f"          config from {plan.config_source}",
        f"          shapes from {plan.shape_source}",
        f"  quant   {plan.quantization}",
        f"  LoRA    {_count(plan.trainable_params)} trainable params ({pct:.2f}%) in "
        f"{', '.join(plan.lora_targets)}",
        f"  batch   {plan.batch_size} {rows_word} x {plan.seq_len:,} tokens ({plan.method}), "
        f"gradient checkpointing {gc_word}",
        *([f"  per GPU {plan.per_gpu}"] if plan.per_gpu else []),
        "",
    ]
    rows = [(c.name + (" *" if c.in_use else ""), _gb(c.gb), c.note if c.counted else f"not in total: {c.note}")
            for c in plan.components]
    other = "off" if plan.gradient_checkpointing else "on"
    rows.append(("total", f"{plan.total_gb:.2f}",
                 f"{plan.total_gb_other_checkpointing:.2f} GB with gradient checkpointing {other}"))
    width = max(len(r[0]) for r in [("COMPONENT", "", ""), *rows])
    gb_width = max(len(r[1]) for r in rows)
    lines.append(f"  {'COMPONENT'.ljust(width)}  {'GB'.rjust(gb_width)}  NOTE")
    for i, (name, gb, note) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append(f"  {'-' * width}  {'-' * gb_width}")
        lines.append(f"  {name.ljust(width)}  {gb.rjust(gb_width)}  {note}".rstrip())
    lines += ["", f"  * activations this profile uses (train.gradient_checkpointing = "
                  f"{str(plan.gradient_checkpointing).lower()})"]
    lines += [f"  note: {n}" for n in plan.notes]
    lines += ["", fit_sentence(plan)]
    return "\n".join(lines)
