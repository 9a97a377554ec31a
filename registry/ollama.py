"""An Ollama Modelfile for an exported GGUF: FROM (and ADAPTER), the chat template as a Go template, stop tokens.

Ollama's TEMPLATE is a Go template, the tokenizer's is Jinja. A template that
wraps each message on its own (prefix + content + suffix per role, then a
generation prompt) is read off by rendering it with marker messages, and the
same pieces, put together again, must give the Jinja rendering of a whole
conversation back, or no TEMPLATE is written (Ollama then falls back on the
chat template stored in the GGUF) and the Modelfile says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MARK = "\x00MARK\x00"
CHECK_CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count: pencil"}]


@dataclass
class ChatPieces:
    """A chat template as text around each message, per role, and the generation prompt."""

    start: str
    wrap: dict[str, tuple[str, str]]
    generation: str

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text = self.start + "".join(self.wrap[m["role"]][0] + m["content"] + self.wrap[m["role"]][1]
                                    for m in messages)
        return text + (self.generation if add_generation_prompt else "")


def _render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool, specials: dict[str, str]
            ) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **specials)


def chat_pieces(template: str, specials: dict[str, str]) -> ChatPieces | None:
    """The template's pieces, or None when it is not one message after another (it would need Go logic)."""
    try:
        empty = _render(template, [], False, specials)
        wrap = {}
        for role in ROLES:
            text = _render(template, [{"role": role, "content": MARK}], False, specials)
            if not text.startswith(empty) or text.count(MARK) != 1:
                return None
            before, after = text[len(empty):].split(MARK)
            wrap[role] = (before, after)
        prompt = [{"role": "user", "content": MARK}]
        with_generation = _render(template, prompt, True, specials)
        without = _render(template, prompt, False, specials)
        if not with_generation.startswith(without):
            return None
        pieces = ChatPieces(empty, wrap, with_generation[len(without):])
        for add in (True, False):
            if pieces.render(CHECK_CONVERSATION, add) != _render(template, CHECK_CONVERSATION, add, specials):
                return None
    except Exception:  # a template that cannot render here (raise_exception, unknown filters): no TEMPLATE line
        return None
    return pieces


def go_string(text: str) -> str:
    """Text inside a Go template, with any "{{" kept literal."""
    return text.replace("{{", '{{"{{"}}')


def go_template(pieces: ChatPieces) -> str:
    """Ollama's TEMPLATE: each message wrapped by role, then the generation prompt when the last is not the
    assistant's."""
    branches = []
    for i, role in enumerate(ROLES):
        before, after = pieces.wrap[role]
        keyword = "if" if i == 0 else "else if"
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{go_string(before)}{{{{ .Content }}}}'
                        f'{go_string(after)}')
    return (f"{go_string(pieces.start)}{{{{ range $i, $_ := .Messages }}}}"
            f"{{{{- $last := eq (len (slice $.Messages $i)) 1 }}}}"
            + "".join(branches) + "{{ end }}"
            + f'{{{{- if and $last (ne .Role "assistant") }}}}{go_string(pieces.generation)}{{{{ end }}}}'
            + "{{- end }}")


def modelfile_text(model: Path, vocab: Any, adapter: Path | None, name: str = "Modelfile") -> str:
    """The Modelfile: paths relative to it when they sit beside it."""
    def where(path: Path) -> str:
        return f"./{path.name}"

    lines = [f"# Ollama Modelfile written by qlora-tui: ollama create NAME -f {name}", "",
             f"FROM {where(model)}"]
    if adapter is not None:
        lines.append(f"ADAPTER {where(adapter)}")
    tokens = vocab.tokens
    specials = {f"{k}_token": tokens[i] for k, i in vocab.special_ids.items() if 0 <= i < len(tokens)}
    pieces = chat_pieces(vocab.chat_template, specials) if vocab.chat_template else None
    if pieces is not None:
        lines += ["", f'TEMPLATE """{go_template(pieces)}"""']
    elif vocab.chat_template:
        lines += ["", "# The chat template could not be written as a Go template; Ollama reads the one stored in "
                      "the GGUF (tokenizer.chat_template)."]
    else:
        lines += ["", "# The tokenizer has no chat template: prompts are sent as they are."]
    eos = vocab.special_ids.get("eos")
    if eos is not None and 0 <= eos < len(tokens):
        lines.append(f"PARAMETER stop {json.dumps(tokens[eos])}")
    return "\n".join(lines) + "\n"


def write_modelfile(model: Path, vocab: Any, adapter: Path | None, name_after: Path | None = None) -> Path:
    """Write <stem>.Modelfile beside the GGUF it names (the adapter's, with --adapter-only)."""
    target = (name_after or adapter or model)
    path = target.with_name(f"{target.stem}.Modelfile")
    path.write_text(modelfile_text(model, vocab, adapter, path.name), encoding="utf-8")
    return path
