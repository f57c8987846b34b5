"""Cache of prepared RawSeries, keyed by a preprocessing version and the options that produced it.

Where caches go: sources take ``cache_dir`` (default: their ``data_dir``) and write to
``cache_dir/<name>/prepared/``. If that folder cannot be written (a read-only data mount), the
series are built and returned uncached with a warning, so a read-only ``data_dir`` never fails a run;
point ``cache_dir`` at a writable folder (e.g. the project's ``datasets/``) to keep the speed-up.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from neuralsde.atomic import atomic_write
from neuralsde.data.base import RawSeries
from neuralsde.data.download import sha256_of

log = logging.getLogger(__name__)

# A file changed less than this long ago is not remembered: a second change within the filesystem's timestamp
# granularity (up to 2 s on FAT), at the same size, would leave its size and mtime as they were (git's racy-clean rule).
RACY_S = 2.0

_FIELDS = ("times", "values", "channel_names", "labels", "label_names", "window_start", "meta")


def options_hash(options: dict) -> str:
    """Short stable hash of JSON-able options (key order does not matter)."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path, name: str, options: dict) -> Path:
    """``cache_dir/name/prepared/<name>-<options hash>.pt``: one file per set of options."""
    return Path(cache_dir) / name / "prepared" / f"{name}-{options_hash(options)}.pt"


def _read(path: Path, version: int | str, key: str) -> RawSeries | None:
    """The cached series if ``path`` holds this version and options; None if absent, stale or corrupt."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        log.warning("Ignoring unreadable cache %s (%s); rebuilding.", path, err)
        return None
    if not isinstance(blob, dict) or blob.get("version") != version or blob.get("options_hash") != key:
        log.info("Cache %s is from another version or options; rebuilding.", path)
        return None
    return RawSeries(**{f: blob["raw"][f] for f in _FIELDS})


def write_atomic(path: Path, blob: dict) -> None:
    """torch.save ``blob`` to ``path`` via a temp file in the same folder and ``os.replace``.

    A crash mid-write leaves at most a stray ``*.part`` temp file, never a truncated cache.
    """
    with atomic_write(path) as fh:
        torch.save(blob, fh)


def cached(path: str | Path, version: int | str, build_fn: Callable[[], RawSeries],
           options: dict | None = None) -> RawSeries:
    """Load the RawSeries stored at ``path``, or call ``build_fn()`` and store its result.

    A cache written by another ``version`` (bump it whenever preprocessing changes) or with other
    ``options`` (stored as a hash of the source's keyword arguments) is rebuilt, not reused.
    Returns the RawSeries; shapes as ``build_fn`` produced them, ``values`` ``(N, T, C)``.
    """
    path = Path(path)
    key = options_hash(options or {})
    raw = _read(path, version, key)
    if raw is not None:
        return raw
    raw = build_fn()
    blob = {"version": version, "options_hash": key, "options": json.dumps(options or {}, default=str),
            "raw": {f: getattr(raw, f) for f in _FIELDS}}
    try:
        locked = marked_read_only(path.parent)
        if locked is not None:
            raise PermissionError(f"{locked} is marked read-only (no write permission bits)")
        write_atomic(path, blob)
    except OSError as err:  # read-only data_dir: still return the data
        # the full key: a bare cache_dir=... on the command line is no option Hydra knows
        log.warning("Could not write cache %s (%s); continuing without it, so the data are prepared again on every "
                    "run. Fix: set data.source.cache_dir to a writable folder, e.g. data.source.cache_dir=datasets.",
                    path, err)
    return raw


def marked_read_only(folder: Path) -> Path | None:
    """The nearest existing folder at or above ``folder`` if its mode grants nobody write access, else None.
    Root may write there regardless (a container running as root wrote caches into a shared dataset mount marked
    ``r-x``); such a mark is taken as the owner's wish that nothing be written."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate if not candidate.stat().st_mode & 0o222 else None
    return None


def file_sha256(path: str | Path, memo: str | Path) -> str:
    """sha256 of ``path``'s contents, remembered in the JSON file ``memo`` under the resolved path with the file's
    size and mtime_ns: hashed again only when one of those changes (a source that keys its cache on the contents of
    the user's files, which can be gigabytes, hashed them on every run). An unwritable ``memo`` only costs the hash."""
    path, memo = Path(path).resolve(), Path(memo)
    stat = path.stat()
    facts = [stat.st_size, stat.st_mtime_ns]
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):  # absent, unreadable or cut short: everything is hashed afresh
        known = {}
    entry = known.get(str(path)) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("facts") == facts:
        return entry["sha256"]
    digest = sha256_of(path)
    if time.time_ns() - stat.st_mtime_ns > RACY_S * 1e9:
        known = known if isinstance(known, dict) else {}
        known[str(path)] = {"facts": facts, "sha256": digest}
        try:
            if marked_read_only(memo.parent) is not None:
                raise PermissionError(f"{memo.parent} is marked read-only")
            with atomic_write(memo) as fh:
                fh.write(json.dumps(known, indent=1).encode())
        except OSError as err:
            log.debug("Could not remember file hashes in %s (%s).", memo, err)
    return digest
