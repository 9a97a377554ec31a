"""The name rule shared by profiles, adapters, aliases and run ids: it becomes a directory name."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit)"


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERN.match(value) is not None
