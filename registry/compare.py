"""Compare-generate: the base model and several adapters answer one prompt in one batched generate call.

PEFT loads the base once, in the quantization the adapters were trained
with, and every adapter onto it; each batch row then goes through its own
adapter (row 0 through none), by stacked LoRA matmuls (registry/lorabatch.py)
or, for adapters those do not cover, PEFT's mixed-adapter batch
(`adapter_names=["__base__", "a0", ...]`). Every row sees the same prompt and
decoding settings; a per-row streamer reports text as it arrives. Loading
(load_session) and answering (generate_answers) are apart, so the playground
keeps one loaded session for many prompts.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from qlora_tui.core.models import revision_changed
from qlora_tui.registry.basemodel import VersionBase, version_base
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.lora import check_adapter_files, read_adapter_config
from qlora_tui.registry.lorabatch import BASE_ROW, configs_allow_stacking, stacked_rows
from qlora_tui.registry.quant import load_kwargs, training_quant
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.store import Store

BASE_LABEL = "base"
TextCallback = Callable[[int, str, str], None]  # (row, label, text so far)


@dataclass
class Answer:
    """One row's answer: "base" or the version's ref, its text, when it finished, and how many tokens it made."""

    label: str
    ref: str
    text: str
    seconds: float
    new_tokens: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RowStreamer:
    """A transformers streamer for batches: decodes each row on its own and stops a row at its end token."""

    def __init__(self, tokenizer: Any, labels: list[str], stop_ids: set[int], on_text: TextCallback | None) -> None:
        self.tokenizer = tokenizer
        self.labels = labels
        self.stop_ids = stop_ids
        self.on_text = on_text
        self.tokens: list[list[int]] = [[] for _ in labels]
        self.texts = ["" for _ in labels]
        self.finished: list[float | None] = [None for _ in labels]
        self.started = time.monotonic()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt itself
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.labels), -1)[:, -1].tolist()):
            if self.finished[row] is not None:
                continue
            if token in self.stop_ids:
                self.finished[row] = time.monotonic() - self.started
                continue
            self.tokens[row].append(token)
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if text != self.texts[row]:
                self.texts[row] = text
                if self.on_text:
                    self.on_text(row, self.labels[row], text)

    def end(self) -> None:
        now = time.monotonic() - self.started
        self.finished = [now if f is None else f for f in self.finished]


def check_same_base(versions: list[AdapterVersion]) -> str:
    """All adapters must share one base model, since the batch runs through one loaded base."""
    bases = {v.base_model for v in versions}
    if len(bases) > 1:
        listing = "; ".join(f"{v.ref} on {v.base_model}" for v in versions)
        raise RegistryError(f"compare needs adapters of one base model, got: {listing}",
                            hint="compare the adapters of each base model separately")
    return versions[0].base_model


def prompt_text(tokenizer: Any, prompt: str, raw: bool = False) -> str:
    """The prompt through the chat template when the tokenizer has one, as a chat-tuned adapter expects it;
    as typed when `raw` (an adapter trained on plain text continues it)."""
    return prompt if raw else render_conversation(tokenizer, [{"role": "user", "content": prompt}])


def trained_on_text(version: AdapterVersion) -> bool:
    """True for a version trained on plain `text` rows (no chat template), which expects a raw prompt."""
    recorded = version.extra.get("data_format")
    if recorded:
        return recorded == "text"
    return version.settings.data.format == "text"


def raw_by_default(versions: list[AdapterVersion]) -> tuple[bool, str]:
    """Prompt raw when every version was trained on plain text; with a mix, the chat template and a warning."""
    text = [v.ref for v in versions if trained_on_text(v)]
    if text and len(text) == len(versions):
        return True, ""
    if text:
        return False, (f"{', '.join(text)} {'was' if len(text) == 1 else 'were'} trained on plain text, the others on "
                       "chat rows: the prompt goes through the chat template; --raw sends it as typed")
    return False, ""


def base_revision_warnings(versions: list[AdapterVersion], resolved: VersionBase) -> list[str]:
    """One line per version trained on other base files than the ones loaded."""
    out = [resolved.warning] if resolved.warning else []
    for version in versions[1:]:
        if revision_changed(version.base_revision, resolved.base):
            out.append(f"{version.ref} was trained on {version.base_model} at revision {version.base_revision}, "
                       f"but the loaded base is at {resolved.base.revision}")
    return out


def resolve_versions(store: Store, refs: list[str]) -> list[AdapterVersion]:
    """The distinct adapter versions named by refs, in order; merged and reward versions are refused."""
    if not refs:
        raise RegistryError("compare needs at least one adapter ref")
    versions: list[AdapterVersion] = []
    for ref in refs:
        version = store.get(ref)
        if version.kind != "adapter":
            raise RegistryError(f"{version.ref} is a {version.kind} version; compare takes causal-LM adapters")
        check_adapter_files(version.path, version.ref)  # before 20 s of loading the base, not after
        if version.id not in {v.id for v in versions}:
            versions.append(version)
    return versions


def check_decoding(prompt: str, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Refuse a prompt or decoding settings that generate() would refuse, before anything is loaded."""
    if not prompt.strip():
        raise RegistryError("--prompt is empty")
    if max_new_tokens < 1:
        raise RegistryError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise RegistryError(f"--temperature must be >= 0 and --top-p in (0, 1]; got {temperature} and {top_p}")


@dataclass
class CompareSession:
    """The base loaded once, as the first adapter was trained, with each adapter on it; ready for many prompts.

    `names` maps each version's ref to its PEFT adapter name; `base_key` (base files, quantization) says
    which versions it can take more adapters for without loading the base again.
    """

    model: Any
    tokenizer: Any
    base_key: tuple[str, str]
    versions: list[AdapterVersion]
    names: dict[str, str]
    serial: int
    pristine: list[tuple[Any, Any, Any]] = field(default_factory=list)  # see _pristine_4bit

    @property
    def labels(self) -> list[str]:
        return [BASE_LABEL] + [v.ref for v in self.versions]

    @property
    def rows(self) -> list[str]:
        return [BASE_ROW] + [self.names[v.ref] for v in self.versions]

    def add(self, version: AdapterVersion) -> None:
        """Load one more adapter onto the loaded base."""
        name = f"a{self.serial}"
        self.serial += 1
        self.model.load_adapter(str(version.path), adapter_name=name)
        self.model.eval()
        for module, data, quant_state in self.pristine:  # load_adapter read the state dict: see _pristine_4bit
            module.weight.data, module.weight.quant_state = data, copy.deepcopy(quant_state)
        self.names[version.ref] = name
        self.versions.append(version)

    def drop(self, ref: str) -> None:
        """Free one adapter's weights (the base and the other adapters stay)."""
        self.model.delete_adapter(self.names.pop(ref))
        self.versions = [v for v in self.versions if v.ref != ref]


def base_key(store: Store, versions: list[AdapterVersion], on_warning: Callable[[str], None] | None = None
             ) -> tuple[tuple[str, str], VersionBase]:
    """The base files and quantization these versions load with, after checking they share one base."""
    check_same_base(versions)
    resolved = version_base(store, versions[0])
    for warning in base_revision_warnings(versions, resolved):
        (on_warning or (lambda message: None))(warning)
    return (str(resolved.path), training_quant(versions[0]).describe()), resolved


def load_session(store: Store, refs: list[str], *, on_progress: Callable[[str, float], None] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> CompareSession:
    """Load the base once and every adapter named by refs onto it, as a0, a1, ...; `on_warning` hears of a base
    whose revision differs from the one an adapter was trained on."""
    report = on_progress or (lambda message, fraction: None)
    versions = resolve_versions(store, refs)
    key, resolved = base_key(store, versions, on_warning)
    model, tokenizer = load_with_adapters(resolved.path, versions, training_quant(versions[0]), report)
    return CompareSession(model, tokenizer, key, versions, {v.ref: f"a{i}" for i, v in enumerate(versions)},
                          len(versions), _pristine_4bit(model))


def _pristine_4bit(model: Any) -> list[tuple[Any, Any, Any]]:
    """Each 4-bit layer's weights and quantization state as loaded, while they are on the CPU and not yet packed.

    On the CPU, bitsandbytes packs 4-bit weights into another layout at their first forward, and reading the
    state dict (PEFT's load_adapter does) unpacks them only approximately, which would shift the base's logits
    for every later prompt; CompareSession.add puts these back, so the next forward packs the loaded weights
    again and a kept session answers as a fresh one. On a GPU nothing is packed and this list stays empty.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [(m, m.weight.data, copy.deepcopy(m.weight.quant_state)) for m in model.modules()
            if isinstance(m, Linear4bit) and m.weight.device.type == "cpu" and m.weight.quant_state is not None
            and not getattr(m.weight.quant_state, "packing_format_for_cpu", False)]


def render_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A conversation ending in a user turn, as the model reads it: through its chat template.

    A single turn without a template is the prompt as typed; several turns need the template.
    """
    if len(messages) == 1 and not getattr(tokenizer, "chat_template", None):
        return messages[0]["content"]
    if not getattr(tokenizer, "chat_template", None):
        raise RegistryError("chat mode needs the model's chat template, and this tokenizer has none",
                            hint="turn chat mode off: each prompt then stands alone")
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def generate_answers(session: CompareSession, prompt: str, *, history: dict[str, list[dict[str, str]]] | None = None,
                     max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                     raw: bool = False, on_text: TextCallback | None = None,
                     on_progress: Callable[[str, float], None] | None = None) -> list[Answer]:
    """Answer `prompt` with the base (row 0, label "base") and each loaded adapter, in one batched generate call.

    Greedy when temperature is 0; otherwise sampled with `seed`. `history` (chat mode) holds each label's
    earlier turns, which go before the prompt; rows of different lengths are padded on the left. `raw` sends
    the prompt as typed, without the chat template (and without history: a raw prompt stands alone).
    `on_text(row, label, text_so_far)` is called as tokens arrive.
    """
    check_decoding(prompt, max_new_tokens, temperature, top_p)
    report = on_progress or (lambda message, fraction: None)
    import torch

    model, tokenizer, labels, rows = session.model, session.tokenizer, session.labels, session.rows
    if raw:
        texts = [prompt for _ in labels]
    else:
        texts = [render_conversation(tokenizer, [*(history or {}).get(label, []), {"role": "user", "content": prompt}])
                 for label in labels]
    stop_ids = {i for i in _as_list(model.generation_config.eos_token_id) + [tokenizer.eos_token_id] if i is not None}
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0,
                                "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else next(iter(stop_ids), 0)}
    if temperature > 0:
        settings.update(temperature=temperature, top_p=top_p)
    else:
        settings.update(temperature=None, top_p=None, top_k=None)
    configs = [read_adapter_config(v.path) for v in session.versions]
    streamers: list[RowStreamer] = []
    torch.manual_seed(seed)
    with torch.no_grad():
        alone = unbatchable(configs)
        if alone:  # PEFT refuses these in mixed batches
            report(f"generating row by row: {alone} cannot share a batch", 0.75)
            for row, (name, label, text) in enumerate(zip(rows, labels, texts)):
                streamers.append(RowStreamer(tokenizer, [label], stop_ids, _shifted(on_text, row)))
                if name != BASE_ROW:
                    model.set_adapter(name)
                input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
                with model.disable_adapter() if name == BASE_ROW else contextlib.nullcontext():
                    model.generate(input_ids=input_ids.to(model.device), streamer=streamers[-1], **settings)
        else:
            report("generating", 0.75)
            streamers.append(RowStreamer(tokenizer, labels, stop_ids, on_text))
            batch, mask = _batch(tokenizer, texts, settings["pad_token_id"])
            stackable = configs_allow_stacking(configs)
            with stacked_rows(model, rows) if stackable else contextlib.nullcontext(False) as stacked:
                routing = {} if stacked else {"adapter_names": rows}  # else PEFT's mixed batch routes each row
                model.generate(input_ids=batch.to(model.device), attention_mask=mask.to(model.device),
                               streamer=streamers[-1], **routing, **settings)
    report("done", 1.0)
    per_row = [(s, i) for s in streamers for i in range(len(s.labels))]
    return [Answer(label, ref, s.texts[i], round(s.finished[i] or 0.0, 3), len(s.tokens[i]))
            for (s, i), label, ref in zip(per_row, labels, [""] + [v.ref for v in session.versions])]


def compare_generate(store: Store, refs: list[str], prompt: str, *, max_new_tokens: int = 64,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, raw: bool | None = None,
                     on_text: TextCallback | None = None,
                     on_progress: Callable[[str, float], None] | None = None,
                     on_warning: Callable[[str], None] | None = None) -> list[Answer]:
    """Load the base and the adapters, then answer `prompt` once: load_session + generate_answers.

    `raw` sends the prompt as typed instead of through the chat template; None decides from the versions
    (raw when all were trained on plain text). `on_warning` hears of a base whose revision differs from
    the one an adapter was trained on, and of a mix of plain-text and chat versions.
    """
    check_decoding(prompt, max_new_tokens, temperature, top_p)
    if raw is None:
        raw, mixed = raw_by_default(resolve_versions(store, refs))
        if mixed and on_warning is not None:
            on_warning(mixed)
    session = load_session(store, refs, on_progress=on_progress, on_warning=on_warning)
    return generate_answers(session, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed, raw=raw, on_text=on_text, on_progress=on_progress)


def unbatchable(configs: list[dict[str, Any]]) -> str:
    """Why PEFT cannot put these adapters in one mixed batch ("" when it can)."""
    if any(c.get("use_dora") for c in configs):
        return "DoRA adapters"
    if any(c.get("target_parameters") for c in configs):
        return "LoRA on expert parameters (PEFT's ParamWrapper)"
    return ""


def _batch(tokenizer: Any, texts: list[str], pad_id: int) -> tuple[Any, Any]:
    """Input ids and attention mask for one row per text: one prompt repeated, or left-padded to the longest."""
    import torch

    if len(set(texts)) == 1:
        ids = tokenizer(texts[0], return_tensors="pt", add_special_tokens=False)["input_ids"].repeat(len(texts), 1)
        return ids, torch.ones_like(ids)
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(ids) for ids in encoded)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in encoded])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in encoded])
    return ids, mask


def load_with_adapters(base_dir: Any, versions: list[AdapterVersion], quant: Any, report: Callable[[str, float], None]
          ) -> tuple[Any, Any]:
    """The base, loaded once as training loaded it, with every adapter on it as a0, a1, ...; and the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = versions[0].path
    tokenizer = AutoTokenizer.from_pretrained(first if (first / "tokenizer_config.json").is_file() else base_dir)
    report(f"loading {versions[0].base_model} ({quant.describe()})", 0.05)
    model = AutoModelForCausalLM.from_pretrained(base_dir, **load_kwargs(quant))
    for i, version in enumerate(versions):
        report(f"loading adapter {version.ref}", 0.3 + 0.4 * i / len(versions))
        if i == 0:
            model = PeftModel.from_pretrained(model, str(version.path), adapter_name="a0")
        else:
            model.load_adapter(str(version.path), adapter_name=f"a{i}")
    model.eval()
    return model, tokenizer


def _shifted(on_text: TextCallback | None, row: int) -> TextCallback | None:
    """A one-row streamer's callback, reporting as row `row` of the whole comparison."""
    if on_text is None:
        return None
    return lambda _row, label, text: on_text(row, label, text)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
