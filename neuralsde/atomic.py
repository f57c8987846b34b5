"""Files written whole or not at all: into a temporary file beside the destination, renamed into place when done."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".part", fsync: bool = False):
    """Yield a binary file that becomes ``path`` when the block ends without error; on an error (or a crash) the
    previous ``path`` is untouched and the temporary file is removed (a crash leaves at most a stray ``.*suffix``).
    The file gets the permissions a plain ``open`` would give: ``mkstemp`` makes it 0600, which the rename would
    carry to a checkpoint or cache that others need to read. ``fsync``: on disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading it means setting it
    os.umask(mask)
    return mask
