"""The shipped cart hardware profiles (TOML). ``path("sim")`` finds one by name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """The file of a shipped profile, e.g. ``path("rpi5")``."""
    return HERE / f"{name.removesuffix('.toml')}.toml"


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))
