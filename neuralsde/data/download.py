"""Fetch dataset files once, verify their sha256, and never keep a bad or half-written file.

Layout: every dataset lives in ``data_dir/<name>/`` (``<name>`` is the dataset's folder, e.g.
``beijing_air_quality``). A file already there is verified and used without any network access,
which is how tests and CI supply data (``data_dir`` pointing at the shared folder).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.request
import uuid
import zipfile
from pathlib import Path

from neuralsde.atomic import atomic_write
from neuralsde.errors import DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so large files don't fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, sha256: str, downloaded: bool = False, downloadable: bool = True,
                fix: str | None = None) -> Path:
    """Check ``path`` against ``sha256``; on mismatch raise DataError, and put the file out of the way.

    A file this run just ``downloaded`` is deleted (an absent file is simply downloaded afresh next time). A file
    that was already there is the user's (placed by hand, perhaps a file that cannot be downloaded again, such as
    LOBSTER's, or an edited or re-encoded copy): it is renamed to ``<name>.sha256-<found hash>``, not deleted, so
    nothing is lost and the next run does not read it. ``downloadable``: whether the fix may say "run again";
    ``fix``: the fix to name instead.
    """
    path = Path(path)
    found = sha256_of(path)
    if found == sha256.lower():
        return path
    try:
        if downloaded:
            path.unlink()
            removed = "The downloaded file was deleted"
        else:
            aside = path.with_name(f"{path.name}.sha256-{found[:12]}")
            path.replace(aside)
            removed = f"The file was renamed to {aside} (kept, not deleted)"
    except OSError as err:  # e.g. a read-only mount: still refuse the data
        removed = f"The file could not be moved out of the way ({err}); move it by hand"
    fix = fix or ("run again to download a fresh copy, or replace the file with the published one" if downloadable
                  else "replace the file with the published one (it cannot be downloaded automatically)")
    raise DataError(f"{path}: sha256 mismatch, expected {sha256} but found {found}. {removed}. Fix: {fix}.")


def download_url(url: str, dest: Path, fix: str | None = None) -> None:
    """Download ``url`` to ``dest`` with a progress bar; ``dest`` appears only when complete.

    ``fix``: what the error of a failed download tells the user to do (default: place the file at ``dest``).
    Tests monkeypatch this function; nothing else in the package opens a network connection.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_write(dest) as out:
            total, received = int(resp.headers.get("Content-Length") or 0) or None, 0
            columns = (TextColumn(Path(url).name, markup=False), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task("download", total=total)
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    received += len(chunk)
                    progress.advance(task, len(chunk))
            if total is not None and received < total:
                # http.client ends a dropped connection's body early without an error: the short file was kept,
                # and only its checksum then failed, as "sha256 mismatch"
                raise ConnectionError(f"the connection closed after {received:,} of {total:,} bytes")
    except (OSError, http.client.HTTPException) as err:  # IncompleteRead (a chunked body cut short) is no OSError
        fix = fix or f"check the network, or download it by hand and place it at {dest}"
        raise DataError(f"Could not download {url}: {err}. Fix: {fix}.") from err


def _write_atomic(src, dest: Path) -> None:
    """Copy the open binary stream ``src`` to ``dest`` via a temp file, so ``dest`` is never partial."""
    with atomic_write(dest) as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            out.write(chunk)


def ensure_file(name: str, filename: str, url: str | None, sha256: str, data_dir: str | Path) -> Path:
    """Return ``data_dir/name/filename``, downloading it from ``url`` first if absent; always verified.

    ``url=None`` marks data that cannot be fetched automatically (e.g. behind a licence page): then a
    missing file is a DataError that says where to put it.
    """
    path = Path(data_dir) / name / filename
    if path.exists():
        return verify_file(path, sha256, downloadable=url is not None)
    if url is None:
        raise DataError(f"{path} not found and this file cannot be downloaded automatically. "
                        f"Fix: obtain it as described in the source's docstring and place it at {path}.")
    log.info("Downloading %s from %s", filename, url)
    download_url(url, path)
    return verify_file(path, sha256, downloaded=True)


def ensure_zip_members(name: str, members: dict[str, str], url: str, data_dir: str | Path) -> list[Path]:
    """Make sure every file in ``members`` (filename -> sha256) is in ``data_dir/name/``.

    If all are present they are verified and used (no network). Otherwise the members are extracted by base
    name (the zip may nest them in a folder) from the zip ``data_dir/name/<url's file name>`` if the user put it
    there (it is kept), else from the zip at ``url``, downloaded into the same folder and removed afterwards; each
    member is verified. Returns the paths in the order of ``members``.
    """
    folder = Path(data_dir) / name
    paths = [folder / fn for fn in members]
    if all(p.exists() for p in paths):
        return [verify_file(p, members[p.name]) for p in paths]
    present = {p for p in paths if p.exists()}  # the user's files: kept aside on a mismatch, not deleted
    archive = folder / Path(url).name
    # A zip placed by hand is used: the offline error below says to put it there, and it was downloaded over
    # (offline: the same error again, forever) and then deleted.
    by_hand, zip_path = archive.is_file(), archive
    replace_zip = f"replace {archive} (placed by hand) with the zip from {url}"
    if not by_hand:
        # Downloaded under a name of this run's own: runs fetching at once (a parallel sweep's first jobs) shared
        # one name, and the first to finish deleted the zip the others were about to open (FileNotFoundError).
        zip_path = folder / f".{archive.name}.{uuid.uuid4().hex[:12]}.download"
        log.info("Downloading %s from %s into %s", archive.name, url, folder)
        files = sorted(members)[0] + (f" and the {len(members) - 1} other files" if len(members) > 1 else "")
        download_url(url, zip_path, fix=f"check the network; or download the zip by hand and place it at {archive} "
                     f"(it is unpacked from there), or unpack {files} into {folder}")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            by_base = {Path(info.filename).name: info for info in zf.infolist() if not info.is_dir()}
            for path in paths:
                if path.exists():
                    continue
                if path.name not in by_base:
                    fix = replace_zip if by_hand else "check the URL"
                    raise DataError(f"{archive if by_hand else url}: member {path.name} not found in the zip "
                                    f"(it has {sorted(by_base)[:5]}...). Fix: {fix}.")
                with zf.open(by_base[path.name]) as src:
                    _write_atomic(src, path)
    except zipfile.BadZipFile as err:
        fix = replace_zip if by_hand else "run again to download it afresh"
        raise DataError(f"{archive if by_hand else url}: not a valid zip ({err}). Fix: {fix}.") from err
    finally:
        if not by_hand:
            zip_path.unlink(missing_ok=True)
    # A bad member of a zip placed by hand comes back from that zip on every run: "run again" would not fix it.
    return [verify_file(p, members[p.name], downloaded=p not in present,
                        fix=f"{replace_zip} (the file was unpacked from it)" if by_hand and p not in present else None)
            for p in paths]
