"""Load and validate hardware profiles.

Every problem becomes one :class:`ProfileError` naming the file, the dotted key path and what was
expected; nothing else escapes (no ``KeyError``, no ``TOMLDecodeError``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from capsight_edge.errors import ProfileError
from capsight_edge.profile.schema import Profile
from capsight_edge.triggers.expr import RuleSyntaxError, parse_rule

ENV_VAR = "CAPSIGHT_PROFILE"
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
_MAX_EXTENDS_DEPTH = 8


def default_profile_path() -> Path:
    """``$CAPSIGHT_PROFILE``, else ``hw_profiles/sim.toml`` here, else the one shipped in the
    package."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    local = Path("hw_profiles/sim.toml")
    if local.is_file():
        return local
    import hw_profiles

    return hw_profiles.path("sim")


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ProfileError(str(path), "", "file not found", "a TOML hardware profile")
    if not path.is_file():
        raise ProfileError(str(path), "", "not a regular file", "a TOML hardware profile")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(str(path), "", f"not valid TOML: {exc}") from exc
    except RecursionError:
        raise ProfileError(str(path), "", "nested too deeply", "a flat profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), "", f"cannot be read: {exc}") from exc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (arrays included) replaces the base's."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _raw_with_extends(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        names = " -> ".join(str(p) for p in (*chain, resolved))
        raise ProfileError(str(path), "extends", f"extends itself in a cycle ({names})")
    if len(chain) >= _MAX_EXTENDS_DEPTH:
        raise ProfileError(
            str(path),
            "extends",
            "extends chain is too deep",
            f"at most {_MAX_EXTENDS_DEPTH} levels",
        )
    raw = _read_toml(path)
    parent = raw.get("extends", "")
    if parent == "":
        return raw
    if not isinstance(parent, str):
        raise ProfileError(str(path), "extends", f"is {_kind(parent)}", "a file path string")
    parent_path = (path.parent / parent) if not os.path.isabs(parent) else Path(parent)
    if not parent_path.is_file():
        raise ProfileError(
            str(path),
            "extends",
            f"file not found: {parent_path}",
            "a path relative to this profile",
        )
    base = _raw_with_extends(parent_path, (*chain, resolved))
    base.pop("name", None)
    return _merge(base, raw)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str, expected: str = "") -> typing.NoReturn:
        raise ProfileError(self.path, key, problem, expected)

    def build(self, cls: type, raw: Any, key: str) -> Any:
        if not isinstance(raw, dict):
            self.fail(key, f"is {_kind(raw)}", "a table")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        for name in raw:
            if name not in fields:
                known = ", ".join(sorted(fields))
                self.fail(_join(key, name), "unknown key", f"one of: {known}")
        values = {}
        for name, value in raw.items():
            values[name] = self.value(hints[name], value, _join(key, name), fields[name].metadata)
        return cls(**values)

    def value(self, hint: Any, value: Any, key: str, meta: typing.Mapping[str, Any]) -> Any:
        origin = typing.get_origin(hint)
        if origin is list:
            (item_hint,) = typing.get_args(hint)
            if not isinstance(value, list):
                self.fail(key, f"is {_kind(value)}", "an array")
            if len(value) < meta.get("min_items", 0):
                self.fail(key, f"has {len(value)} items", f"at least {meta['min_items']}")
            item_meta = {
                k.removeprefix("item_"): v for k, v in meta.items() if k.startswith("item_")
            }
            return [self.value(item_hint, v, f"{key}[{i}]", item_meta) for i, v in enumerate(value)]
        if dataclasses.is_dataclass(hint):
            return self.build(typing.cast(type, hint), value, key)
        value = self.scalar(hint, value, key)
        self.constraints(value, key, meta)
        return value

    def scalar(self, hint: Any, value: Any, key: str) -> Any:
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(key, f"is {_kind(value)}", "true or false")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"is {_kind(value)}", "an integer")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(key, f"is {_kind(value)}", "a number")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                self.fail(key, f"is {_kind(value)}", "a string")
            return value
        raise TypeError(f"schema uses an unsupported type {hint!r} at {key}")

    def constraints(self, value: Any, key: str, meta: typing.Mapping[str, Any]) -> None:
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            self.fail(key, f"is {value!r}", "one of " + ", ".join(repr(c) for c in choices))
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = (
                f"between {lo} and {hi}"
                if lo is not None and hi is not None
                else f">= {lo}"
                if lo is not None
                else f"<= {hi}"
            )
            self.fail(key, f"is {value} (out of range)", rng)
        pattern = meta.get("pattern")
        if pattern is not None and not re.match(pattern, value):
            self.fail(key, f"is {value!r}", f"a value matching {pattern}")
        if meta.get("time") and not _TIME.match(value):
            self.fail(key, f"is {value!r}", "a time HH:MM between 00:00 and 24:00")
        if meta.get("rule"):
            try:
                parse_rule(value)
            except RuleSyntaxError as exc:
                self.fail(
                    key,
                    f"is not a valid rule: {exc}",
                    "an expression such as 'hand_motion & barcode'",
                )


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _cross_checks(profile: Profile, path: str, base_dir: Path) -> None:
    def fail(key: str, problem: str, expected: str = "") -> typing.NoReturn:
        raise ProfileError(path, key, problem, expected)

    st = profile.storage
    if st.low_watermark_pct >= st.high_watermark_pct:
        fail(
            "storage.low_watermark_pct",
            f"is {st.low_watermark_pct}, not below high_watermark_pct ({st.high_watermark_pct})",
            "low < high",
        )
    lc = profile.load_cells
    if len(lc.counts_per_gram) != lc.count:
        fail(
            "load_cells.counts_per_gram",
            f"has {len(lc.counts_per_gram)} values for {lc.count} cells",
            "one value per cell (load_cells.count)",
        )
    for i, win in enumerate(profile.upload.windows):
        if win.start >= win.end:
            fail(
                f"upload.windows[{i}].end",
                f"is {win.end}, not after start {win.start}",
                "end later than start (split windows that cross midnight in two)",
            )
    names = [t.name for t in profile.triggers]
    for i, t in enumerate(profile.triggers):
        if not t.name:
            fail(f"triggers[{i}].name", "is missing", "a rule name")
        if not t.when:
            fail(f"triggers[{i}].when", "is missing", "a rule expression")
        if t.name in names[:i]:
            fail(f"triggers[{i}].name", f"{t.name!r} is used twice", "unique rule names")
        if t.preroll_s and t.preroll_s <= profile.encoder.gop_s:
            fail(
                f"triggers[{i}].preroll_s",
                f"is {t.preroll_s}, not longer than encoder.gop_s ({profile.encoder.gop_s})",
                "a pre-roll longer than the keyframe interval",
            )
    cam = profile.camera
    if cam.source == "file":
        if not cam.replay_path:
            fail("camera.replay_path", "is empty while camera.source = 'file'", "a video file")
        replay = Path(cam.replay_path)
        replay = replay if replay.is_absolute() else base_dir / replay
        if not replay.is_file():
            fail("camera.replay_path", f"file not found: {replay}", "an existing video file")


def load_profile(
    path: str | os.PathLike[str] | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> Profile:
    """Read, merge (``extends``) and validate a profile. ``data_dir`` overrides
    ``storage.data_dir`` (the CLI's ``--data``)."""
    p = Path(path) if path is not None else default_profile_path()
    raw = _raw_with_extends(p)
    raw.pop("extends", None)
    profile: Profile = _Validator(str(p)).build(Profile, raw, "")
    _cross_checks(profile, str(p), p.parent)
    storage = profile.storage
    if data_dir is not None:
        storage = dataclasses.replace(storage, data_dir=str(data_dir))
    return dataclasses.replace(profile, source_path=str(p), storage=storage)


def profile_as_dict(profile: Profile) -> dict[str, Any]:
    """The effective settings (defaults filled in) as plain data."""
    out = dataclasses.asdict(profile)
    out.pop("source_path", None)
    out.pop("extends", None)
    return out


def _drop_none(value: Any) -> Any:
    """TOML has no null: a setting that is ``None`` is left out (absent means its default)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def profile_as_toml(profile: Profile) -> str:
    """The effective settings as TOML that ``capsight profile check`` accepts again."""
    import tomli_w

    header = f"# effective settings of {profile.source_path} (defaults filled in)\n"
    return header + tomli_w.dumps(_drop_none(profile_as_dict(profile)))
