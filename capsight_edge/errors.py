"""The one exception tree of capsight.

Every error we raise derives from :class:`CapsightError`, so an integrator can catch "anything from
capsight" in one clause. Foreign exceptions (``serial.SerialException``, ``OSError`` from smbus,
``sqlite3.Error``, ``httpx.TransportError``) are converted where they enter our code, with
``raise ... from exc`` so the original stays on ``__cause__``.
"""

from __future__ import annotations


class CapsightError(Exception):
    """Root of every error capsight raises."""


class ProfileError(CapsightError):
    """A hardware profile is missing, malformed or holds a value outside what is allowed.

    ``path`` is the file, ``key`` the dotted key path inside it (empty for file-level problems),
    ``expected`` what would have been accepted.
    """

    def __init__(self, path: str, key: str, problem: str, expected: str = "") -> None:
        self.path = path
        self.key = key
        self.problem = problem
        self.expected = expected
        where = f"{path}: {key}" if key else path
        text = f"{where}: {problem}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class DeviceError(CapsightError):
    """A device (serial link, I2C chip, camera) could not be opened or stopped answering."""


class DeviceUnavailable(DeviceError):
    """A device cannot be had: it is missing, held by another process, or not permitted.
    ``remedy`` says what a technician can do about it."""

    def __init__(self, message: str, *, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy


class DeviceBusy(DeviceUnavailable):
    """The device is reserved by another user: another part of this process, or another
    process (``holder`` says which, when it is known)."""

    def __init__(self, message: str, *, remedy: str = "", holder: str = "") -> None:
        super().__init__(message, remedy=remedy)
        self.holder = holder


class LinkError(DeviceError):
    """The MCU serial link is down or answered wrongly."""


class FrameError(CapsightError):
    """A frame (video or MCU link) is malformed."""


class EncoderUnavailable(CapsightError):
    """No encoder in the profile's preference list opens on this machine."""


class JournalError(CapsightError):
    """The capture journal could not record a transition."""


class UploadError(CapsightError):
    """An upload failed. ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ModelRejected(CapsightError):
    """A model failed verification (signature, hash, version or self-test) and was not loaded."""


class CalibrationError(CapsightError):
    """A scale calibration could not be computed or stored."""
