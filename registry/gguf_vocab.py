"""A model's tokenizer as GGUF metadata, so llama.cpp splits text into the same token ids as transformers.

Byte-level BPE tokenizers (GPT-2 style, the built-in tiny model's, Llama 3,
Qwen 2) become tokenizer.ggml.model "gpt2" with their tokens, merges and the
pre-tokenizer llama.cpp must use, named by the split pattern the tokenizer
declares; SentencePiece tokenizers (Llama 2, Mistral) become "llama" with
scores and token types read by the sentencepiece library. A tokenizer whose
pre-tokenizer llama.cpp is not known to reproduce is refused, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.registry.errors import RegistryError

# The split patterns of known pre-tokenizers (as tokenizer.json writes them) and llama.cpp's name for each.
CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
KNOWN_SPLITS = {CONTRACTIONS + r"\p{N}{1,3}" + REST: "llama-bpe", CONTRACTIONS + r"\p{N}" + REST: "qwen2"}
GPT2_PRE = "gpt-2"


@dataclass
class Vocab:
    """What goes into the GGUF about the tokenizer, and what the read-back check compares."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, pad, unk
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str = ""
    source: Path | None = None  # the directory it was read from (the read-back check tokenizes with it)


def byte_level_pre(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or a RegistryError naming what it is."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return GPT2_PRE
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        splits = [p for p in parts if p.get("type") == "Split"]
        byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(byte_level) == 1 and not byte_level[0].get("use_regex", True):
            pattern = (splits[0].get("pattern") or {}).get("Regex", "")
            if pattern in KNOWN_SPLITS:
                return KNOWN_SPLITS[pattern]
    raise RegistryError(
        f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) is not one qlora-tui knows how llama.cpp reproduces",
        hint="llama.cpp's convert_hf_to_gguf.py knows more tokenizers; it converts the merged model's directory")


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {}
    for kind in ("bos", "eos", "pad", "unk"):
        value = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(value, int):
            ids[kind] = value
    return ids


def _adds_bos_eos(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding plain text adds BOS at the start or EOS at the end (llama.cpp must do the same)."""
    ids = tokenizer("hello")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bool(ids) and bos is not None and ids[0] == bos, bool(ids) and eos is not None and ids[-1] == eos


def read_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    """The tokenizer of a model directory, as GGUF writes it; the table padded to the model's vocab_size."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer_file = model_dir / "tokenizer.json"
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    add_bos, add_eos = _adds_bos_eos(tokenizer)
    raw = json.loads(tokenizer_file.read_text(encoding="utf-8")) if tokenizer_file.is_file() else {}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if raw and backend is not None:
        # the pre-tokenizer transformers really runs: its class may replace the file's (Qwen2Tokenizer does)
        raw["pre_tokenizer"] = json.loads(backend.to_str()).get("pre_tokenizer")
    model_type = (raw.get("model") or {}).get("type")
    if model_type == "BPE" and not (raw.get("model") or {}).get("byte_fallback"):
        pre = byte_level_pre(raw)
        reverse = {i: t for t, i in tokenizer.get_vocab().items()}
        added = tokenizer.added_tokens_decoder
        tokens, types = [], []
        for i in range(vocab_size):
            if i not in reverse:
                tokens.append(f"[PAD{i}]")
                types.append(int(gguf.TokenType.UNUSED))
            elif i in added:
                tokens.append(reverse[i])
                types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
            else:
                tokens.append(reverse[i])
                types.append(int(gguf.TokenType.NORMAL))
        merges = gguf.SpecialVocab(model_dir, load_merges=True, special_token_types=()).merges
        return Vocab("gpt2", pre, tokens, types, merges=list(merges), special_ids=_special_ids(tokenizer),
                     add_bos=add_bos, add_eos=add_eos, chat_template=template, source=model_dir)
    if (model_dir / "tokenizer.model").is_file():
        return _sentencepiece_vocab(model_dir, vocab_size, tokenizer, add_bos, add_eos, template)
    raise RegistryError(f"{model_dir}: the tokenizer is neither byte-level BPE (tokenizer.json) nor SentencePiece "
                        "(tokenizer.model)", hint="llama.cpp's convert_hf_to_gguf.py knows more tokenizers")


def _sentencepiece_vocab(model_dir: Path, vocab_size: int, tokenizer: Any, add_bos: bool, add_eos: bool,
                         template: str) -> Vocab:
    """Llama 2 / Mistral style: pieces, scores and types as sentencepiece reports them (llama.cpp's "llama")."""
    import gguf

    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise RegistryError("this model's tokenizer is SentencePiece (tokenizer.model): reading it needs the "
                            "sentencepiece package", hint="pip install sentencepiece") from None
    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(model_dir / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        if i >= processor.vocab_size():
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(int(gguf.TokenType.UNUSED))
            continue
        tokens.append(processor.IdToPiece(i))
        scores.append(float(processor.GetScore(i)))
        kind = gguf.TokenType.NORMAL
        if processor.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(i):
            kind = gguf.TokenType.BYTE
        types.append(int(kind))
    for i, token in tokenizer.added_tokens_decoder.items():
        if i < vocab_size and i >= processor.vocab_size():
            tokens[i] = token.content
            types[i] = int(gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED)
    return Vocab("llama", "default", tokens, types, scores=scores, special_ids=_special_ids(tokenizer),
                 add_bos=add_bos, add_eos=add_eos, chat_template=template, source=model_dir)


def write_vocab(writer: Any, vocab: Vocab) -> None:
    """Put the tokenizer's metadata into a GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
               "unk": writer.add_unk_token_id}
    for kind, token_id in vocab.special_ids.items():
        setters[kind](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
