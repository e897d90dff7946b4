"""What the device wheelhouse carries (``benchmarks/device/wheelhouse.sh``): the distributions
the device benchmarks import on a GPU host without network, with everything they require in
turn, less what that host's image already has. The closure is taken from this environment's
installed metadata (the suite's pins, ``constraints.txt``) with the requirement markers read for
the host's Python; ``python -m benchmarks.wheelhouse --python 3.12`` prints one pin a line.

Listing the wheels by hand left out what a package requires without the project importing it
by name: uvicorn's ``click``, python-tuf's ``urllib3``. A host image that happened to have them
hid that; one that does not would have stopped the sink, and with it ``inference_regression``,
as ``sqlite-utils`` once did (README, "What a GPU host showed")."""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

#: What the device benchmarks (``encoders``, ``inference_regression``, ``gpu_inference``) import
#: beyond the standard library and the host's image: the cart's code (PyAV, the bundle's files,
#: the sensors it opens), the TUF-verified model pull of the ModelRuntime pair, and the sink it
#: pulls from (on SQLite and a local folder: neither boto3 nor psycopg is imported).
ROOTS = (
    "av",
    "pydantic",
    "zstandard",
    "lz4",
    "mcap",
    "pyserial",
    "smbus2",
    "pynmea2",
    "tomli-w",
    "tuf",
    "cryptography",
    "zxing-cpp",
    "starlette",
    "uvicorn",
    "prometheus-client",
)

#: What the GPU host's image has (the device tool's: a CUDA PyTorch image), with all they
#: require. onnxruntime-gpu is not among them, and its wheel (about 244 MiB) does not fit in a
#: device call: the GPU inference benchmark then runs the same network in PyTorch on CUDA.
HOST = (
    "numpy",
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "opencv-python-headless",
    "httpx",
    "rich",
    "matplotlib",
)


class WheelhouseError(RuntimeError):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _environment(python: str) -> dict[str, str]:
    """The marker environment of a CPython ``python`` (major.minor) on Linux x86_64."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }


def closure(names: tuple[str, ...] | list[str], python: str, *, strict: bool = True) -> set[str]:
    """``names`` and every distribution they require (their extras' requirements when a
    requirement names extras), for ``python``. ``strict``: a distribution not installed here is
    an error (its requirements are unknown); otherwise it is kept and not expanded."""
    env = _environment(python)
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(canonical(n), frozenset()) for n in names]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        seen.add(name)
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            if strict:
                raise WheelhouseError(
                    f"{name} is not installed here, so what it requires is unknown: "
                    "run this from the project's environment (./dev.sh setup)"
                ) from None
            continue
        for line in requires:
            req = Requirement(line)
            wanted = req.marker is None or any(
                req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
            )
            if wanted:
                todo.append((canonical(req.name), frozenset(req.extras)))
    return seen


def wheelhouse(python: str = "3.12") -> list[str]:
    """The distributions the wheelhouse carries, by canonical name."""
    return sorted(closure(ROOTS, python) - closure(HOST, python, strict=False))


def pins(names: list[str], constraints: Path = ROOT / "constraints.txt") -> list[str]:
    """``name==version`` for each of ``names``, from ``constraints``."""
    pinned = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pinned[canonical(name.split("[", 1)[0])] = f"{name.strip()}=={version.strip()}"
    missing = [n for n in names if n not in pinned]
    if missing:
        raise WheelhouseError(f"no pin in {constraints.name} for {', '.join(missing)}")
    return [pinned[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wheelhouse",
        description="Print the pins of the wheels the device benchmarks need on a GPU host "
        "beyond its image, one a line.",
    )
    parser.add_argument("--python", default="3.12", help="the host's Python (major.minor)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python {args.python!r}: give major.minor, such as 3.12")
    try:
        print("\n".join(pins(wheelhouse(args.python))))
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
