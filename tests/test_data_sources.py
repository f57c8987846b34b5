"""Data sources: real files from the shared folder, downloads and checksums, the cache, CSV input, generators.

No test touches the network: downloads are monkeypatched to write local bytes. Shared data are found via
``NEURALSDE_SHARED_DATA`` (default: ``shared/data`` beside the repository); tests needing an absent file skip.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch

from neuralsde.data import cache as cache_mod
from neuralsde.data import download
from neuralsde.data.air_quality import AirQualitySource, station_file
from neuralsde.data.base import RawSeries
from neuralsde.data.csv_source import CSVSource
from neuralsde.data.energy import EnergySource
from neuralsde.data.lobster import MESSAGE, ORDERBOOK, LobsterSource
from neuralsde.data.lorenz import LorenzSource
from neuralsde.data.stocks import GoogDailySource
from neuralsde.data.weights import WeightsSource
from neuralsde.errors import ConfigError, DataError

SHARED = Path(os.environ.get("NEURALSDE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def need(*relative: str) -> Path:
    """Skip the test (with the reason) unless every shared file is present."""
    for rel in relative:
        if not (SHARED / rel).is_file():
            pytest.skip(f"shared data file {SHARED / rel} is absent")
    return SHARED


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")
    monkeypatch.setattr("urllib.request.urlopen", refuse)


# ---- real sources ----------------------------------------------------------------------------------
# Per-station NA counts from beijing_air_quality/SOURCE.md (PM2.5, PM10, SO2, NO2, CO, O3).
NA_COUNTS = {"Aotizhongxin": [925, 718, 935, 1023, 1776, 1719], "Huairou": [953, 777, 980, 1639, 1422, 1151]}


def test_air_quality_shapes_and_missing_counts(tmp_path):
    stations = list(NA_COUNTS)
    data = need(*(f"beijing_air_quality/{station_file(s)}" for s in stations))
    raw = AirQualitySource(str(data), stations=stations, cache_dir=str(tmp_path)).load()
    dropped = sum(raw.meta["dropped_windows"].values())
    assert raw.values.shape == (2 * 1461 - dropped, 24, 6) and raw.times.tolist() == list(range(24))
    # Non-overlapping day windows cover every hour once; each dropped window was 24 hours of NA.
    expected = torch.tensor(NA_COUNTS["Aotizhongxin"]) + torch.tensor(NA_COUNTS["Huairou"]) - 24 * dropped
    assert torch.equal(torch.isnan(raw.values).sum((0, 1)), expected)
    assert raw.label_names == stations and set(raw.labels.tolist()) == {0, 1}
    assert (raw.window_start % 24 == 0).all()  # aligned at midnight
    assert 0 < dropped <= (637 + 658) // 24
    again = AirQualitySource(str(data), stations=stations, cache_dir=str(tmp_path)).load()  # from the cache
    assert torch.equal(torch.isnan(again.values), torch.isnan(raw.values))
    assert list((tmp_path / "beijing_air_quality" / "prepared").glob("*.pt"))


def test_air_quality_covariates(tmp_path):
    data = need(f"beijing_air_quality/{station_file('Dongsi')}")
    raw = AirQualitySource(str(data), stations=["Dongsi"], covariates=["TEMP", "WSPM"], stride=48,
                           use_cache=False).load()
    assert raw.values.shape[1:] == (24, 8) and raw.channel_names[-2:] == ["TEMP", "WSPM"]
    with pytest.raises(ConfigError, match="wd"):
        AirQualitySource(str(data), covariates=["wd"])


def test_stocks_windows():
    data = need("stock_goog_daily/stock_data.csv")
    raw = GoogDailySource(str(data)).load()
    assert raw.values.shape == (3685 - 24 + 1, 24, 6) and not torch.isnan(raw.values).any()
    assert raw.window_start.tolist()[:3] == [0, 1, 2]
    assert raw.values[0, 0, 3].item() == pytest.approx(49.845802)  # first day, not flipped
    small = GoogDailySource(str(data), stride=24, drop_adj_close=True, log_volume=True).load()
    assert small.values.shape == ((3685 - 24) // 24 + 1, 24, 5) and "Adj_Close" not in small.channel_names
    assert small.values[0, 0, -1].item() == pytest.approx(torch.tensor(44994500.0).log().item())
    rebased = GoogDailySource(str(data), rebase=True).load()
    assert rebased.channel_names == [f"{c}_rel" for c in ("Open", "High", "Low", "Close", "Adj_Close", "Volume")]
    assert torch.allclose(rebased.values[:, 0, 0], torch.ones(len(rebased.values)))  # every window opens at 1
    assert torch.allclose(rebased.values[:, :, :5] * raw.values[:, :1, :1], raw.values[:, :, :5], rtol=1e-5)
    assert torch.allclose(rebased.values[..., 5] * raw.values[:, :1, 5], raw.values[..., 5], rtol=1e-5)
    logs = GoogDailySource(str(data), log_volume=True, rebase=True).load()
    assert torch.equal(logs.values[:, 0, 5], torch.zeros(len(logs.values)))  # log volume less its first day's
    assert logs.values[..., 5].abs().max() < 10 < rebased.values[..., 5].max()  # ratios reach 864: log tames them


def test_lobster_bars(tmp_path):
    data = need(f"lobster_goog/{MESSAGE}", f"lobster_goog/{ORDERBOOK}")
    raw = LobsterSource(str(data), window_length=390, stride=390, cache_dir=str(tmp_path)).load()
    assert raw.values.shape == (1, 390, 2) and raw.meta["n_bars"] == 390
    assert not torch.isnan(raw.values).any()
    mid, log_spread = raw.values[0].unbind(-1)
    assert ((mid > 563) & (mid < 581)).all() and (log_spread < torch.log(torch.tensor(17.0))).all()
    windows = LobsterSource(str(data), cache_dir=str(tmp_path)).load()
    assert windows.values.shape == (361, 30, 2) and windows.times[-1].item() == 29
    assert torch.equal(windows.values[5], raw.values[0, 5:35])
    rebased = LobsterSource(str(data), cache_dir=str(tmp_path), rebase=True).load()
    assert rebased.channel_names == ["midpoint_change", "log_spread"]
    assert torch.equal(rebased.values[:, 0, 0], torch.zeros(361))  # each window starts at no change
    assert torch.allclose(rebased.values[..., 0] + windows.values[:, :1, 0], windows.values[..., 0])
    assert torch.equal(rebased.values[..., 1], windows.values[..., 1])


def test_lobster_missing_files_say_where(tmp_path):
    with pytest.raises(DataError, match="DataSamples.php"):
        LobsterSource(str(tmp_path)).load()


def test_lobster_files_that_do_not_cover_the_session_are_refused(tmp_path):
    """Other LOBSTER files are used unverified: the first 5,000 rows (events to 09:52) gave 361 windows, all but 20
    of them the last book state repeated; a session outside the file's hours ended in "shorter than window_length"."""
    data = need(f"lobster_goog/{MESSAGE}", f"lobster_goog/{ORDERBOOK}")
    folder = tmp_path / "lobster_goog"
    folder.mkdir()
    for name, short in ((MESSAGE, "m.csv"), (ORDERBOOK, "o.csv")):
        lines = (data / "lobster_goog" / name).read_text().splitlines(keepends=True)
        (folder / short).write_text("".join(lines[:5000]))
    files = {"message_file": "m.csv", "orderbook_file": "o.csv", "use_cache": False}
    with pytest.raises(DataError, match=r"run from 09:30:00 to 09:52:47, which does not cover the session 09:30:00-16"):
        LobsterSource(str(tmp_path), **files).load()
    raw = LobsterSource(str(tmp_path), session_end_s=35568, window_length=10, **files).load()  # its hours
    assert raw.values.shape == (14, 10, 2)
    with pytest.raises(DataError, match="which does not cover the session 00:00:00-00:01:40"):
        LobsterSource(str(tmp_path), session_start_s=0, session_end_s=100, **files).load()
    with pytest.raises(ConfigError, match="data.source.bar_minutes=0"):  # was a ZeroDivisionError
        LobsterSource(str(tmp_path), bar_minutes=0)


def _lobster_day(folder: Path, price_usd: float) -> dict:
    """LOBSTER files m.csv and o.csv in ``folder``: 10 minutes of events every 5 s at a constant book; the options
    that read them."""
    folder.mkdir(exist_ok=True)
    times = [34200 + 5 * i for i in range(120)]
    (folder / "m.csv").write_text("".join(f"{t},1,{i},100,{int(price_usd * 1e4)},1\n" for i, t in enumerate(times)))
    ask, bid = int((price_usd + 0.01) * 1e4), int((price_usd - 0.01) * 1e4)
    (folder / "o.csv").write_text(f"{ask},100,{bid},100\n" * len(times))
    return dict(message_file="m.csv", orderbook_file="o.csv", session_end_s=34800, window_length=10)


def test_lobster_cache_follows_the_contents_of_other_files(tmp_path):
    """Other LOBSTER files are used unverified, and the cache was keyed on their names alone: another day saved under
    the same names came back from the cache as the old day's bars."""
    folder = tmp_path / "lobster_goog"
    options = {**_lobster_day(folder, 500.0), "cache_dir": str(tmp_path / "cache")}
    assert torch.allclose(LobsterSource(str(tmp_path), **options).load().values[..., 0], torch.tensor(500.0))
    _lobster_day(folder, 600.0)  # another day under the same file names, with the cache warm
    assert torch.allclose(LobsterSource(str(tmp_path), **options).load().values[..., 0], torch.tensor(600.0))


def test_lobster_cache_hit_does_not_hash_the_files_again(tmp_path, monkeypatch):
    """The cache key is the files' sha256: every run hashed the user's files (LOBSTER days can be gigabytes), even
    when the cache answered. They are hashed again only when their size or mtime changes."""
    folder = tmp_path / "lobster_goog"
    options = {**_lobster_day(folder, 500.0), "cache_dir": str(tmp_path / "cache")}
    hashed = []
    monkeypatch.setattr(cache_mod, "sha256_of", lambda path: hashed.append(Path(path).name) or download.sha256_of(path))
    past = os.stat(folder / "m.csv").st_mtime_ns - 60 * 10**9  # older than the racy window: remembered
    for name in ("m.csv", "o.csv"):
        os.utime(folder / name, ns=(past, past))
    first = LobsterSource(str(tmp_path), **options).load()
    assert sorted(hashed) == ["m.csv", "o.csv"]
    hashed.clear()
    again = LobsterSource(str(tmp_path), **options).load()
    assert hashed == [] and torch.equal(again.values, first.values)
    _lobster_day(folder, 600.0)  # same sizes; a new mtime: hashed again, and the new day's bars
    changed = LobsterSource(str(tmp_path), **options).load()
    assert sorted(hashed) == ["m.csv", "o.csv"]
    assert torch.allclose(changed.values[..., 0], torch.tensor(600.0))
    hashed.clear()
    uncached = LobsterSource(str(tmp_path), **options, use_cache=False).load()  # no cache: no key to compute
    assert hashed == [] and torch.equal(uncached.values, changed.values)


def test_file_sha256_does_not_remember_a_file_changed_just_now(tmp_path, monkeypatch):
    """Two writes of the same size within one timestamp tick leave size and mtime as they were; a file this fresh is
    hashed on every call rather than remembered."""
    monkeypatch.setattr(cache_mod, "RACY_S", 600.0)  # "just now" even if a loaded machine stalls between lines
    path, memo = tmp_path / "f.csv", tmp_path / "memo.json"
    path.write_text("1,2\n")
    assert cache_mod.file_sha256(path, memo) == download.sha256_of(path)
    stat = path.stat()
    path.write_text("3,4\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same tick
    assert cache_mod.file_sha256(path, memo) == download.sha256_of(path)


def test_energy_drops_noise_columns():
    data = need("energy_appliances/energy_data.csv")
    raw = EnergySource(str(data), stride=100).load()
    assert raw.values.shape == ((19735 - 24) // 100 + 1, 24, 26)
    assert "rv1" not in raw.channel_names and "rv2" not in raw.channel_names


# ---- downloads and checksums -----------------------------------------------------------------------
def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_checksum_mismatch_sets_an_existing_file_aside_without_deleting_it(tmp_path):
    """A file already in data_dir is the user's (LOBSTER's cannot even be downloaded again): it was deleted."""
    bad = tmp_path / "ds" / "file.csv"
    bad.parent.mkdir()
    bad.write_bytes(b"corrupt")
    with pytest.raises(DataError, match="sha256 mismatch.*renamed to .*kept, not deleted.*run again") as err:
        download.ensure_file("ds", "file.csv", "https://example.invalid/file.csv", sha(b"good"), tmp_path)
    assert not bad.exists()  # the next run does not read it (and downloads a fresh copy)
    [kept] = bad.parent.glob("file.csv.sha256-*")
    assert kept.read_bytes() == b"corrupt" and str(kept) in str(err.value)
    bad.write_bytes(b"edited")  # a file that cannot be downloaded: the fix does not say "run again"
    with pytest.raises(DataError, match="cannot be downloaded automatically") as err:
        download.ensure_file("ds", "file.csv", None, sha(b"good"), tmp_path)
    assert "run again" not in str(err.value) and len(list(bad.parent.glob("file.csv.sha256-*"))) == 2


def test_download_then_verify(tmp_path, monkeypatch):
    payload = b"a,b\n1,2\n"
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(payload)

    monkeypatch.setattr(download, "download_url", fake_download)
    path = download.ensure_file("ds", "f.csv", "https://example.invalid/f.csv", sha(payload), tmp_path)
    assert path.read_bytes() == payload and len(calls) == 1
    download.ensure_file("ds", "f.csv", "https://example.invalid/f.csv", sha(payload), tmp_path)
    assert len(calls) == 1  # present and valid: no second download
    with pytest.raises(DataError, match="mismatch"):
        download.ensure_file("ds", "g.csv", "https://example.invalid/g.csv", sha(b"other"), tmp_path)
    assert not (tmp_path / "ds" / "g.csv").exists()


class CutResponse(io.BytesIO):
    """An HTTP response whose connection drops after ``body``: urllib returns it short, without an error."""
    def __init__(self, body: bytes, length: int, error: Exception | None = None):
        super().__init__(body)
        self.headers, self.error = {"Content-Length": str(length)}, error

    def read(self, size=-1):
        chunk = super().read(size)
        if not chunk and self.error is not None:
            raise self.error
        return chunk


@pytest.mark.parametrize("error", [None, http.client.IncompleteRead(b"", 60)])
def test_a_download_cut_short_says_so_and_leaves_nothing(tmp_path, monkeypatch, error):
    """A dropped connection's file was renamed into place and refused only as "sha256 mismatch" (urllib returns the
    body short); a chunked body's IncompleteRead, no OSError, escaped as a bare http.client traceback."""
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: CutResponse(b"x" * 40, 100, error))
    with pytest.raises(DataError, match=r"Could not download https://example.invalid/f.csv: .*(closed after 40 of "
                                        r"100 bytes|IncompleteRead).*Fix: check the network") as err:
        download.ensure_file("ds", "f.csv", "https://example.invalid/f.csv", sha(b"x" * 100), tmp_path)
    assert "mismatch" not in str(err.value) and list((tmp_path / "ds").iterdir()) == []


def test_zip_members_extracted_and_verified(tmp_path, monkeypatch):
    members = {"a.csv": b"x\n1\n", "b.csv": b"x\n2\n"}
    monkeypatch.setattr(download, "download_url", lambda url, dest, **_: dest.write_bytes(zip_of(members)))
    (tmp_path / "ds").mkdir()
    paths = download.ensure_zip_members("ds", {n: sha(c) for n, c in members.items()},
                                        "https://example.invalid/data.zip", tmp_path)
    assert [p.read_bytes() for p in paths] == list(members.values())
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["a.csv", "b.csv"]  # zip and temps gone


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in members.items():
            zf.writestr(f"folder/{name}", content)
    return buffer.getvalue()


def test_offline_zip_error_names_a_fix_that_works(tmp_path, monkeypatch):
    """Offline, the error said to place the zip at <folder>/<zip name> by hand; a zip put there was downloaded over
    (offline: the same error again) and deleted after unpacking. It is now used, and kept."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    members = {"a.csv": b"x\n1\n", "b.csv": b"x\n2\n"}
    sums, url = {n: sha(c) for n, c in members.items()}, "https://example.invalid/data.zip"
    archive = tmp_path / "ds" / "data.zip"
    with pytest.raises(DataError) as err:
        download.ensure_zip_members("ds", sums, url, tmp_path)
    said = str(err.value)
    assert f"Could not download {url}: " in said and "name resolution" in said
    assert f"place it at {archive} (it is unpacked from there), or unpack a.csv and the 1 other files into" in said
    assert not archive.parent.exists() or not any(archive.parent.iterdir())  # nothing half-written left
    archive.parent.mkdir(exist_ok=True)
    archive.write_bytes(zip_of(members))  # the fix, still offline
    paths = download.ensure_zip_members("ds", sums, url, tmp_path)
    assert [p.read_bytes() for p in paths] == list(members.values())
    assert archive.read_bytes() == zip_of(members)  # the user's zip is kept
    paths[1].unlink()
    archive.write_bytes(zip_of({**members, "b.csv": b"edited"}))  # a bad member comes back from it on every run
    with pytest.raises(DataError, match=rf"b.csv: sha256 mismatch.*Fix: replace {archive} \(placed by hand\) with "
                                        rf"the zip from {url} \(the file was unpacked from it\)") as err:
        download.ensure_zip_members("ds", sums, url, tmp_path)
    assert "run again" not in str(err.value) and not paths[1].exists() and paths[0].exists()


def test_two_runs_downloading_one_zip_at_once(tmp_path, monkeypatch):
    """A parallel sweep's first jobs fetch the zip together: they downloaded it under one name, and the first to
    finish unpacking deleted it before the other opened it (FileNotFoundError), or the other took it for a zip placed
    by hand and opened it just as it was deleted. Each run now downloads, unpacks and deletes its own."""
    members = {"a.csv": b"x\n1\n", "b.csv": b"x\n2\n"}
    sums, url = {n: sha(c) for n, c in members.items()}, "https://example.invalid/data.zip"
    calls = []

    def download_while_another_run_finishes(url, dest, **_):
        dest.write_bytes(zip_of(members))
        calls.append(dest)
        if len(calls) == 1:  # the other run downloads, unpacks and cleans up while this one is between steps
            download.ensure_zip_members("ds", sums, url, tmp_path)

    monkeypatch.setattr(download, "download_url", download_while_another_run_finishes)
    (tmp_path / "ds").mkdir()
    paths = download.ensure_zip_members("ds", sums, url, tmp_path)
    assert [p.read_bytes() for p in paths] == list(members.values()) and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["a.csv", "b.csv"]  # both zips gone


# ---- cache -------------------------------------------------------------------------------------------
def tiny(value: float) -> RawSeries:
    return RawSeries(torch.arange(3.0), torch.full((2, 3, 1), value), ["x"], window_start=torch.tensor([0, 1]))


def test_cache_rebuilds_other_version_or_options(tmp_path):
    path = tmp_path / "c.pt"
    builds = []

    def build(v):
        return lambda: builds.append(v) or tiny(v)

    assert cache_mod.cached(path, 1, build(1.0), {"a": 1}).values[0, 0, 0] == 1.0
    assert cache_mod.cached(path, 1, build(2.0), {"a": 1}).values[0, 0, 0] == 1.0  # reused
    assert cache_mod.cached(path, 2, build(3.0), {"a": 1}).values[0, 0, 0] == 3.0  # newer version: rebuilt
    assert cache_mod.cached(path, 2, build(4.0), {"a": 2}).values[0, 0, 0] == 4.0  # other options: rebuilt
    assert builds == [1.0, 3.0, 4.0]
    again = cache_mod.cached(path, 2, build(5.0), {"a": 2})
    assert torch.equal(again.window_start, torch.tensor([0, 1])) and again.channel_names == ["x"]
    path.write_bytes(b"truncated garbage")  # a corrupt cache is rebuilt, not an error
    assert cache_mod.cached(path, 2, build(6.0), {"a": 2}).values[0, 0, 0] == 6.0


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    cache_mod.cached(path, 1, lambda: tiny(1.0))
    before = path.read_bytes()

    def crash(obj, fh):
        fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        cache_mod.cached(path, 2, lambda: tiny(2.0))
    assert path.read_bytes() == before  # the old cache is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_cache_unwritable_dir_still_returns(tmp_path, monkeypatch, caplog):
    def fail(path, blob):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(cache_mod, "write_atomic", fail)
    with caplog.at_level("WARNING"):
        assert cache_mod.cached(tmp_path / "c.pt", 1, lambda: tiny(1.0)).values.shape == (2, 3, 1)
    said = [r.getMessage() for r in caplog.records if "Could not write cache" in r.getMessage()]
    assert len(said) == 1 and "read-only file system" in said[0]
    assert "Fix: set data.source.cache_dir to a writable folder" in said[0]



def test_cache_leaves_a_folder_marked_read_only_alone_even_for_root(tmp_path, caplog):
    """A container running as root wrote the prepared cache (and LOBSTER's hash memo) into a shared dataset folder
    whose mode was r-x: root's write succeeds whatever the mode says."""
    data = tmp_path / "shared"
    (data / "lobster_goog").mkdir(parents=True)
    (data / "lobster_goog" / "f.csv").write_text("1,2\n")
    os.utime(data / "lobster_goog" / "f.csv", (0, 0))  # old enough for the memo to remember it
    for folder in (data / "lobster_goog", data):
        folder.chmod(0o555)
    try:
        with caplog.at_level("WARNING"):
            raw = cache_mod.cached(data / "lobster_goog" / "prepared" / "c.pt", 1, lambda: tiny(1.0))
        digest = cache_mod.file_sha256(data / "lobster_goog" / "f.csv", data / "lobster_goog" / "prepared" / "m.json")
        assert raw.values.shape == (2, 3, 1) and len(digest) == 64
        assert sorted(p.name for p in data.rglob("*")) == ["f.csv", "lobster_goog"]  # nothing written
        said = [r.getMessage() for r in caplog.records if "Could not write cache" in r.getMessage()]
        assert len(said) == 1 and f"{data / 'lobster_goog'} is marked read-only" in said[0]
    finally:
        for folder in (data, data / "lobster_goog"):
            folder.chmod(0o755)
    cache_mod.cached(data / "lobster_goog" / "prepared" / "c.pt", 1, lambda: tiny(1.0))  # writable again: cached
    assert (data / "lobster_goog" / "prepared" / "c.pt").is_file()

# ---- CSV ---------------------------------------------------------------------------------------------
def write(tmp_path, text: str, name="data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_long_format_irregular_times(tmp_path):
    text = ("id,t,a,b,note\n"
            "s1,0.0,1.0,10,x\n" "s1,0.5,,11,x\n" "s1,2.0,3.0,NA,x\n"
            "s2,0.5,4.0,14,y\n" "s2,1.5,5.0,15,y\n")
    raw = CSVSource(write(tmp_path, text), time_column="t", id_column="id").load()
    assert raw.channel_names == ["a", "b"] and raw.meta["series_ids"] == ["s1", "s2"]
    assert raw.times.tolist() == [0.0, 0.5, 1.5, 2.0]
    nan = float("nan")
    expected = torch.tensor([[[1, 10], [nan, 11], [nan, nan], [3, nan]],
                             [[nan, nan], [4, 14], [5, 15], [nan, nan]]])
    assert torch.equal(torch.isnan(raw.values), torch.isnan(expected))
    assert torch.equal(raw.values.nan_to_num(-1), expected.nan_to_num(-1))


def test_csv_windows_of_one_series_with_datetimes(tmp_path):
    # Hourly readings with one missing hour (09:00) and a missing value: windows of 3 rows.
    stamps = ["2020-01-01 06:00", "2020-01-01 07:00", "2020-01-01 08:00", "2020-01-01 10:00", "2020-01-01 11:00"]
    values = ["1", "2", "", "4", "5"]
    text = "time,v\n" + "".join(f"{s},{v}\n" for s, v in zip(stamps, values, strict=True))
    raw = CSVSource(write(tmp_path, text), time_column="time", window_length=3).load()
    assert raw.window_start.tolist() == [0, 1, 2]
    assert raw.times.tolist() == [0.0, 1.0, 2.0, 3.0]  # union of offsets in hours
    assert raw.meta["window_start_time"].tolist() == [0.0, 1.0, 2.0]
    got = raw.values[..., 0].nan_to_num(-1).tolist()
    assert got == [[1, 2, -1, -1], [2, -1, -1, 4], [-1, -1, 4, 5]]
    plain = CSVSource(write(tmp_path, "v\n1\n2\n3\n4\n", "p.csv"), window_length=2, stride=2).load()
    assert plain.values[..., 0].tolist() == [[1, 2], [3, 4]] and plain.times.tolist() == [0, 1]


@pytest.mark.parametrize("text, options, message", [
    ("", {}, "empty"),
    ("a,b\n", {}, "no data rows"),
    ("t,a\n0,1\n1,2\n", {"time_column": "time"}, "'time' not found"),
    ("t,a\n0,1\n1,2\n", {"value_columns": ["b"]}, "'b' not found"),
    ("t,a\n0,1\n1,oops\n", {"time_column": "t", "value_columns": ["a"]}, "line 3: found 'oops', not a number"),
    ("t,a\n0,1\n1,2\n0.5,3\n", {"time_column": "t"}, r"goes backwards at line 4 \(0.5 after 1 at line 3\)"),
    ("id,t,a\nx,0,1\nx,0,2\n", {"time_column": "t", "id_column": "id"}, "series id='x': time repeats at line 3"),
    ("t,a\n0,1\n1,2\n", {"time_column": "t", "window_length": 3}, "shorter than data.source.window_length=3"),
    ("a,b\n1,\n,\n,\n2,\n", {"window_length": 2, "stride": 1, "value_columns": ["a"]},
     r"window 1 \(lines 3-4\) has every value missing"),
    ("a,b\n1,\n2,NA\n", {}, r"\['b'\] have no values"),
    ("a,b\n1,2\n3\n", {}, "line 3 has 1 fields but the header has 2"),
    ("a,b\n1,2,3\n", {}, "line 2 has 3 fields"),
    ('a,b\n1,"2\n', {}, "malformed CSV"),
    ("t,a\n0,1\nsoon,2\n", {"time_column": "t"}, "line 3: found 'soon'"),
    ("t,a\n2020-01-01,1\nsoon,2\n", {"time_column": "t"}, "line 3: found 'soon', neither a number nor a date-time"),
    ("id,t,a\nx,0,1\nx,1,2\ny,0.001,3\ny,0.002,4\n", {"time_column": "t", "id_column": "id", "max_union_factor": 1},
     "distinct times.*raise data.source.max_union_factor"),
])
def test_csv_bad_input(tmp_path, text, options, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=message) as err:
        CSVSource(path, **options).load()
    assert "Fix:" in str(err.value) and "data.csv" in str(err.value)


def test_csv_option_conflicts(tmp_path):
    with pytest.raises(ConfigError, match="both set"):
        CSVSource("x.csv", id_column="id", window_length=4)
    with pytest.raises(DataError, match="file not found"):
        CSVSource(str(tmp_path / "missing.csv")).load()


def test_csv_relative_path_not_found_says_where_it_was_looked_up(tmp_path, monkeypatch):
    """A run trained with data.source.path=data/x.csv keeps that relative path in its checkpoint; eval.py started
    from another directory said only "data/x.csv: file not found", though the file was there."""
    write(tmp_path, "a\n1\n2\n", "x.csv")
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(DataError, match=rf"x.csv: file not found \(a relative path, looked up from "
                                        rf"{re.escape(str(tmp_path.parent))}\)\. Fix: .*as an absolute path"):
        CSVSource("x.csv").load()
    assert CSVSource(f"{tmp_path.name}/x.csv").load().channel_names == ["a"]


def test_paths_expand_home_and_environment_variables(tmp_path, monkeypatch):
    """A quoted 'data.source.path="~/x.csv"' or a sweep's '$DATA/x.csv' reaches the source as typed (Hydra expands
    neither), and was looked up as a folder named ~ or $DATA in the current directory; paths.data_dir likewise."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    write(home / "d", "a\n1\n2\n", "x.csv")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DATA", str(home / "d"))
    monkeypatch.setenv("SUB", "d")
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    for typed in ("~/d/x.csv", "$DATA/x.csv", "${HOME}/d/x.csv"):
        assert CSVSource(typed).load().meta["path"] == str(home / "d" / "x.csv"), typed
    monkeypatch.chdir(home)
    assert CSVSource("$SUB/x.csv").load().meta["path"] == "d/x.csv"  # still relative to where it starts
    with pytest.raises(DataError, match=r"\$NO_SUCH_VAR/x.csv: file not found \(a relative path, looked up from .*\); "
                                        r"\$NO_SUCH_VAR not set in the environment\. Fix: set \$NO_SUCH_VAR, or"):
        CSVSource("$NO_SUCH_VAR/x.csv").load()
    data = need("stock_goog_daily/stock_data.csv")
    (home / "data").mkdir()
    (home / "data" / "stock_goog_daily").symlink_to(data / "stock_goog_daily")
    cfg = compose_config(["data=stocks", 'paths.data_dir="~/data"', "data.source.stride=24"])
    assert instantiate(cfg.data.source).load().values.shape == ((3685 - 24) // 24 + 1, 24, 6)
    options = dict(n_runs=1, n_weights=2, n_records=4, record_every=1, task="synthetic")
    WeightsSource(**options, cache_dir="~/cache").load()
    assert len(list((home / "cache" / "weights").rglob("*.pt"))) == 1



def test_csv_default_columns_refuse_a_bad_cell_rather_than_drop_the_column(tmp_path, caplog):
    """value_columns: null silently (at INFO) dropped a whole column of numbers for one bad cell, and trained on the
    other columns; with no other column the error blamed the delimiter."""
    text = "t,a,b,note\n" + "".join(f"{i},{i},{2 * i},x\n" for i in range(50)) + "50,51,#DIV/0!,y\n"
    with pytest.raises(DataError, match=r"column 'b', line 52: found '#DIV/0!', not a number.*"
                                        r"set data\.source\.value_columns"):
        CSVSource(write(tmp_path, text), time_column="t").load()
    with pytest.raises(DataError, match="line 3: found 'inf'"):
        CSVSource(write(tmp_path, "a\n1\ninf\n2\n", "inf.csv")).load()
    raw = CSVSource(write(tmp_path, text.replace("#DIV/0!", "NA")), time_column="t").load()
    assert raw.channel_names == ["a", "b"]  # the text column is left out, and says so
    assert "note" in caplog.text


@pytest.mark.parametrize("text, message", [
    # a typo in a numeric time column was reported at line 2 ("found '0', neither a number nor a date-time")
    ("t,a\n0,1\n1,2\n2,3\nsoon,4\n", "line 5: found 'soon', not a finite number"),
    ("t,a\n0,1\ninf,2\n2,3\n", "line 3: found 'inf', not a finite number"),
    # beyond float32 it became an infinity, refused as "values contain infinities" without a column or line
    ("t,a\n0,1\n1,1e39\n2,3\n", "column 'a', line 3: '1e39' is beyond float32's range"),
    # not ISO 8601: every row is read in the first row's layout
    ("t,a\n01/02/2020,1\n02/02/2020,2\n2020-13-13,3\n",
     r"line 4: found '2020-13-13', neither a number nor a date-time in the layout of line 2"),
])
def test_csv_bad_times_and_values_are_reported_where_they_are(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        CSVSource(write(tmp_path, text), time_column="t").load()


def test_csv_dates_are_read_in_one_layout(tmp_path):
    """format="mixed" guessed per row: 01/02/2020 became 2 January, 13/02/2020 13 February (1008 h apart)."""
    raw = CSVSource(write(tmp_path, "t,a\n01/02/2020,1\n13/02/2020,2\n"), time_column="t").load()
    assert raw.times.tolist() == [0.0, 12 * 24.0]  # both day first, as the second row shows
    raw = CSVSource(write(tmp_path, "t,a\n01/02/2020 10:00,1\n01/03/2020 10:00,2\n"), time_column="t").load()
    assert raw.times.tolist() == [0.0, 24.0]  # ambiguous throughout: month first, in every row


def test_normalising_large_values_keeps_them_apart():
    """Fitted in float32, the variance of values above 1.8e19 overflowed: scale inf, every value normalised to 0."""
    from neuralsde.data.preprocessing import Normalizer

    values = torch.tensor([1e20, 2e20, 3e20]).view(1, 3, 1)
    for kind in ("standard", "minmax"):
        out = Normalizer.fit(values, kind)(values).flatten()
        assert torch.isfinite(out).all() and out[0] < out[1] < out[2]


def test_csv_unix_timestamps_keep_their_spacing(tmp_path):
    """Float32 holds integers exactly only to 2**24: epoch seconds 300 apart came out 256 or 384 apart, and 60 apart
    as repeated times, refused as not increasing with no hint why."""
    for step in (60, 300):
        text = "t,a\n" + "".join(f"{1600000000 + step * i},{i}\n" for i in range(6))
        raw = CSVSource(write(tmp_path, text, f"s{step}.csv"), time_column="t").load()
        assert (raw.times.double() - 1600000000).tolist() == [step * i for i in range(6)]
    text = "id,t,a\n" + "".join(f"{s},{1600000000000 + 1000 * i + (7 if s == 'y' else 0)},{i}\n"
                                 for s in "xy" for i in range(4))  # milliseconds, long format
    raw = CSVSource(write(tmp_path, text, "ms.csv"), time_column="t", id_column="id").load()
    assert raw.times.shape == (8,) and (raw.times.double().diff() > 0).all()


def test_sample_files_keep_the_datas_float64_times(tmp_path):
    from neuralsde.commands import write_paths

    times = torch.tensor([1600000000.0 + 300 * i for i in range(3)], dtype=torch.float64)
    paths = torch.zeros(2, 3, 2)
    for suffix in (".csv", ".npz"):
        out = tmp_path / f"s{suffix}"
        write_paths(out, paths, ["a"], times=times)
        if suffix == ".csv":
            import pandas as pd
            got = pd.read_csv(out)["time"].tolist()[:3]
        else:
            import numpy as np
            got = np.load(out)["times"][0].tolist()
        assert got == times.tolist()



def test_csv_delimiter_names_and_bad_delimiters(tmp_path):
    """'\\t' from the command line is two characters, and an unquoted tab arrives empty: both ended in csv's bare
    TypeError ('"delimiter" must be a 1-character string') with a traceback and no option named."""
    path = write(tmp_path, "t\ta\n0\t1\n1\t2\n")
    for name in ("\\t", "tab", "\t"):
        assert CSVSource(path, time_column="t", delimiter=name).load().channel_names == ["a"]
    for bad in ("", ";;"):
        with pytest.raises(ConfigError, match="data.source.delimiter=.*Fix: e.g. data.source.delimiter=tab"):
            CSVSource(path, delimiter=bad)


@pytest.mark.parametrize("sep, name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_csv_split_by_the_wrong_delimiter_names_the_right_one(tmp_path, sep, name):
    """A semicolon file read with the default comma failed as "no numeric value columns among ['id;t;a;b']. Fix: set
    value_columns, or check the delimiter" (with id_column set, as that column not found)."""
    text = "".join(sep.join(row) + "\n" for row in [["id", "t", "a"], ["0", "0", "1.5"], ["0", "1", "2.5"]])
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=rf"single column .* holds 2 .*{name}-separated\. "
                                        rf"Fix: data\.source\.delimiter={name}\.$"):
        CSVSource(path, id_column="id", time_column="t").load()
    assert CSVSource(path, id_column="id", time_column="t", delimiter=name).load().channel_names == ["a"]
    one = write(tmp_path, "a\n1\n2\n", "one.csv")  # one column and no other delimiter: a series of its own
    assert CSVSource(one).load().channel_names == ["a"]


def test_csv_without_a_header_row_says_so(tmp_path, caplog):
    """A headerless file failed as "header (line 1) has duplicate or empty column names ['0']" (its first row of
    numbers read as names), or, with no repeated number, trained on columns named '0', '1.5', ... without its first
    row, silently."""
    with pytest.raises(DataError, match=r"duplicate or empty column names \['0'\]\. Line 1 holds only numbers: the "
                                        r"file looks headerless\. Fix: add a first line naming the columns"):
        CSVSource(write(tmp_path, "0,0,1.5\n0,1,2.5\n1,0,3.5\n1,1,4.5\n"), id_column="0").load()
    with caplog.at_level("WARNING"):
        CSVSource(write(tmp_path, "1,2.5\n2,3.5\n3,4.5\n", "b.csv"), time_column="1").load()
    assert "are all numbers, so the first data row may have been read as the header" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        CSVSource(write(tmp_path, "t,a\n1,2.5\n2,3.5\n", "c.csv"), time_column="t").load()
    assert "all numbers" not in caplog.text

def test_one_name_for_a_list_option_is_not_split_into_characters(tmp_path):
    """value_columns=PM25 on the command line is a string: it became ['P', 'M', '2', '5'] ("column 'P' not found";
    covariates=TEMP: "Fix: drop ['T', 'E', 'M', 'P']")."""
    from neuralsde.data.air_quality import AirQualitySource

    raw = CSVSource(write(tmp_path, "t,PM25,b\n0,1,5\n1,2,6\n"), time_column="t", value_columns="PM25").load()
    assert raw.channel_names == ["PM25"]
    assert AirQualitySource(stations="Dongsi", covariates="TEMP").covariates == ["TEMP"]
    assert EnergySource(drop_columns="rv1").drop_columns == ["rv1"]


@pytest.mark.parametrize("option, value", [("time_unit_seconds", 0), ("max_union_factor", 0.5)])
def test_csv_numeric_options_are_checked(option, value):
    """time_unit_seconds=0 divided by zero and ended in "observation times must be strictly increasing"."""
    with pytest.raises(ConfigError, match=f"data.source.{option}={value}"):
        CSVSource("x.csv", **{option: value})


# The options a CSV hint may name; "path" is left out, a common word in messages.
CSV_OPTIONS = ("time_column", "value_columns", "id_column", "window_length", "stride", "time_unit_seconds",
               "max_union_factor", "drop_empty_windows", "delimiter")


@pytest.mark.parametrize("text, options, fix", [
    # the walk-through's file: 'abc' in a value column, columns picked by default or named
    ("t,a,b\n0,1,2\n1,abc,3\n", {"time_column": "t"},
     "set data.source.value_columns to the columns you want, without this one (data.source.value_columns=[b])"),
    ("t,a,b\n0,1,2\n1,abc,3\n", {"time_column": "t", "value_columns": ["a", "b"]},
     "leave it out of data.source.value_columns (data.source.value_columns=[b])"),
    ("t,a,b\n0,1,\n1,2,NA\n", {"time_column": "t"}, "leave them out: data.source.value_columns=[a]"),
    ("t,a\n0,1\n1,2\n", {"value_columns": ["b"]}, "set data.source.value_columns to one of them"),
    ("t,a\n0,1\n1,2\n", {"time_column": "time"}, "set data.source.time_column to one of them"),
    ("t,a\n0,1\n1,2\n", {"id_column": "series"}, "set data.source.id_column to one of them"),
    ("n,m\nx,y\nz,w\n", {}, "set data.source.value_columns, or check data.source.delimiter"),
    ("a\n1\n2\n", {"window_length": 3}, "set data.source.window_length to at most 2"),
    ("a,b\n1,\n,\n,\n2,\n", {"window_length": 2, "value_columns": "a"},
     "change data.source.window_length or data.source.stride, or set data.source.drop_empty_windows=true"),
    ("a\n1\n2\n", {"id_column": "a", "window_length": 2}, "keep data.source.id_column for a file of many series, "
                                                         "or data.source.window_length"),
    ("a\n1\n2\n", {"stride": 2}, "set data.source.window_length too, or data.source.stride=null"),
])
def test_csv_hints_name_options_as_typed_on_the_command_line(tmp_path, text, options, fix):
    """"Fix: set value_columns=..." left the user to find that the command line takes data.source.value_columns."""
    with pytest.raises((DataError, ConfigError)) as err:
        CSVSource(write(tmp_path, text), **options).load()
    said = str(err.value)
    assert fix in said.partition("Fix: ")[2], said
    bare = re.findall(rf"(?<!data\.source\.)\b(?:{'|'.join(CSV_OPTIONS)})\b", said.replace(str(tmp_path), ""))
    assert not bare, said


# ---- generated sources -------------------------------------------------------------------------------
def test_weights_deterministic(tmp_path):
    options = dict(n_runs=2, n_weights=3, n_records=8, record_every=2, use_cache=False)
    a = WeightsSource(**options, task="synthetic").load()
    b = WeightsSource(**options, task="synthetic").load()
    assert a.values.shape == (6, 8, 1) and torch.equal(a.values, b.values)
    assert a.labels.tolist() == [0, 0, 0, 1, 1, 1] and a.times.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert (a.values[:, -1] != a.values[:, 0]).any()  # the weights move under SGD
    other = WeightsSource(**options, task="synthetic", seed=1).load()
    assert not torch.equal(a.values, other.values)
    per_run = WeightsSource(**{**options, "use_cache": True}, task="digits", layout="per_run",
                            cache_dir=str(tmp_path)).load()
    assert per_run.values.shape == (2, 8, 3)
    cached = WeightsSource(**{**options, "use_cache": True}, task="digits", layout="per_run",
                           cache_dir=str(tmp_path)).load()
    assert torch.equal(per_run.values, cached.values)


def test_ou_source_is_the_readmes_process():
    # README: dY = (mu t - theta Y) dt + sigma (2t/T) dW, mu=0.02, theta=0.1, sigma=0.4, 64 times, 8192 paths, 30% of
    # the values dropped. The sample mean and variance at every time follow the same Euler scheme's moment recursions
    # (Y0 ~ U(-1, 1): mean 0, variance 1/3), within sampling error.
    from neuralsde.data.ou import OUSource

    n, length, mu, theta, sigma, h = 8192, 64, 0.02, 0.1, 0.4, 0.1
    raw = OUSource().load()
    assert raw.values.shape == (n, length, 1) and raw.times.tolist() == list(range(length))
    assert int(torch.isnan(raw.values).sum()) == int(0.3 * n * length)
    again, other = OUSource().load(), OUSource(seed=1).load()
    assert torch.equal(again.values.nan_to_num(7.0), raw.values.nan_to_num(7.0))
    assert not torch.equal(other.values.nan_to_num(7.0), raw.values.nan_to_num(7.0))
    full = OUSource(drop_fraction=0.0).load().values[..., 0].double()
    mean, var = [0.0], [1.0 / 3.0]
    for k in range(10 * (length - 1)):
        t = k * h
        m, v = mean[-1], var[-1]
        mean.append(m + (mu * t - theta * m) * h)
        var.append((1 - theta * h) ** 2 * v + (sigma * 2 * t / length) ** 2 * h)
    mean, var = torch.tensor(mean[::10]), torch.tensor(var[::10])
    assert float(mean[-1]) > 10  # the drift mu t carries the mean far from 0: a wrong mu or theta shows
    assert ((full.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert ((full.var(0) / var - 1).abs() <= 6 * (2 / n) ** 0.5).all()


def test_lorenz_deterministic():
    a = LorenzSource(n_paths=8, n_times=20, t_end=0.5, drop_fraction=0.25, seed=3).load()
    b = LorenzSource(n_paths=8, n_times=20, t_end=0.5, drop_fraction=0.25, seed=3).load()
    assert a.values.shape == (8, 20, 3) and torch.equal(a.values.nan_to_num(), b.values.nan_to_num())
    assert torch.isnan(a.values).sum() == int(0.25 * 8 * 20 * 3)
    assert a.times[-1].item() == pytest.approx(0.5)
    c = LorenzSource(n_paths=8, n_times=20, t_end=0.5, noise="additive", seed=4).load()
    assert not torch.isnan(c.values).any() and not torch.equal(c.values[:, 0], a.values[:, 0])


def test_dataset_option_errors_name_the_full_key_and_a_fitting_fix():
    from neuralsde.data.air_quality import AirQualitySource
    from neuralsde.data.energy import EnergySource
    from neuralsde.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.source.covariates=\['FOO'\] .* Fix: drop \['FOO'\]$"):
        AirQualitySource(covariates=["FOO"])
    with pytest.raises(ConfigError, match=r"data.source.covariates=.*Fix: drop \['wd'\] \(wind direction"):
        AirQualitySource(covariates=["wd"])
    with pytest.raises(ConfigError, match=r"data.source.stations=\['Nowhere'\] .* Fix: spell"):
        AirQualitySource(stations=["Nowhere"])
    with pytest.raises(ConfigError, match=r"data.source.drop_columns=\['rv9'\]"):
        EnergySource(drop_columns=["rv9"])
