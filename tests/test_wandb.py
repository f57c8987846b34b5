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
