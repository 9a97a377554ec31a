"""Reading a written GGUF back and comparing it with what it was made from: every tensor, and the tokenizer.

Tensors are dequantized by the gguf package and compared with the source
tensor after the same transform: exactly for F32, F16 and BF16 (the cast is
exact to repeat), within Q8_0's rounding bound (0.6 of a block's step) for
Q8_0. The tokenizer is checked twice: the metadata against the transformers
tokenizer's table, and a byte-level BPE run from the GGUF metadata alone
(split pattern, tokens, merges, special tokens, as llama.cpp tokenizes)
against transformers' ids on sample texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.registry.errors import IntegrityError
from qlora_tui.registry.gguf_layout import tensor_data
from qlora_tui.registry.gguf_vocab import GPT2_PRE, KNOWN_SPLITS

SAMPLES = ["Add the two numbers.\n\n32 and 7", "Is the number even or odd?   14", "  leading and trailing  ",
           "Don't stop: it's 2024-06-01, isn't it?", "naïve café, 東京 and émoji 🙂", "tabs\tand\nnew\n\nlines"]
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


@dataclass
class GgufCheck:
    """What the read-back compared, the largest difference per tensor type, and anything that differed."""

    tensors: int = 0
    max_error: dict[str, float] = field(default_factory=dict)
    tokenizer: str = ""
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "max_error": self.max_error, "tokenizer": self.tokenizer,
                "problems": self.problems}


def field_value(reader: Any, key: str) -> Any:
    found = reader.get_field(key)
    return None if found is None else found.contents()


def _bound(expected: Any, qtype: Any) -> Any:
    """The largest error each element may have after quantizing to qtype."""
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.Q8_0:
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        blocks = np.abs(expected.reshape(-1, block)).max(axis=1, keepdims=True) / 127.0
        return np.broadcast_to(blocks * 0.6 + 1e-7, (blocks.shape[0], block)).reshape(expected.shape)
    return np.zeros_like(expected)


def _reference(expected: Any, qtype: Any) -> Any:
    """The values an exact cast gives (F16, BF16), or the source itself (F32, and the quantized types)."""
    import gguf
    import numpy as np
    import torch

    if qtype == gguf.GGMLQuantizationType.F16:
        return expected.astype(np.float16).astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.BF16:
        return torch.from_numpy(np.ascontiguousarray(expected)).to(torch.bfloat16).to(torch.float32).numpy()
    return expected


def check_file(path: Path, plan: list[Any], config: dict[str, Any], vocab: Any, arch: str) -> GgufCheck:
    """Compare the file at `path` with `plan` (and `vocab`); raise IntegrityError naming what differs."""
    import gguf
    import numpy as np

    result = GgufCheck()
    reader = gguf.GGUFReader(str(path))
    if field_value(reader, gguf.Keys.General.ARCHITECTURE) != arch:
        result.problems.append(f"general.architecture is {field_value(reader, gguf.Keys.General.ARCHITECTURE)!r}")
    stored = {t.name: t for t in reader.tensors}
    expected_names = [p.gguf_name for p in plan]
    extra = sorted(set(stored) - set(expected_names))
    if extra:
        result.problems.append(f"tensors nobody asked for: {', '.join(extra[:5])}")
    handles: dict[Path, Any] = {}
    for planned in plan:
        tensor = stored.get(planned.gguf_name)
        if tensor is None:
            result.problems.append(f"{planned.gguf_name} is missing")
            continue
        if tensor.tensor_type != planned.qtype:
            result.problems.append(f"{planned.gguf_name} is {tensor.tensor_type.name}, not {planned.qtype.name}")
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(planned.shape)
        expected = np.asarray(tensor_data(planned, config, handles), dtype=np.float32).reshape(planned.shape)
        error = np.abs(values - _reference(expected, planned.qtype))
        if (error > _bound(expected, planned.qtype)).any():
            result.problems.append(f"{planned.gguf_name}: differs from its source by up to {float(error.max()):.3g}")
        name = planned.qtype.name
        result.max_error[name] = max(result.max_error.get(name, 0.0), float(error.max()) if error.size else 0.0)
        result.tensors += 1
    if vocab is not None:
        result.tokenizer = check_tokenizer(reader, vocab, vocab.source, result.problems)
    if result.problems:
        shown = "; ".join(result.problems[:5]) + (f"; and {len(result.problems) - 5} more"
                                                   if len(result.problems) > 5 else "")
        raise IntegrityError(f"{path.name}: read back, it differs from its source: {shown}; it was not kept",
                             hint="please report this with the model's config.json")
    return result


def check_tokenizer(reader: Any, vocab: Any, model_dir: Path, problems: list[str]) -> str:
    """Metadata against the table it was made from; then a BPE from the metadata alone against transformers."""
    import gguf

    keys = gguf.Keys.Tokenizer
    expected = {keys.MODEL: vocab.model, keys.PRE: vocab.pre, keys.LIST: vocab.tokens, keys.TOKEN_TYPE: vocab.types,
                keys.ADD_BOS: vocab.add_bos, keys.ADD_EOS: vocab.add_eos}
    if vocab.merges:
        expected[keys.MERGES] = vocab.merges
    if vocab.chat_template:
        expected[keys.CHAT_TEMPLATE] = vocab.chat_template
    for kind, token_id in vocab.special_ids.items():
        expected[{"bos": keys.BOS_ID, "eos": keys.EOS_ID, "pad": keys.PAD_ID, "unk": keys.UNK_ID}[kind]] = token_id
    for key, value in expected.items():
        found = field_value(reader, key)
        if isinstance(value, list):
            found = list(found or [])
        if found != value:
            problems.append(f"{key} differs from the tokenizer's")
    if vocab.model != "gpt2":
        return f"{vocab.model}: {len(vocab.tokens)} tokens, metadata equal"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = list(SAMPLES)
    if vocab.chat_template:
        texts.append(tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count: pencil"}],
            tokenize=False, add_generation_prompt=True))
    bpe = GgufBpe(field_value(reader, keys.LIST), field_value(reader, keys.MERGES) or [],
                  field_value(reader, keys.TOKEN_TYPE), vocab.pre)
    for text in texts:
        theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
        ours = bpe.encode(text)
        if ours != theirs:
            problems.append(f"tokenizing {text[:30]!r} from the GGUF metadata gives {ours[:8]}..., transformers "
                            f"{theirs[:8]}...")
    return f"gpt2 ({vocab.pre}): {len(vocab.tokens)} tokens, {len(vocab.merges)} merges; {len(texts)} sample texts " \
           "tokenize the same from the GGUF metadata as with transformers"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class GgufBpe:
    """Byte-level BPE from GGUF metadata only: special tokens split first, then the pre-tokenizer's pattern,
    then merges by rank within each piece (what llama.cpp does for tokenizer.ggml.model "gpt2")."""

    def __init__(self, tokens: list[str], merges: list[str], types: list[int], pre: str) -> None:
        import regex

        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
        specials = [t for t, kind in zip(tokens, types) if kind in (3, 4)]  # CONTROL, USER_DEFINED
        self.special = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
                                     + ")") if specials else None
        pattern = GPT2_SPLIT if pre == GPT2_PRE else next(p for p, name in KNOWN_SPLITS.items() if name == pre)
        self.split = regex.compile(pattern)
        self.byte_map = _bytes_to_unicode()

    def _merge(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        chunks = self.special.split(text) if self.special else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.ids and self.special and self.special.fullmatch(chunk):
                out.append(self.ids[chunk])
                continue
            for piece in self.split.findall(chunk):
                word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
                out.extend(self.ids[p] for p in self._merge(word))
        return out
