"""What the doctor reports: one :class:`Check` per thing probed, with a status and a remedy."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass
class Check:
    """One line of the doctor's report. A ``required`` check that fails makes the doctor (and
    the demo) stop with a non-zero exit."""

    name: str
    status: str
    detail: str
    remedy: str = ""
    required: bool = False
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def doctor_ok(checks: list[Check]) -> bool:
    """Nothing failed (the runner makes a failure of an optional device a warning)."""
    return not any(c.status == FAIL for c in checks)


def format_table(checks: list[Check]) -> str:
    rows = [("CHECK", "STATUS", "REQUIRED", "DETAIL", "REMEDY")]
    rows += [
        (c.name, c.status.upper(), "yes" if c.required else "no", c.detail, c.remedy)
        for c in checks
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w3 = min(max(len(r[3]) for r in rows), 70)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {r:<8}  {c:<{w3}}  {d}".rstrip() for a, b, r, c, d in rows]
    return "\n".join(lines)
