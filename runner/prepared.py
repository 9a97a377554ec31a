"""A run after its checks and before its weights: everything a trainer is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlora_tui.core.models import BaseModel
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.data.preflight import TokenizedRow
from qlora_tui.runner.estimate.experts import ExpertTreatment
from qlora_tui.runner.fast.choice import FastPath

if TYPE_CHECKING:  # both import torch: a Prepared is typed without loading it
    from transformers import PreTrainedTokenizerBase

    from qlora_tui.runner.fast.lora_patch import FusedLoraReport

Conversation = dict[str, Any]  # a preference, KTO or prompt-only row: {"prompt": [turns], "chosen": [turns], ...}


@dataclass
class Prepared:
    """What the checks produced: the profile, the base as local files, the tokenizer, the rows to train and
    evaluate on, what the run continues from, and the fast path chosen for this machine."""

    profile: Profile
    base: BaseModel
    tokenizer: PreTrainedTokenizerBase
    train_data: list[TokenizedRow] | list[Conversation]  # TokenizedRow for SFT, conversations for the others
    eval_data: list[TokenizedRow] | list[Conversation]
    dataset_fingerprint: str
    dataset_rows: int
    parent_ref: str  # the registered adapter this run continues ("" for a fresh LoRA)
    parent_path: Path | None
    measure_pairs: list[Conversation] = field(default_factory=list)  # held out for the before/after alignment check
    measure_slice: str = ""  # what those pairs are, in words
    fast: FastPath | None = None  # attention kernel, packing and Liger, chosen before the weights load
    report_to: list[str] = field(default_factory=list)  # the trackers found usable at start
    data_format: str = ""  # the detected row format: compare prompts raw for adapters trained on "text"
    reward_ref: str = ""  # rlhf: the registered reward model it trains against
    reward_path: Path | None = None
    fused: FusedLoraReport | None = None  # what the fused LoRA layers covered, once the policy is loaded
    experts: ExpertTreatment | None = None  # a mixture of experts: what the run does with them (runner/moe.py)

    @property
    def method(self) -> str:
        return self.profile.train.method
