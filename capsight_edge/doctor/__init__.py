"""`capsight doctor`: see :mod:`capsight_edge.doctor.run`."""

from capsight_edge.doctor.report import FAIL, PASS, SKIP, WARN, Check, doctor_ok, format_table
from capsight_edge.doctor.run import AREAS, PROBES, run_doctor

__all__ = [
    "AREAS",
    "FAIL",
    "PASS",
    "PROBES",
    "SKIP",
    "WARN",
    "Check",
    "doctor_ok",
    "format_table",
    "run_doctor",
]
