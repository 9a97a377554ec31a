"""Run profiles: TOML files validated into dataclasses, with errors that name the field.

The same field table drives the CLI's validation, the app's form (field by field,
as the user types) and `save_profile`, so a message is worded once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qlora_tui.core.names import is_valid_name
from qlora_tui.runner.errors import ProfileError

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
    dropout: float = spec(0.05, "number", "dropout on the LoRA input", min=0, max=1, max_exclusive=True)
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
    gradient_checkpointing: bool = spec(True, "bool", "recompute activations in backward to save memory")
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


# ---------------------------------------------------------------- validation


def field_spec(section: str, key: str) -> dataclasses.Field:
    for f in fields(SECTIONS[section]):
        if f.name == key:
            return f
    raise KeyError(f"{section}.{key}")


def _fmt(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def check_value(path: str, meta: dict[str, Any], value: Any) -> Any:
    """Check one value against its rules; return it normalised or raise ProfileError naming `path`."""
    kind = meta["kind"]
    if kind == "str":
        if not isinstance(value, str):
            raise ProfileError(f"{path}: must be a string, got {_fmt(value)}")
        if meta.get("required") and not value.strip():
            raise ProfileError(f"{path}: is required ({meta['help']})")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ProfileError(f"{path}: must be true or false, got {_fmt(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a positive integer" if meta.get("min", 0) >= 1 else "an integer"
            raise ProfileError(f"{path}: must be {what}, got {_fmt(value)}")
        return _check_range(path, meta, value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{path}: must be a number, got {_fmt(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ProfileError(f"{path}: must be a finite number, got {value}")
        return _check_range(path, meta, float(value))
    if kind == "choice":
        if value not in meta["choices"]:
            raise ProfileError(f"{path}: must be one of {', '.join(meta['choices'])}; got {_fmt(value)}")
        return value
    if kind == "bits":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value not in (4, 8, "none") or isinstance(value, bool):
            raise ProfileError(f'{path}: must be 4, 8 or "none"; got {_fmt(value)}')
        return value
    if kind == "processes":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ProfileError(f'{path}: must be "auto" or a positive number of processes; got {_fmt(value)}')
    if kind == "targets":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ProfileError(f'{path}: must be a non-empty list of module names such as ["q_proj", "v_proj"], '
                               f"got {_fmt(value)}")
        if "all-linear" in value and len(value) > 1:
            raise ProfileError(f'{path}: "all-linear" stands alone; got {value}')
        return list(value)
    if kind == "trackers":
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f'{path}: must be a list of tracker names such as ["tensorboard"], got {_fmt(value)}')
        unknown = [v for v in value if v not in meta["choices"]]
        if unknown:
            raise ProfileError(f"{path}: {', '.join(map(_fmt, unknown))} is not a tracker; use "
                               f"{', '.join(meta['choices'])}")
        return list(dict.fromkeys(value))
    raise AssertionError(kind)


def _check_range(path: str, meta: dict[str, Any], value: float) -> float:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ProfileError(f"{path}: must be {op} {lo}, got {value}")
    if hi is not None and (value > hi or (meta.get("max_exclusive") and value == hi)):
        op = "<" if meta.get("max_exclusive") else "<="
        raise ProfileError(f"{path}: must be {op} {hi}, got {value}")
    return value


def parse_field_text(section: str, key: str, text: str) -> Any:
    """Turn what a user typed into a form field into a checked value (same messages as the file)."""
    f = field_spec(section, key)
    meta, path, raw = f.metadata, f"{section}.{key}", text.strip()
    kind = meta["kind"]
    value: Any = raw
    if kind == "int":
        try:
            value = int(raw)
        except ValueError:
            value = raw
    elif kind == "number":
        try:
            value = float(raw)
        except ValueError:
            value = raw
    elif kind == "bool":
        value = {"true": True, "false": False, "yes": True, "no": False}.get(raw.lower(), raw)
    elif kind in ("targets", "trackers"):
        value = [part.strip().strip('"') for part in raw.strip("[]").split(",") if part.strip()]
    elif kind == "str":
        value = text
    return check_value(path, meta, value)


def check_profile_name(value: Any) -> str:
    """The top-level `name`: it becomes the adapter's name in the registry."""
    if not is_valid_name(value):
        raise ProfileError(f'name: must be letters, digits, ".", "_" or "-" (at most 64), got {_fmt(value)}')
    return value


def profile_from_dict(doc: dict[str, Any], source: str = "<profile>", text: str = "") -> Profile:
    """Validate a parsed TOML document; every error names the file, line (when found) and field path."""

    def fail(err: ProfileError, section: str | None, key: str | None) -> ProfileError:
        line = _find_line(text, section, key) if text else None
        where = f"{source}:{line}" if line else source
        return ProfileError(f"{where}: {err.message}", hint=err.hint)

    profile = Profile()
    for key, value in doc.items():
        if key in SECTIONS:
            continue
        if key not in TOP_LEVEL_KEYS:
            allowed = ", ".join([*TOP_LEVEL_KEYS, *(f"[{s}]" for s in SECTIONS)])
            raise fail(ProfileError(f"{key}: unknown field; allowed at top level: {allowed}"), None, key)
        if not isinstance(value, str):
            raise fail(ProfileError(f"{key}: must be a string, got {_fmt(value)}"), None, key)
        setattr(profile, key, value)
    try:
        check_profile_name(profile.name)
    except ProfileError as err:
        raise fail(err, None, "name") from None

    for section, cls in SECTIONS.items():
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise fail(ProfileError(f"{section}: must be a table ([{section}])"), None, section)
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in table.items():
            if key not in known:
                raise fail(ProfileError(f"{section}.{key}: unknown field; allowed: {', '.join(known)}"), section, key)
            try:
                values[key] = check_value(f"{section}.{key}", known[key].metadata, value)
            except ProfileError as err:
                raise fail(err, section, key) from None
        for key, f in known.items():
            if f.metadata.get("required") and key not in values and section in ("data",):
                raise fail(ProfileError(f"{section}.{key}: is required ({f.metadata['help']})"), section, None)
        setattr(profile, section, cls(**values))
        if section == "method":
            profile.method_keys = tuple(values)

    method = profile.train.method
    for key in profile.method_keys:
        used_by = field_spec("method", key).metadata.get("methods", ())
        if method not in used_by:
            raise fail(ProfileError(f"method.{key}: not used by train.method = \"{method}\" "
                                    f"(used by {', '.join(used_by)})"), "method", key)
    if method == "rlhf" and not profile.method.reward_model:
        raise fail(ProfileError('method.reward_model: train.method = "rlhf" needs the registry ref of a reward model'),
                   "method", None)
    dist = profile.dist
    if dist.node_rank >= dist.nodes:
        raise fail(ProfileError(f"dist.node_rank: must be below dist.nodes ({dist.nodes}); got {dist.node_rank}",
                                hint="boxes are numbered 0 to nodes - 1"), "dist", "node_rank")
    if dist.nodes > 1 and not dist.master_port:
        raise fail(ProfileError("dist.master_port: several boxes need one fixed port that every box names; got 0",
                                hint="set dist.master_port = 29500 (or any port free on box 0)"), "dist", "master_port")
    return profile


def _find_line(text: str, section: str | None, key: str | None) -> int | None:
    """Best-effort line number of `key` in `[section]` (tomllib reports no positions for valid TOML)."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[([^\[\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
            continue
        if key and current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; relative local data paths resolve against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file", hint="qlora-tui profiles lists the shipped ones") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path}: cannot read: {err}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: not valid TOML: {err}") from None
    profile = profile_from_dict(doc, source=str(path), text=text)
    if "name" not in doc:
        profile.name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem)[:64] or "adapter"
    profile.data.path = resolve_data_path(profile.data.path, path.parent)
    return profile


def is_local_data_path(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~"))
        or value.lower().endswith(LOCAL_DATA_SUFFIXES)
    )


def resolve_data_path(value: str, base: Path) -> str:
    """Absolute path for a local data file named relative to the profile; other values unchanged."""
    if value.startswith("builtin:") or not is_local_data_path(value):
        candidate = base / value
        return str(candidate.resolve()) if value and candidate.exists() and not value.startswith("builtin:") else value
    expanded = Path(value).expanduser()
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def dumps_profile(profile: Profile, header: str = "") -> str:
    import tomli_w

    body = tomli_w.dumps(profile.to_dict())
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + ("\n" if comment else "") + body


def save_profile(profile: Profile, path: str | Path, header: str = "") -> Path:
    """Write a profile with tomli-w atomically; loading it back gives an equal Profile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps_profile(profile, header), encoding="utf-8")
    tmp.replace(path)
    return path
