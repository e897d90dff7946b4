"""Per-cell zero and scale of the load cells, persisted in the data folder.

The file is written atomically (temporary file, fsync, rename), so a power cut leaves either the old
or the new calibration, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capsight_edge.durable import make_dirs
from capsight_edge.errors import CalibrationError

FILENAME = "calibration.json"


@dataclass
class Calibration:
    zero_counts: list[float]
    counts_per_gram: list[float]
    updated_utc: str = ""
    history: list[dict[str, object]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return len(self.counts_per_gram)

    @classmethod
    def default(cls, counts_per_gram: Sequence[float]) -> Calibration:
        return cls([0.0] * len(counts_per_gram), list(counts_per_gram))

    def cell_grams(self, counts: Sequence[float]) -> list[float]:
        return [
            (c - z) / k
            for c, z, k in zip(counts, self.zero_counts, self.counts_per_gram, strict=True)
        ]

    def grams(self, counts: Sequence[float]) -> float:
        return sum(self.cell_grams(counts))

    def tare(self, zero_counts: Sequence[float]) -> None:
        if len(zero_counts) != self.channels:
            raise CalibrationError(
                f"tare gave {len(zero_counts)} channels, calibration has {self.channels}"
            )
        self.zero_counts = [float(z) for z in zero_counts]
        self._note("tare", zero_counts=list(self.zero_counts))

    def scale_to_known(
        self, counts: Sequence[float], known_g: float, cell: int | None = None
    ) -> None:
        """A known weight lies on the platform (or on one ``cell``'s corner) and ``counts`` are
        the settled readings: rescale so it reads ``known_g``."""
        if known_g <= 0:
            raise CalibrationError(f"known weight must be positive, not {known_g}")
        if cell is None:
            measured = self.grams(counts)
            if measured <= known_g * 0.05:
                raise CalibrationError(
                    f"the platform reads {measured:.1f} g with {known_g} g "
                    "on it: is the weight on the cart, and was it tared empty?"
                )
            factor = measured / known_g
            self.counts_per_gram = [k * factor for k in self.counts_per_gram]
        else:
            if not 0 <= cell < self.channels:
                raise CalibrationError(f"cell {cell} does not exist (0..{self.channels - 1})")
            delta = counts[cell] - self.zero_counts[cell]
            if abs(delta) < known_g * 0.05:
                raise CalibrationError(
                    f"cell {cell} moved only {delta:.0f} counts under "
                    f"{known_g} g: is the weight over that corner?"
                )
            self.counts_per_gram[cell] = delta / known_g
        self._note("scale", known_g=known_g, cell=cell, counts_per_gram=list(self.counts_per_gram))

    def _note(self, action: str, **info: object) -> None:
        self.updated_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.history = [*self.history[-19:], {"action": action, "utc": self.updated_utc, **info}]

    # -- persistence ---------------------------------------------------------------------------
    def save(self, data_dir: str | os.PathLike[str]) -> Path:
        folder = make_dirs(Path(os.path.expanduser(data_dir)))
        path = folder / FILENAME
        payload = json.dumps(
            {
                "version": 1,
                "zero_counts": self.zero_counts,
                "counts_per_gram": self.counts_per_gram,
                "updated_utc": self.updated_utc,
                "history": self.history,
            },
            indent=2,
        )
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=folder)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(
        cls, data_dir: str | os.PathLike[str], default_counts_per_gram: Sequence[float]
    ) -> Calibration:
        """The stored calibration, or the profile's defaults when none is stored yet."""
        path = Path(os.path.expanduser(data_dir)) / FILENAME
        if not path.exists():
            return cls.default(default_counts_per_gram)
        try:
            raw = json.loads(path.read_text())
            zero = [float(v) for v in raw["zero_counts"]]
            cpg = [float(v) for v in raw["counts_per_gram"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(
                f"{path}: unreadable calibration ({exc}); move it away and calibrate again"
            ) from exc
        if len(zero) != len(cpg) or len(cpg) != len(default_counts_per_gram):
            raise CalibrationError(
                f"{path}: stores {len(cpg)} cells, the profile has {len(default_counts_per_gram)}"
            )
        if any(k == 0 for k in cpg):
            raise CalibrationError(f"{path}: a counts_per_gram of 0")
        return cls(zero, cpg, str(raw.get("updated_utc", "")), list(raw.get("history", [])))
