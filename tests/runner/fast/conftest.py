"""Fixtures for the fast-path tests: tiny random models of each supported family, saved once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.runner.fast.tiny_models import save_random_model


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The directory of a tiny random model of `family`, written on first request."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = save_random_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return made[family]

    return get
