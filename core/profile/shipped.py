"""Finding profiles: the ones qlora-tui ships and the user's own under the data home."""

from __future__ import annotations

from pathlib import Path

from qlora_tui.core.home import user_profiles_dir


def shipped_profiles_dir() -> Path:
    """profiles/ beside core/: in a source checkout and, as qlora_tui/profiles, once installed."""
    return Path(__file__).resolve().parents[2] / "profiles"


def list_profiles(home: Path) -> list[tuple[str, Path]]:
    """(origin, path) of every profile, shipped first, each group sorted by name."""
    found: list[tuple[str, Path]] = []
    for origin, folder in (("shipped", shipped_profiles_dir()), ("user", user_profiles_dir(home))):
        if folder.is_dir():
            found += [(origin, p) for p in sorted(folder.glob("*.toml"))]
    return found


def find_profile(value: str, home: Path) -> Path:
    """A path as given, else a shipped or user profile by file name or stem (so `run demo` works)."""
    path = Path(value).expanduser()
    if path.exists() or path.suffix == ".toml" and "/" in value:
        return path
    for _origin, candidate in list_profiles(home):
        if value in (candidate.name, candidate.stem):
            return candidate
    return path
