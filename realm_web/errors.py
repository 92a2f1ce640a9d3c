"""The exceptions realm_web raises. Every error a user can cause derives from RealmError."""

from __future__ import annotations


class RealmError(Exception):
    """Base class of every error realm_web raises on bad input or a failing device."""


class GGUFError(RealmError):
    """A GGUF file is malformed or uses something realm_web does not support.

    The message names what is wrong and where: a byte offset, a metadata key or a tensor name.
    """

    def __init__(self, message: str, *, offset: int | None = None, tensor: str | None = None):
        where = []
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.offset = offset
        self.tensor = tensor


class SourceError(RealmError):
    """A byte source (file, URL) could not be read: missing file, HTTP error, short read."""


class DeviceError(RealmError):
    """No usable GPU adapter, a device that was lost, or a request beyond the device's limits."""


class DeviceLostError(DeviceError):
    """The GPU device was lost (driver reset, GPU process crash, tab backgrounded too long, or destroyed).
    Everything on it is gone: load the model again on a new device."""


class OutOfMemoryError(DeviceError):
    """The device could not allocate a buffer: the model (or its context) does not fit in GPU memory."""
