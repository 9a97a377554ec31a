"""Conversations through the tokenizer's chat template, as text or as ids, the one way every stage renders them.

Pre-flight, the data preview and the alignment measure must see the same text
the trainer trains on, so they share this rendering.
"""

from __future__ import annotations

from typing import Any

Turns = list[dict[str, str]]


def render(tokenizer: Any, turns: Turns, generation_prompt: bool) -> str:
    """The turns as the chat template writes them; `generation_prompt` ends with the assistant's cue."""
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def render_ids(tokenizer: Any, turns: Turns, generation_prompt: bool) -> list[int]:
    """`render`'s text as token ids, with no special tokens added (the template writes its own)."""
    return list(tokenizer(render(tokenizer, turns, generation_prompt), add_special_tokens=False)["input_ids"])
