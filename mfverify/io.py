"""Atomic file writes: a reader never sees a half-written result."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def _file_mode() -> int:
    """What ``open(path, "w")`` would give: 0o666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600 whatever the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    return _atomic(path, lambda f: f.write(text.encode()))


def write_bytes(path, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def torch_bytes(obj) -> bytes:
    """What ``torch.save`` writes, as bytes (a worker's result, stored by the driver)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_torch(path, obj) -> Path:
    """``torch.save`` atomically."""
    return _atomic(path, lambda f: torch.save(obj, f))
