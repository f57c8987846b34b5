"""wandb in offline mode writes a local run with metrics and images, without network."""

from omegaconf import OmegaConf, open_dict

from neuralsde.training import train


def test_offline_wandb_run_has_metrics_and_images(tiny_cfg, tmp_path, monkeypatch):
    # No WANDB_MODE in the environment (conftest sets one for the other tests): offline must come from the config,
    # as the README promises for `logger=wandb` and `logger=many` with no account.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for logger in ("wandb", "many"):
        assert tiny_cfg([f"logger={logger}"]).logger.wandb.offline is True, logger
    cfg = tiny_cfg(["logger=many"], steps=2)
    with open_dict(cfg):
        cfg.callbacks.metrics.test_metrics = ["sig_mmd", "marginal_w1"]
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    _finished_history(tmp_path)  # wandb's service may still be writing the run file (a loaded machine read it short)
    files = [p for p in runs[0].rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    images = [p for p in files if p.suffix == ".png"]
    assert any("samples" in p.name for p in images) and any("marginals" in p.name for p in images)
    log = next(p for p in files if p.suffix == ".wandb").read_bytes()
    for key in (b"train/d_loss", b"val/sig_mmd", b"test/sig_mmd"):
        assert key in log
    # the run's config is the whole resolved config, not only the module's sizes: seed, data and trainer too
    for key in (b'"seed"', b'"batch_size":', b'"val_check_interval":', b'"hidden_size":'):
        assert key in log, key
    hparams = OmegaConf.load(tmp_path / "csv" / "hparams.yaml")
    assert hparams.seed == cfg.seed and hparams.data.batch_size == cfg.data.batch_size and "generator" in hparams


def _history_keys(run_file, with_kinds: bool = False):
    """Each history row of an offline run's ``.wandb`` file as {key: JSON value} (LevelDB-style log records of
    protobufs)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, part = run_file.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        part = chunk if kind in (1, 2) else part + chunk  # full, first, middle, last
        if kind in (1, 4):
            records.append(part)
    rows, kinds = [], set()
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        kinds.add(record.WhichOneof("record_type"))
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return (rows, kinds) if with_kinds else rows


def _finished_history(tmp_path) -> list[dict[str, str]]:
    """The history rows of the one offline run under ``tmp_path``, once wandb's service has written the whole file:
    it closes the file after ``wandb.finish()`` returns, so a loaded machine read a file still short of its rows.
    The exit record comes last; waited for up to 60 s."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while True:
        rows, kinds = _history_keys(run_file, with_kinds=True)
        if "exit" in kinds or time.monotonic() > deadline:
            assert "exit" in kinds, f"wandb never finished writing {run_file} ({pb.__name__})"
            return rows
        time.sleep(0.2)


def test_wandb_keeps_the_figures_when_more_rows_than_steps_were_logged(tiny_cfg, tmp_path):
    """A latent SDE logging every step writes more wandb rows than it takes steps: the figures were logged with
    step=trainer.global_step behind wandb's row counter and dropped ("ignoring partial history record"), so the
    run had no images. They now land in a history row with the metrics' x-axis, trainer/global_step."""
    cfg = tiny_cfg(["experiment=ou_latent_sde", "logger=wandb"], steps=3)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.log_every_n_steps = 1
        cfg.callbacks.metrics.val_metrics = ["marginal_w1"]
    train(cfg)
    rows = _finished_history(tmp_path)
    assert any("train/loss" in row for row in rows)
    for figure in ("samples", "reconstruction"):
        (row,) = [row for row in rows if any(key.startswith(f"{figure}/") for key in row)]
        assert "trainer/global_step" in row, figure


def test_periodic_sample_figures_share_one_wandb_key(tiny_cfg, tmp_path):
    """callbacks.sample_plot.every_n_steps logged samples_step000001, samples_step000002, ...: a wandb panel per
    step. They are now one key, "samples", at each figure's training step (one panel with a step slider)."""
    cfg = tiny_cfg(["logger=wandb", "callbacks.sample_plot.every_n_steps=1"], steps=2)
    with open_dict(cfg):
        cfg.test = False
        cfg.callbacks.metrics.val_metrics = ["marginal_w1"]
    train(cfg)
    assert {p.name for p in (tmp_path / "plots").glob("samples*.png")} == {
        "samples_step000001.png", "samples_step000002.png", "samples.png"}
    rows = _finished_history(tmp_path)
    assert not any(key.startswith("samples_step") for row in rows for key in row)
    assert [row["trainer/global_step"] for row in rows if "samples/path" in row] == ["1", "2", "2"]
