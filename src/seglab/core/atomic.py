"""Atomic file writes: nothing a user made is ever left half-written.

Every output seglab writes (checkpoints, metrics JSON, PNGs, caches, benchmark results) goes to
a temporary file in the target's folder, is flushed to disk, and is then renamed onto the
target, so a crash or Ctrl-C leaves either the old file or the new one, never a torn one.

Example:
    >>> atomic_write_text("runs/x/metrics.json", "{}")
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "remove_stale_temporaries"]


def atomic_write(path: str | Path, write_fn: Callable[[str], object]) -> Path:
    """Call ``write_fn(tmp_path)``, fsync, then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give them normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


#: The names :func:`atomic_write` gives its temporary files: ``.<target name>.<random>.tmp``.
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{6,}\.tmp")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (call it when no writer runs there)."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
