"""Byte transports for the MCU link. The link only needs open/read/write/close.

:class:`SerialTransport` wraps pyserial and accepts device paths (``/dev/ttyACM0``, a pty slave,
``/dev/serial/by-id/...``) and pyserial URLs (``loop://``). pyserial has no reconnect: the link
owns the retry loop and calls :meth:`open` again after a failure.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol


class TransportError(OSError):
    """The port could not be opened, or failed while in use (unplugged, permission, I/O)."""


class Transport(Protocol):
    name: str

    def open(self) -> None: ...

    @property
    def is_open(self) -> bool: ...

    def close(self) -> None: ...

    def read(self, max_bytes: int) -> bytes:
        """Return what arrived (possibly b"" after a short timeout); raise TransportError when the
        port is gone."""
        ...

    def write(self, data: bytes) -> None: ...


class SerialTransport:
    def __init__(self, port: str, baud: int = 921600, timeout_s: float = 0.05) -> None:
        self.name = port
        self.baud = baud
        self.timeout_s = timeout_s
        self._serial: Any = None

    def open(self) -> None:
        import serial  # lazy: pyserial is an edge extra

        self.close()
        try:
            # dsrdtr/rtscts off: toggling DTR on open resets many Arduino-class boards.
            self._serial = serial.serial_for_url(
                self.name,
                baudrate=self.baud,
                timeout=self.timeout_s,
                write_timeout=1.0,
                dsrdtr=False,
                rtscts=False,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"cannot open {self.name}: {exc}") from exc

    @property
    def is_open(self) -> bool:
        return self._serial is not None and self._serial.is_open

    def close(self) -> None:
        if self._serial is not None:
            # Closing a vanished port may fail again; it is closed anyway.
            with contextlib.suppress(Exception):
                self._serial.close()
            self._serial = None

    def read(self, max_bytes: int) -> bytes:
        import serial

        if self._serial is None:
            raise TransportError(f"{self.name} is not open")
        try:
            waiting = self._serial.in_waiting
            data: bytes = self._serial.read(min(max(waiting, 1), max_bytes))
            return data
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial's own state after the fd vanished mid-call.
            raise TransportError(f"{self.name}: read failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        import serial

        if self._serial is None:
            raise TransportError(f"{self.name} is not open")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            raise TransportError(f"{self.name}: write failed: {exc}") from exc
