"""A model's shape counted from its weights' safetensors headers (names, dtypes, shapes; never the tensor data).

Counting the weights is exact for any architecture, so the plan reads the
headers whenever it can reach them: a local directory, the built-in model,
the Hugging Face cache, or (online) the Hub. The config formulas of
model_shape.py are the fallback, and an unknown architecture with
neither is an error, never a guess. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_tui.core.builtin import builtin_model_dir, is_builtin
from qlora_tui.core.errors import ModelError
from qlora_tui.core.safetensors_header import INDEX_NAME, SafetensorsHeaderError, read_header, weight_files
from qlora_tui.runner.estimate.hub import DOWNLOAD_TIMEOUT_S, HubAnswers, hub_offline, in_hub_cache
from qlora_tui.runner.estimate.known_models import ModelConfig
from qlora_tui.runner.estimate.model_shape import (
    EXPERT_COUNT,
    EXPERTS_PER_TOKEN,
    FAMILIES,
    FAMILY_DEFAULTS,
    PLAIN_MLP_FAMILIES,
    Experts,
    Linear,
    ModelShape,
    Stacked,
    field,
    known_family,
    model_shape,
    positive,
    text_config,
)

BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
EXPERT = re.compile(r"\.experts\.(?:(\d+)\.)?")
ROUTER_NAMES = ("gate", "router")
BUFFER_SUFFIXES = ("inv_freq", "masked_bias", "position_ids")
# Tensors of checkpoints already quantized (GPTQ, AWQ, bitsandbytes, fp8 scales): their shapes are not param counts.
PREQUANTIZED = re.compile(r"\.(qweight|qzeros|scales|g_idx|absmax|quant_map|quant_state\..*|SCB|weight_format|"
                          r"weight_scale(_inv)?|nested_absmax|nested_quant_map)$")
HEAD_NAMES = ("lm_head.weight", "embed_out.weight", "output.weight")
PLAIN_MLP_NAMES = ("c_fc", "dense_h_to_4h", "fc1", "fc_in")


@dataclass(frozen=True)
class WeightHeaders:
    """Every tensor's shape in a model's weights (name -> shape) and where the headers were read."""

    shapes: dict[str, tuple[int, ...]]
    source: str


@dataclass(frozen=True)
class CountedShape:
    """The shape the plan uses, where it came from, and what the plan should say about it."""

    shape: ModelShape
    source: str
    notes: tuple[str, ...] = ()


def count_model(model_id: str, revision: str, config: ModelConfig, home: Path, download: bool = True,
                hub_cache_dir: str | Path | None = None) -> CountedShape:
    """The model's shape from its weights' headers, else from its config's family formula; a ModelError if neither.

    For a family both can count, the headers must agree with the formula (the plan says so) or the headers win.
    """
    headers = find_weight_headers(model_id, revision, home, download, hub_cache_dir)
    counted: ModelShape | None = None
    why_not = headers if isinstance(headers, str) else ""
    if isinstance(headers, WeightHeaders):
        try:
            counted = shape_from_headers(config.values, headers)
        except ModelError as err:
            why_not = err.message
    family = known_family(config.values)
    formula: ModelShape | None = None
    formula_error = ""
    if family is not None:
        try:
            formula = model_shape(config.values)
        except ModelError as err:
            if counted is None:
                raise
            formula_error = err.message
    if formula is not None and counted is None:
        return CountedShape(formula, f"config.json fields (the {family} formula)",
                            (f"the weights' safetensors headers were not read: {why_not}",) if why_not else ())
    if counted is not None and isinstance(headers, WeightHeaders):
        source = f"safetensors headers of {headers.source}"
        if formula is not None and counted.total_params == formula.total_params:
            return CountedShape(formula, f"config.json fields ({family}), confirmed by the {source} "
                                         f"({formula.total_params:,} params either way)")
        if formula is not None:
            notes = [f"the {family} formula counts {formula.total_params:,} params, the weights "
                     f"{counted.total_params:,}: the plan uses the weights"]
        elif formula_error:
            notes = [f"the {family} formula could not count it ({formula_error}): the plan uses the weights"]
        else:
            notes = [f"model_type {counted.model_type!r}: shapes counted from the weights; every 2-D weight in a "
                     "block is counted as an nn.Linear (quantized, a LoRA target)"]
            if counted.experts is not None:
                notes.append("expert weights counted as unquantized, as transformers 5 stores experts as 3-D "
                             "parameters; LoRA 'all-linear' counted without them")
        return CountedShape(counted, source, tuple(notes))
    model_type = str(text_config(config.values).get("model_type") or "")
    raise ModelError(
        f"model.id: cannot estimate the memory of {model_id!r}: its model_type {model_type or '(none)'!r} is not one "
        f"qlora-tui counts from config.json ({', '.join(sorted(FAMILIES))}), and its weights' shapes could not be "
        f"read: {why_not}",
        hint="put the model's *.safetensors files in its directory or the Hugging Face cache (the plan reads only "
             "their headers), or go online so the Hub can serve the headers",
    )


# ---------------------------------------------------------------- finding the headers


def find_weight_headers(model_id: str, revision: str, home: Path, download: bool = True,
                        hub_cache_dir: str | Path | None = None) -> WeightHeaders | str:
    """The shapes of every tensor in the model's safetensors weights, or a phrase saying why they are not at hand
    ("" when there is nothing worth saying: the built-in model before it is built)."""
    if is_builtin(model_id):
        try:
            path = builtin_model_dir(home, model_id)
        except ModelError as err:
            return err.message
        if not path.is_dir():
            return ""  # not built yet; its config is exact, nothing to say
        return _read_directory(path, f"the built-in model ({path})")
    local = Path(model_id).expanduser()
    if local.is_dir():
        return _read_directory(local, f"local directory {local}")
    cached = _from_hub_cache(model_id, revision, hub_cache_dir)
    if isinstance(cached, WeightHeaders) or not download:
        return cached
    fetched = _from_hub(model_id, revision)
    return fetched if isinstance(fetched, WeightHeaders) else f"{cached}; {fetched}"


def _read_directory(path: Path, label: str) -> WeightHeaders | str:
    try:
        files = weight_files(path)
        if not files:
            return f"no *.safetensors files in {path}"
        shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            shapes.update({name: info.shape for name, info in read_header(file).items()})
    except SafetensorsHeaderError as err:
        return err.message
    count = f"{len(files)} files" if len(files) > 1 else files[0].name
    return WeightHeaders(shapes, f"{label} ({count})")


def _from_hub_cache(model_id: str, revision: str, cache_dir: str | Path | None) -> WeightHeaders | str:
    index = in_hub_cache(model_id, INDEX_NAME, revision, cache_dir)
    if isinstance(index, Path):
        snapshot = index.parent
        try:
            missing = [p.name for p in weight_files(snapshot) if not p.exists()]
        except SafetensorsHeaderError as err:
            return err.message
        if missing:
            return f"the Hugging Face cache lacks {len(missing)} of the weight shards (e.g. {missing[0]})"
        return _read_directory(snapshot, f"the Hugging Face cache ({snapshot})")
    single = in_hub_cache(model_id, "model.safetensors", revision, cache_dir)
    if isinstance(single, Path):
        try:
            shapes = {name: info.shape for name, info in read_header(single).items()}
        except SafetensorsHeaderError as err:
            return err.message
        return WeightHeaders(shapes, f"the Hugging Face cache ({single})")
    why = index or single
    return f"no weights in the Hugging Face cache ({why})" if why else \
        "no safetensors weights in the Hugging Face cache"


_hub_headers: HubAnswers[WeightHeaders] = HubAnswers()


def _from_hub(model_id: str, revision: str) -> WeightHeaders | str:
    """The headers the Hub serves (a few small range requests, one quick try), remembered for a while either way."""
    from huggingface_hub import HfApi

    if hub_offline():
        return "the Hub not asked for the weights' headers (HF_HUB_OFFLINE is set)"

    def fetch() -> WeightHeaders:
        meta = HfApi().get_safetensors_metadata(model_id, revision=revision or None, timeout=DOWNLOAD_TIMEOUT_S)
        shapes = {name: tuple(info.shape) for file in meta.files_metadata.values()
                  for name, info in file.tensors.items()}
        return WeightHeaders(shapes, f"the Hub ({model_id}{'@' + revision if revision else ''})")

    return _hub_headers.ask(model_id, revision, fetch, "the Hub did not serve the weights' headers")


def shape_from_headers(config: dict[str, Any], headers: WeightHeaders) -> ModelShape:
    """Sort every tensor into nn.Linear weights (2-D, in a block), expert and router parameters, and the rest.

    Sizes the activations need (hidden, heads, MLP width, experts per token) come from the config; hidden and
    vocabulary fall back to the input embedding's shape. Raises ModelError when the headers cannot be counted.
    """
    config = text_config(config)
    config = {**FAMILY_DEFAULTS.get(str(config.get("model_type")), {}), **config}
    if isinstance(config.get("text_config"), dict):  # a multimodal model: the sizes are its language model's
        config = {**config, **config["text_config"], "model_type": config.get("model_type")}
    shapes = {name: shape for name, shape in headers.shapes.items() if not _is_buffer(name, shape)}
    quantized = sorted(name for name in shapes if PREQUANTIZED.search(name))
    if quantized or config.get("quantization_config"):
        raise ModelError(f"the weights in {headers.source} are already quantized "
                         f"({quantized[0] if quantized else 'config.json has a quantization_config'}): "
                         "their shapes are not parameter counts")
    blocks = {name: int(m.group(1)) for name in shapes if (m := BLOCK.search(name))}
    if not blocks:
        raise ModelError(f"no transformer blocks (...layers.N..., ...h.N..., ...blocks.N...) among the tensor names in "
                         f"{headers.source}")
    embed = max((s for n, s in shapes.items() if n not in blocks and len(s) == 2), key=math.prod, default=(0, 0))
    hidden = positive(config, "hidden size", "hidden_size", "n_embd", "d_model", default=embed[1] or None)
    vocab = positive(config, "vocabulary size", "vocab_size", default=embed[0] or None)
    expert_count = field(config, *EXPERT_COUNT)
    tied_head = _tied_head(config, shapes, blocks)
    moe = any(EXPERT.search(name) for name in blocks)

    linears: Counter[tuple[str, int, int, bool]] = Counter()
    stacked: Counter[tuple[str, int, int, int]] = Counter()  # (name, in, out, experts) -> blocks
    expert_indices: dict[int, set[int]] = defaultdict(set)
    rest: list[str] = []
    linear_biases: set[str] = set()
    for name, shape in shapes.items():
        if name not in blocks:
            if name != tied_head:
                rest.append(name)
            continue
        if expert := EXPERT.search(name):
            expert_indices[blocks[name]].add(int(expert.group(1)) if expert.group(1) else -1)
            continue
        module, _, kind = name.rpartition(".")
        leaf = module.rpartition(".")[2]
        if kind != "weight" or len(shape) != 2:
            rest.append(name)
        elif moe and leaf in ROUTER_NAMES and expert_count in (shape[0], None):
            stacked[(f"{leaf} (router)", shape[1], shape[0], 1)] += 1
        else:
            out, inn = shape
            bias = shapes.get(f"{module}.bias")
            has_bias = bias is not None and len(bias) == 1
            if has_bias:
                linear_biases.add(f"{module}.bias")
                if bias[0] == inn != out:  # a Conv1D, which stores its weight as [in, out]
                    out, inn = inn, out
            linears[(leaf, inn, out, has_bias)] += 1
    other = sum(math.prod(shapes[name]) for name in rest if name not in linear_biases)

    experts = _experts(config, shapes, blocks, expert_indices, expert_count, stacked)
    linear_list = tuple(Linear(name, inn, out, count, bias) for (name, inn, out, bias), count in linears.items())
    stacked_list = tuple(Stacked(name, inn, out, count, n) for (name, inn, out, n), count in stacked.items())
    layers = field(config, "num_hidden_layers", "n_layer", "num_layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers <= 0:
        layers = len(set(blocks.values()))
    heads = field(config, "num_attention_heads", "n_head", "num_heads", default=max(1, hidden // 64))
    widest = max((max(lin.in_features, lin.out_features) for lin in linear_list), default=4 * hidden)
    intermediate = field(config, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff",
                         default=widest)
    family = known_family(config)
    names = {lin.name for lin in linear_list}
    gated = (family not in PLAIN_MLP_FAMILIES if family else
             not (names & set(PLAIN_MLP_NAMES)) or bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"}))
    return ModelShape(str(config.get("model_type") or "unknown"), hidden, layers, heads, intermediate, vocab, gated,
                      linear_list, other, stacked_list, experts)


def _is_buffer(name: str, shape: tuple[int, ...]) -> bool:
    """Non-parameter tensors some checkpoints carry: rotary tables, GPT-2's causal mask, position ids."""
    return name.endswith(BUFFER_SUFFIXES) or (name.endswith(".attn.bias") and len(shape) == 4)


def _tied_head(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], blocks: dict[str, int]) -> str:
    """The output head's name when the model ties it to the input embedding yet the file holds both copies."""
    if not config.get("tie_word_embeddings"):
        return ""
    outside = {name: shape for name, shape in shapes.items() if name not in blocks and len(shape) == 2}
    for name, shape in outside.items():
        if name.endswith(HEAD_NAMES) and any(other != name and other_shape == shape
                                             for other, other_shape in outside.items()):
            return name
    return ""


def _experts(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], blocks: dict[str, int],
             indices: dict[int, set[int]], expert_count: Any,
             stacked: Counter[tuple[str, int, int, int]]) -> Experts | None:
    """The mixture of experts the expert tensors make up, adding them to `stacked`; None for a dense model."""
    if not indices:
        return None
    per_token = field(config, *EXPERTS_PER_TOKEN)
    if not isinstance(per_token, int) or per_token <= 0:
        raise ModelError(f"the weights hold experts but config.json names no experts-per-token count "
                         f"({' / '.join(EXPERTS_PER_TOKEN)})")
    count = expert_count if isinstance(expert_count, int) and expert_count > 0 else max(
        (len(found) for found in indices.values()), default=1)
    for name, shape in shapes.items():
        expert = EXPERT.search(name) if name in blocks else None
        if expert is None:
            continue
        param = EXPERT.sub(".experts.", name).rpartition(".experts.")[2]
        if expert.group(1) is None:  # fused [experts, ...]
            per_expert = shape[1:]
            stacked[(f"experts.{param}", per_expert[-1] if per_expert else 1,
                     math.prod(per_expert[:-1]), shape[0] if shape else 1)] += 1
        else:
            stacked[(f"experts.{param}", shape[-1], math.prod(shape[:-1]), 1)] += 1
    # per-expert tensors were counted once per expert: fold them into stacks of `count` experts
    for key in [k for k in stacked if k[0].startswith("experts.") and k[3] == 1]:
        tensors = stacked.pop(key)
        name, inn, out, _ = key
        if tensors % count == 0:
            stacked[(name, inn, out, count)] += tensors // count
        else:
            stacked[(name, inn, out, 1)] += tensors
    inter = field(config, "moe_intermediate_size", "expert_intermediate_size", "intermediate_size")
    if not isinstance(inter, int) or inter <= 0:
        raise ModelError("the weights hold experts but config.json names no expert MLP size "
                         "(moe_intermediate_size / intermediate_size)")
    shared = field(config, "shared_expert_intermediate_size", default=0)
    if not shared and isinstance(field(config, "n_shared_experts"), int):
        shared = config["n_shared_experts"] * inter
    return Experts(count, per_token, inter, int(shared or 0), len(indices))
