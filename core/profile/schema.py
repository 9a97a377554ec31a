"""The profile schema: one dataclass per TOML section, each field carrying its default, rules and help.

The same field table drives the CLI's validation, the app's form (field by field,
as the user types) and saving, so a message is worded once.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

METHODS = ("sft", "dpo", "orpo", "kto", "reward", "rlhf")
DATA_FORMATS = (
    "auto", "messages", "sharegpt", "alpaca", "dolly", "prompt_completion", "text", "preference", "kto",
    "prompt_only",
)
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
    "adafactor", "sgd",
)
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
)
LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")


def spec(default: Any, kind: str, help: str, **rules: Any) -> Any:
    """A dataclass field carrying the validation rules and help text of one profile key."""
    meta = {"kind": kind, "help": help, **rules}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    id: str = spec("builtin:tiny-llama", "str", "Hub id, local directory, or builtin:tiny-llama", required=True)
    revision: str = spec("", "str", "Hub revision (branch, tag or commit); empty for the default")
    trust_remote_code: bool = spec(False, "bool", "run custom code shipped with the model")
    adapter: str = spec("", "str", "registry ref (name@N) of an adapter to continue training")
    attn_implementation: str = spec("auto", "choice", "attention kernel; auto: flash-attention when installed on a "
                                    "GPU, else PyTorch's SDPA", choices=ATTN_IMPLEMENTATIONS)


@dataclass
class QuantSection:
    bits: int | str = spec(4, "bits", "weight quantization of the frozen base", choices=(4, 8, "none"))
    type: str = spec("nf4", "choice", "4-bit data type", choices=("nf4", "fp4"))
    double_quant: bool = spec(True, "bool", "quantize the quantization constants too (~0.4 bit/param saved)")
    compute_dtype: str = spec("auto", "choice", "dtype of the matmuls", choices=("auto", "bf16", "fp16", "fp32"))
    llm_int8_threshold: float = spec(6.0, "number", "8-bit bases: activations above this stay in 16-bit "
                                     "(LLM.int8 outliers)", min=0)


@dataclass
class LoraSection:
    r: int = spec(16, "int", "LoRA rank", min=1, max=4096)
    alpha: float = spec(32, "number", "LoRA scaling numerator (scale = alpha / r)", min=0, min_exclusive=True)
    dropout: float = spec(0.0, "number", "dropout on the LoRA input (0 lets the fused LoRA layers run)", min=0,
                          max=1, max_exclusive=True)
    target_modules: list[str] = spec(
        ["q_proj", "k_proj", "v_proj", "o_proj"], "targets",
        'module names to adapt, or ["all-linear"]',
    )
    bias: str = spec("none", "choice", "which biases to train", choices=("none", "all", "lora_only"))
    use_rslora: bool = spec(False, "bool", "rank-stabilised scaling alpha / sqrt(r)")
    use_dora: bool = spec(False, "bool", "weight-decomposed LoRA (DoRA)")


@dataclass
class DataSection:
    path: str = spec("", "str", "local .jsonl/.json/.csv/.parquet file, Hub data set id, or builtin:NAME",
                     required=True)
    format: str = spec("auto", "choice", "row format", choices=DATA_FORMATS)
    split: str = spec("train", "str", "split to train on (Hub data sets)")
    subset: str = spec("", "str", "configuration name of a Hub data set")
    max_rows: int = spec(0, "int", "use at most this many rows (0: all)", min=0)
    eval_fraction: float = spec(0.0, "number", "share of rows held out for evaluation", min=0, max=0.5)
    system_prompt: str = spec("", "str", "system message put before every conversation")
    text_field: str = spec("text", "str", 'column holding the text of "text" rows (e.g. "quote")')


@dataclass
class TrainSection:
    method: str = spec("sft", "choice", "training method", choices=METHODS)
    epochs: float = spec(1.0, "number", "passes over the data (ignored when max_steps > 0)", min=0, min_exclusive=True)
    max_steps: int = spec(0, "int", "optimizer steps to run (0: use epochs)", min=0)
    batch_size: int = spec(4, "int", "rows per device batch", min=1)
    grad_accum: int = spec(1, "int", "batches accumulated per optimizer step", min=1)
    lr: float = spec(2e-4, "number", "peak learning rate", min=0, min_exclusive=True, max=1)
    scheduler: str = spec("linear", "choice", "learning-rate schedule", choices=SCHEDULERS)
    warmup_ratio: float = spec(0.0, "number", "share of steps spent warming up", min=0, max=1)
    warmup_steps: int = spec(0, "int", "warm-up steps (overrides warmup_ratio when > 0)", min=0)
    max_seq_len: int = spec(1024, "int", "tokens per row; longer rows are truncated", min=8)
    optimizer: str = spec("adamw_torch", "choice", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = spec(0.0, "number", "weight decay", min=0, max=1)
    max_grad_norm: float = spec(1.0, "number", "gradient clipping norm (0: off)", min=0)
    gradient_checkpointing: bool | str = spec(True, "checkpointing", 'recompute activations in backward to save '
                                              'memory; "offload" also keeps each layer\'s input in host memory')
    seed: int = spec(42, "int", "random seed", min=0)
    save_strategy: str = spec("steps", "choice", "checkpoint every save_steps steps, or at the end of each epoch",
                              choices=("steps", "epoch"))
    save_steps: int = spec(50, "int", "checkpoint every N steps", min=1)
    save_total_limit: int = spec(2, "int", "complete checkpoints kept", min=1)
    logging_steps: int = spec(1, "int", "write a step event every N steps", min=1)
    eval_steps: int = spec(0, "int", "evaluate (and measure alignment) every N steps (0: at the end only)", min=0)
    tf32: bool = spec(False, "bool", "TF32 matmuls on Ampere or newer GPUs (ignored without one)")
    packing: bool = spec(True, "bool", "padding-free batches: rows concatenated, attention kept within each row "
                         "(SFT; other methods pad)")
    fused_lora: bool = spec(True, "bool", "qlora-tui's fused LoRA layers where they compute exactly PEFT's LoRA "
                            "(false: PEFT's path everywhere)")
    liger: bool = spec(True, "bool", "Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU) when liger-kernel is "
                       "installed and a CUDA GPU is present")
    report_to: list[str] = spec([], "trackers", "experiment trackers that also get the metrics: tensorboard, wandb, "
                                "mlflow, trackio", choices=TRACKERS)


@dataclass
class MethodSection:
    beta: float = spec(0.1, "number", "pull towards the reference (ORPO: weight of the odds-ratio term; "
                       "rlhf: KL coefficient)", min=0, min_exclusive=True, methods=("dpo", "orpo", "kto", "rlhf"))
    loss_type: str = spec("sigmoid", "choice", "DPO loss", choices=("sigmoid", "hinge", "ipo", "robust", "bco_pair"),
                          methods=("dpo",))
    precompute_ref_log_probs: bool = spec(False, "bool", "compute the reference log-probs once before training",
                                          methods=("dpo", "kto"))
    desirable_weight: float = spec(1.0, "number", "weight of desirable rows", min=0, min_exclusive=True,
                                   methods=("kto",))
    undesirable_weight: float = spec(1.0, "number", "weight of undesirable rows", min=0, min_exclusive=True,
                                     methods=("kto",))
    reward_model: str = spec("", "str", "registry ref of the reward model (name@N)", methods=("rlhf",))
    num_generations: int = spec(4, "int", "completions sampled per prompt", min=2, methods=("rlhf",))
    max_completion_len: int = spec(32, "int", "new tokens per sampled completion", min=1, methods=("rlhf",))
    temperature: float = spec(1.0, "number", "sampling temperature", min=0, min_exclusive=True, methods=("rlhf",))


@dataclass
class DistSection:
    processes: int | str = spec(1, "processes", 'training processes on this box: "auto" (one per visible GPU, 1 on '
                                'the CPU) or a number')
    strategy: str = spec("ddp", "choice", "ddp: a whole (4-bit) copy per GPU; fsdp: the base sharded across GPUs",
                         choices=("ddp", "fsdp"))
    nodes: int = spec(1, "int", "boxes taking part; each runs qlora-tui run with its own node_rank", min=1)
    node_rank: int = spec(0, "int", "this box's index; box 0 writes the events and registers the adapter", min=0)
    master_addr: str = spec("127.0.0.1", "str", "address of box 0 that every box can reach")
    master_port: int = spec(0, "int", "rendezvous port on box 0 (0: any free port, one box only)", min=0, max=65535)
    timeout_s: int = spec(600, "int", "seconds a process waits for the others (to join, in each collective)",
                          min=5)


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "quant": QuantSection,
    "lora": LoraSection,
    "data": DataSection,
    "train": TrainSection,
    "method": MethodSection,
    "dist": DistSection,
}
TOP_LEVEL_KEYS = ("name", "description")


@dataclass
class Profile:
    name: str = "adapter"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    quant: QuantSection = field(default_factory=QuantSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    method: MethodSection = field(default_factory=MethodSection)
    dist: DistSection = field(default_factory=DistSection)
    method_keys: tuple[str, ...] = ()  # the [method] keys the file set, so saving writes back only those

    def to_dict(self) -> dict[str, Any]:
        """The TOML document for this profile (every field, so a saved file is self-describing)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        for section in SECTIONS:
            if section == "method":
                continue
            out[section] = dataclasses.asdict(getattr(self, section))
        if self.method_keys:
            out["method"] = {k: getattr(self.method, k) for k in self.method_keys}
        return out

    def digest(self) -> str:
        import json

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def field_spec(section: str, key: str) -> dataclasses.Field:
    for f in fields(SECTIONS[section]):
        if f.name == key:
            return f
    raise KeyError(f"{section}.{key}")
