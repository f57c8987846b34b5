"""eval.py and sample.py on a checkpoint from a short run; bad input to both."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from neuralsde.checkpoints import load_model, read_checkpoint
from neuralsde.commands import metric_options, run_eval, run_sample
from neuralsde.errors import CheckpointError, ConfigError, DataError
from neuralsde.training import train
from tests.conftest import ROOT, compose_config, shrink


@pytest.fixture(scope="module")
def sdegan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = shrink(compose_config(), out, steps=3)
    with open_dict(cfg):
        cfg.test = False
    train(cfg)
    return out


def _cmd_cfg(kind: str, out_dir, **values):
    cfg = OmegaConf.load(ROOT / "configs" / f"{kind}.yaml")
    cfg.pop("defaults"), cfg.pop("hydra")  # as Hydra hands it to the command
    cfg.paths = {"output_dir": str(out_dir)}
    for k, v in values.items():
        cfg[k] = v
    return cfg


def test_eval_writes_metrics_json(sdegan_run, tmp_path, capsys):
    cfg = _cmd_cfg("eval", tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), n_samples=64,
                   options={"classifier_epochs": 2, "forecast_epochs": 2, "n_boot": 20})
    values = run_eval(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["family"] == "sdegan" and saved["n_samples"] == 64 and saved["options"]["classifier_epochs"] == 2
    for key in ("test/sig_mmd", "test/real_fake_acc", "test/tstr_loss", "test/trtr_loss", "test/marginal_w1"):
        assert key in values and np.isfinite(values[key])
    assert saved["metrics"] == values
    # the printed table: TSTR's row carries TRTR in its training-data column, which has no row of its own
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in capsys.readouterr().out.splitlines() if line.count("│") == 4}
    assert rows["test/tstr_loss"] == [f"{values['test/tstr_loss']:.5g}", f"{values['test/trtr_loss']:.5g}"]
    assert "test/trtr_loss" not in rows and "test/ref_marginal_w1" not in rows
    assert rows["test/marginal_w1"][1] == f"{values['test/ref_marginal_w1']:.5g}"


def test_eval_records_how_many_paths_it_compared(sdegan_run, tmp_path, capsys):
    """n_samples is an upper bound: a smaller test split is compared whole, and metrics.json said n_samples=100000
    with nothing telling how many paths the figures rest on."""
    ckpt = sdegan_run / "checkpoints" / "last.ckpt"
    _, dm, _ = load_model(ckpt)
    run_eval(_cmd_cfg("eval", tmp_path, ckpt_path=str(ckpt), n_samples=100000, metrics=["marginal_w1"]))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n_samples"] == 100000 and saved["n_compared"] == len(dm.test) < 100000
    assert f"{len(dm.test)} real paths and as many generated" in capsys.readouterr().out


def test_eval_uses_the_runs_metric_options_under_its_own(sdegan_run):
    """eval.py scores a checkpoint with the kernel and path scale its experiment trained with (energy's PDE kernel,
    air quality's path scale), not the defaults; its own ``options`` win where given."""
    train_cfg = compose_config(["experiment=energy_sdegan"])
    options = metric_options(train_cfg, OmegaConf.create({"n_boot": 10, "sig_path_scale": 0.5}))
    assert options["sig_kind"] == "pde" and options["sig_path_scale"] == 0.5 and options["n_boot"] == 10
    assert metric_options(train_cfg, {})["sig_path_scale"] == 0.1
    _, _, ou_cfg = load_model(sdegan_run / "checkpoints" / "last.ckpt")
    assert metric_options(ou_cfg, {"n_boot": 5}) == {**OmegaConf.to_container(ou_cfg.callbacks.metrics.options),
                                                     "n_boot": 5}
    with open_dict(ou_cfg):
        del ou_cfg.callbacks["metrics"]  # a run without the metrics callback: eval's options alone
    assert metric_options(ou_cfg, {"n_boot": 5}) == {"n_boot": 5}


def test_eval_and_sample_use_the_runs_threads(sdegan_run, tmp_path, monkeypatch):
    """eval.py and sample.py compute with the run's ``threads`` (ou_sdegan: 1), as its test stage did, and restore
    torch's setting after: at torch's default (one per core) eval.py took 245 s instead of 29 s on a busy 2-core VM."""
    import neuralsde.commands as commands

    seen = {}
    monkeypatch.setattr(commands, "evaluate",
                        lambda *a, **k: ({}, {"real_test": [seen.setdefault("eval", torch.get_num_threads())]}))
    real_sampler = commands._sample_with_progress
    monkeypatch.setattr(commands, "_sample_with_progress",
                        lambda *a: (seen.setdefault("sample", torch.get_num_threads()), real_sampler(*a))[1])
    ckpt = str(sdegan_run / "checkpoints" / "last.ckpt")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_eval(_cmd_cfg("eval", tmp_path / "e", ckpt_path=ckpt, n_samples=64))
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=4, out=str(tmp_path / "s.csv")))
        assert seen == {"eval": 1, "sample": 1} and torch.get_num_threads() == 2
        seen.clear()  # the run's setting is a config value like any other: cfg_overrides changes it
        run_eval(_cmd_cfg("eval", tmp_path / "e2", ckpt_path=ckpt, n_samples=64, cfg_overrides=["threads=null"]))
        assert seen == {"eval": 2}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("ext", [".csv", ".npz", ".parquet"])
def test_sample_round_trips_data_units(sdegan_run, tmp_path, ext):
    ckpt = sdegan_run / "checkpoints" / "last.ckpt"
    out = tmp_path / f"samples{ext}"
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(ckpt), n=10, out=str(out), batch_size=10))
    model, dm, _ = load_model(ckpt)
    with torch.no_grad():
        normalised = model.sample(10, generator=torch.Generator().manual_seed(0))
    if ext == ".npz":
        data = np.load(out)
        values, times = data["values"], data["times"]
    else:
        frame = pd.read_csv(out) if ext == ".csv" else pd.read_parquet(out)
        assert list(frame.columns) == ["path", "time", *dm.channel_names]
        values = frame[dm.channel_names].to_numpy().reshape(10, -1, dm.data_size)
        times = frame["time"].to_numpy().reshape(10, -1)
    np.testing.assert_allclose(times, normalised[..., 0].numpy())
    # Data units: normalising the written values gives back the model's own (normalised) samples.
    renormalised = dm.normalizer(torch.tensor(values, dtype=torch.float32))
    np.testing.assert_allclose(renormalised.numpy(), normalised[..., 1:].numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(values, normalised[..., 1:].numpy(), atol=1e-2)  # the units really changed


def test_sample_refuses_bad_input(sdegan_run, tmp_path):
    ckpt = str(sdegan_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"n=0 is not valid: expected a positive integer \(number of paths\)"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=0, out=str(tmp_path / "a.csv")))
    with pytest.raises(ConfigError, match="extension '.xlsx'"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=5, out=str(tmp_path / "a.xlsx")))
    existing = tmp_path / "keep.csv"
    existing.write_text("precious\n")
    with pytest.raises(ConfigError, match="overwrite=true"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=5, out=str(existing)))
    assert existing.read_text() == "precious\n"


def test_checkpoint_config_overrides_reach_what_is_derived_from_them(sdegan_run, tmp_path):
    from neuralsde.checkpoints import checkpoint_config
    from neuralsde.training import config_source

    ckpt = read_checkpoint(sdegan_run / "checkpoints" / "last.ckpt")
    assert OmegaConf.to_container(checkpoint_config(ckpt)) == ckpt["neuralsde"]["config"]  # same run without overrides
    # the README's eval.py cfg_overrides=["paths.data_dir=/elsewhere"] on a run whose data come from data_dir
    cfg = shrink(compose_config(["experiment=air_quality_sdegan"]), tmp_path)
    ckpt = {"neuralsde": {"family": "sdegan", "config_source": config_source(cfg)}}
    moved = checkpoint_config(ckpt, ["paths.data_dir=/elsewhere"])
    assert moved.data.source.data_dir == "/elsewhere" and moved.paths.data_dir == "/elsewhere"



@pytest.mark.parametrize("override, message", [
    # a typo reached OUSource as a keyword: TypeError "unexpected keyword argument 'n_path'" with a traceback
    ("data.source.n_path=100", r"no key 'data.source.n_path' \(keys beside it: .*'n_paths'.*\+data.source.n_path=100"),
    # a Hydra group choice replaced the data section by a string: "Cannot instantiate config of type str"
    ("data=lorenz", "would replace the whole 'data' section by 'lorenz'"),
    ("paths.data_dir", "is not key=value"),
])
def test_checkpoint_config_overrides_that_cannot_apply_are_refused(tmp_path, override, message):
    from neuralsde.checkpoints import checkpoint_config
    from neuralsde.training import config_source

    ckpt = {"neuralsde": {"family": "sdegan", "config_source": config_source(shrink(compose_config(), tmp_path))}}
    with pytest.raises(CheckpointError, match=message):
        checkpoint_config(ckpt, [override])
    assert checkpoint_config(ckpt, ["+data.source.extra=1"]).data.source.extra == 1  # adding is said with +


def test_eval_checks_a_model_override_before_the_data(sdegan_run, tmp_path, monkeypatch):
    """eval.py rebuilds the data before the model: 'cfg_overrides=["model.lipschitz=foo"]' on a run whose data must
    be downloaded first was refused only after the download."""
    from neuralsde.data.datamodule import TimeSeriesDataModule

    monkeypatch.setattr(TimeSeriesDataModule, "setup", lambda *args: pytest.fail("the data were prepared"))
    cfg = _cmd_cfg("eval", tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), n_samples=64,
                   cfg_overrides=["model.lipschitz=foo"])
    with pytest.raises(ConfigError, match=r"model.lipschitz='foo' is not valid: expected one of"):
        run_eval(cfg)


def test_eval_refuses_unknown_metric(sdegan_run, tmp_path):
    cfg = _cmd_cfg("eval", tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), metrics=["fid"])
    with pytest.raises(ConfigError, match="fid"):
        run_eval(cfg)


def test_too_few_evaluation_paths_are_refused_before_any_work(sdegan_run, tmp_path):
    from neuralsde.evaluation import MetricsCallback

    cfg = _cmd_cfg("eval", tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), n_samples=1)
    with pytest.raises(ConfigError, match="n_samples=1 is not valid: expected an integer of at least 2"):
        run_eval(cfg)
    with pytest.raises(ConfigError, match="callbacks.metrics.n_samples=0 is not valid"):  # before training starts
        MetricsCallback(str(tmp_path), n_samples=0)
    cfg = _cmd_cfg("eval", tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), options={"horizon": 1.5})
    with pytest.raises(ConfigError, match=r"\+options.horizon=1.5 is not valid.*Fix: e.g. \+options.horizon=0.5"):
        run_eval(cfg)  # named as eval.py takes it on the command line


def test_checkpoint_errors(sdegan_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    good = (sdegan_run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.ckpt")
    # one damaged byte inside a weight tensor: torch.load does not check CRCs, and the model loaded silently wrong
    weight = read_checkpoint(sdegan_run / "checkpoints" / "last.ckpt")["state_dict"]["generator.readout.weight"]
    at = good.index(weight.numpy().tobytes())
    (tmp_path / "flipped.ckpt").write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt .*fails its CRC check\). Fix: use an earlier"):
        load_model(tmp_path / "flipped.ckpt")
    (tmp_path / "metrics.csv").write_text("epoch,step,train/d_loss\n0,0,0.5\n")  # passed by mistake
    with pytest.raises(CheckpointError, match=r"metrics.csv' is not a checkpoint file \(it begins b'epoc'.*Fix: pass"):
        read_checkpoint(tmp_path / "metrics.csv")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a neuralsde-lab checkpoint"):
        read_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model(sdegan_run / "checkpoints" / "last.ckpt", ["model.generator.hidden_size=7"])
    # a checkpoint of an older version (a buffer added since): "drop size/data overrides" was no fix without any
    older = read_checkpoint(sdegan_run / "checkpoints" / "last.ckpt")
    del older["state_dict"]["train_step"]
    torch.save(older, tmp_path / "older.ckpt")
    with pytest.raises(CheckpointError, match=r"its own config builds \(missing: \['train_step'\]\): it was written "
                                              "by another version of neuralsde-lab.*Fix: load it with the version"):
        load_model(tmp_path / "older.ckpt")


def test_data_overridden_for_evaluation_is_in_the_models_units(sdegan_run):
    # Other data (here more OU paths) fit other normalisation statistics; the model's, loaded from the checkpoint,
    # replaced them in the shared normaliser after the splits had been normalised with them, so eval.py compared
    # real paths in one unit with generated ones in another (and plotted real paths in wrong data units).
    ckpt = sdegan_run / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(ckpt)["state_dict"]
    model, dm, _ = load_model(ckpt, ["data.source.n_paths=200"])
    assert torch.equal(dm.normalizer.shift, saved["normalizer.shift"]) and dm.normalizer is model.normalizer
    for split in ("train", "test"):
        raw = dm.raw.values[dm.split_indices[split]]
        back = dm.to_data_units(getattr(dm, split))[..., 1:]
        assert torch.allclose(back, raw, atol=1e-5, equal_nan=True), split
    observed = ~torch.isnan(dm.test)
    assert torch.equal(dm.filled["test"][observed], dm.test[observed])


def test_samples_carry_the_datas_own_times(tmp_path):
    # A CSV observed every half hour: samples come back at 0, 0.5, ..., 3.5 whether the model's time channel is
    # the observation index or the source's times in units of their gap.
    rows = [f"{i},{0.5 * k},{np.sin(i + k):.4f}" for i in range(40) for k in range(8)]
    data = tmp_path / "half_hourly.csv"
    data.write_text("id,t,v\n" + "\n".join(rows) + "\n")
    for unit in ("index", "source"):
        cfg = shrink(compose_config(["data=csv", f"data.source.path={data}", "data.source.time_column=t",
                                     "data.source.id_column=id", f"data.time_unit={unit}"]), tmp_path / unit)
        with open_dict(cfg):
            cfg.test = False
            cfg.callbacks.pop("metrics")
        train(cfg)
        out = tmp_path / f"{unit}.npz"
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(tmp_path / unit / "checkpoints" / "last.ckpt"), n=3,
                            out=str(out)))
        assert np.allclose(np.load(out)["times"], np.arange(8) * 0.5)


def test_sample_needs_no_data_where_the_checkpoint_holds_their_times_and_names(tmp_path):
    """A run trained on a cluster, sampled on a laptop: sample.py rebuilt the data from the checkpoint's config
    for their channel names and times, and failed where the CSV was absent."""
    # date-times 17 min 3 s apart: hours since the first, which a float32 does not hold exactly
    rows = [f"{i},{pd.Timestamp('2024-01-01') + pd.Timedelta(seconds=1023 * k)},{np.sin(i + k):.4f}"
            for i in range(40) for k in range(8)]
    data = tmp_path / "d.csv"
    data.write_text("id,t,v\n" + "\n".join(rows) + "\n")
    cfg = shrink(compose_config(["data=csv", f"data.source.path={data}", "data.source.time_column=t",
                                 "data.source.id_column=id"]), tmp_path / "run")
    with open_dict(cfg):
        cfg.test = False
        cfg.callbacks.pop("metrics")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    old = read_checkpoint(ckpt)
    old["neuralsde"].pop("data", None)  # a checkpoint written before the entry: it rebuilds the data
    torch.save(old, tmp_path / "old.ckpt")
    outs = [tmp_path / f"{name}.csv" for name in ("present", "absent", "old_moved")]
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(ckpt), n=3, out=str(outs[0])))
    data.rename(tmp_path / "moved.csv")
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(ckpt), n=3, out=str(outs[1])))
    assert outs[1].read_bytes() == outs[0].read_bytes()
    frame = pd.read_csv(outs[1])
    assert list(frame.columns) == ["path", "time", "v"]
    np.testing.assert_array_equal(frame["time"].to_numpy()[:8], np.arange(8) * 1023 / 3600)
    with pytest.raises(DataError, match=r"file not found.*eval.py and sample.py change it with 'cfg_overrides="):
        load_model(ckpt)  # eval.py still rebuilds the data, and its error names the fix
    with pytest.raises(DataError, match=r"file not found.*cfg_overrides="):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(tmp_path / "old.ckpt"), n=3, out=str(outs[2])))
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(tmp_path / "old.ckpt"), n=3, out=str(outs[2]),
                        cfg_overrides=[f"data.source.path={tmp_path / 'moved.csv'}"]))  # the fix it names
    assert outs[2].read_bytes() == outs[0].read_bytes()


def test_a_relative_csv_path_is_found_from_another_directory(tmp_path, monkeypatch):
    """A run trained with data.source.path=d.csv kept that relative path in its checkpoint: eval.py started from
    another directory failed with "file not found" though the file was there. A resume from the training
    directory with the same path is the same run, and a path given to eval.py is relative to where it starts."""
    from neuralsde.resume import other_run_settings

    first, elsewhere = tmp_path / "a", tmp_path / "b"
    first.mkdir(), elsewhere.mkdir()
    rows = "".join(f"{i},{k},{np.sin(i + k):.4f}\n" for i in range(40) for k in range(6))
    (first / "d.csv").write_text("id,t,v\n" + rows)

    def config(out, steps):
        cfg = shrink(compose_config(["data=csv", "data.source.path=d.csv", "data.source.time_column=t",
                                     "data.source.id_column=id"]), out, steps=steps)
        with open_dict(cfg):
            cfg.test = False
            cfg.callbacks.pop("metrics")
        return cfg

    monkeypatch.chdir(first)
    train(config(tmp_path / "run", 2))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(elsewhere)
    values = run_eval(_cmd_cfg("eval", tmp_path / "eval", ckpt_path=str(ckpt), n_samples=16, metrics=["marginal_w1"]))
    assert np.isfinite(values["test/marginal_w1"])
    (elsewhere / "d.csv").write_text("id,t,v\n" + rows.replace(",0.", ",1."))  # same shape, other values
    _, here, cfg = load_model(ckpt, ["data.source.path=d.csv"])
    assert cfg.data.source.path == "d.csv" and here.raw.meta["path"] == "d.csv"
    _, there, cfg = load_model(ckpt)
    assert cfg.data.source.path == str(first / "d.csv") and not torch.equal(here.raw.values, there.raw.values)
    monkeypatch.chdir(first)
    resumed = config(tmp_path / "resumed", 3)
    with open_dict(resumed):
        resumed.ckpt_path = str(ckpt)
    saved = read_checkpoint(ckpt)["neuralsde"]["config"]
    assert other_run_settings(saved, OmegaConf.to_container(resumed, resolve=True)) == []
    train(resumed)
    assert read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["neuralsde"]["train_step"] == 3


def test_a_home_or_variable_csv_path_is_not_joined_to_the_training_directory(tmp_path, monkeypatch):
    """A checkpoint's relative data path is joined to the directory training started in; ~/x.csv was relative to
    Path too, and became <that directory>/~/x.csv, a file that is nowhere."""
    from pathlib import Path

    from neuralsde.checkpoints import FAMILY_TARGETS, checkpoint_config
    from neuralsde.data.base import user_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SUB", "d")

    def anchored(path: str) -> Path:
        saved = {"model": {"_target_": FAMILY_TARGETS["sdegan"]}, "data": {"source": {"path": path}}}
        ckpt = {"neuralsde": {"family": "sdegan", "config_source": saved, "data": {"cwd": "/train"}}}
        return user_path(checkpoint_config(ckpt).data.source.path)

    assert anchored("~/x.csv") == anchored("$HOME/x.csv") == tmp_path / "x.csv"
    assert anchored("$SUB/x.csv") == anchored("d/x.csv") == Path("/train/d/x.csv")


def test_sample_refuses_data_overrides_it_does_not_use(sdegan_run, tmp_path):
    """A checkpoint holding its data's times and names is sampled without its data, and a data override such as
    data.normalize=none changed nothing, silently; where the data lie is harmless and passes."""
    ckpt = str(sdegan_run / "checkpoints" / "last.ckpt")
    out = tmp_path / "a.csv"
    with pytest.raises(ConfigError, match=r"cfg_overrides \['data.normalize=none'\] change data settings that "
                                          r"sampling does not use \(the checkpoint's: data.normalize=standard\)"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=3, out=str(out),
                            cfg_overrides=["data.normalize=none"]))
    assert not out.exists()
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=3, out=str(out),
                        cfg_overrides=[f"paths.data_dir={tmp_path}", "threads=null"]))
    assert out.is_file()


def test_sample_names_the_seed_override_it_refuses(sdegan_run, tmp_path):
    """cfg_overrides=["seed=3"] (meant for sample.py's own seed=) reaches the data only through data.seed=${seed}: the
    refusal named data.seed=..., a setting the user never wrote; it names seed=, and sample.py's own seed."""
    ckpt = str(sdegan_run / "checkpoints" / "last.ckpt")
    saved = read_checkpoint(ckpt)["neuralsde"]["config"]["seed"]
    with pytest.raises(ConfigError, match=rf"\(the checkpoint's: seed={saved}\).*its own seed=\.\.\. sets"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=3, out=str(tmp_path / "a.csv"),
                            cfg_overrides=[f"seed={saved + 1}"]))


@pytest.mark.parametrize("run", ["sdegan_run", "latent_run"])
def test_sample_reads_no_data_and_writes_what_it_did_with_them(run, tmp_path, monkeypatch, request):
    """The same file, bit for bit, from a checkpoint whose data are absent as from an older checkpoint (no stored
    channel names and times) that rebuilds its data."""
    from neuralsde.data.datamodule import TimeSeriesDataModule

    ckpt = request.getfixturevalue(run) / "checkpoints" / "last.ckpt"
    old = read_checkpoint(ckpt)
    old["neuralsde"].pop("data", None)
    torch.save(old, tmp_path / "old.ckpt")
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(tmp_path / "old.ckpt"), n=5, out=str(tmp_path / "a.csv")))

    def absent(self, stage=None):
        raise DataError("the data are absent")
    monkeypatch.setattr(TimeSeriesDataModule, "setup", absent)
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(ckpt), n=5, out=str(tmp_path / "b.csv")))
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()


def test_eval_entry_point_runs(sdegan_run, tmp_path):
    # The real command line, as a user types it (Hydra parses the overrides).
    ckpt = sdegan_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "s.npz"
    res = subprocess.run([sys.executable, "sample.py", f"ckpt_path={ckpt}", "n=3", f"out={out}",
                          f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.load(out)["values"].shape[0] == 3


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent_run")
    cfg = shrink(compose_config(["experiment=ou_latent_sde"]), out, steps=2)
    with open_dict(cfg):
        cfg.test = False
    train(cfg)
    return out


def test_eval_and_sample_on_a_latent_sde_checkpoint(latent_run, tmp_path):
    ckpt = str(latent_run / "checkpoints" / "last.ckpt")
    values = run_eval(_cmd_cfg("eval", tmp_path, ckpt_path=ckpt, n_samples=32, metrics=["sig_mmd", "marginal_w1"],
                               options={"n_boot": 10}))
    assert json.loads((tmp_path / "metrics.json").read_text())["family"] == "latent_sde"
    assert np.isfinite(values["test/sig_mmd"]) and np.isfinite(values["test/marginal_w1"])
    out = tmp_path / "latent.npz"
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=6, out=str(out), batch_size=6))
    model, dm, _ = load_model(ckpt)
    assert model.family == "latent_sde"
    data = np.load(out)
    assert data["values"].shape == (6, dm.times.numel(), dm.data_size) and np.isfinite(data["values"]).all()
    with torch.no_grad():
        normalised = model.sample(6, generator=torch.Generator().manual_seed(0))
    renormalised = dm.normalizer(torch.tensor(data["values"], dtype=torch.float32))
    np.testing.assert_allclose(renormalised.numpy(), normalised[..., 1:].numpy(), rtol=1e-4, atol=1e-4)


def test_sample_observation_noise_adds_the_likelihoods_noise(latent_run, tmp_path):
    """sample.py's observation_noise=true draws the full generative model: the same seed's decoded paths plus noise
    at the likelihood's std; null (the default) and false write the decoded paths, as before."""
    from neuralsde.checkpoints import load_sampler

    ckpt = str(latent_run / "checkpoints" / "last.ckpt")

    def sample(name, **values):
        out = tmp_path / f"{name}.npz"
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=400, out=str(out), batch_size=400, **values))
        return torch.tensor(np.load(out)["values"])

    clean, noisy = sample("clean"), sample("noisy", observation_noise=True)
    assert torch.equal(sample("off", observation_noise=False), clean)
    assert torch.equal(sample("again", observation_noise=True), noisy)  # the seed sets the noise too
    assert not torch.equal(sample("other", observation_noise=True, seed=1), noisy)
    model = load_sampler(ckpt)[0]
    assert model.sample_observation_noise is False  # the checkpoint's setting: observation_noise=null keeps it
    with torch.no_grad():
        decoded = model.sample(400, generator=torch.Generator().manual_seed(0))[..., 1:]
        noise = model.normalizer(noisy) - decoded  # in the model's normalised units, as its likelihood
        std = model.decoder.observation_std()
    torch.testing.assert_close(model.normalizer(clean), decoded, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(noise.reshape(-1, std.numel()).std(0), std, rtol=0.06, atol=0)


def test_sample_files_record_observation_noise_checkpoint_and_seed(latent_run, sdegan_run, tmp_path):
    """A noisy and a noiseless file of one checkpoint looked alike: the npz (arrays), the parquet (schema
    metadata) and a CSV's JSON sidecar ``<name>.csv.json`` now say whether observation noise was added, from which
    checkpoint and seed; pandas and numpy read the paths as before."""
    import pyarrow.parquet as pq

    from neuralsde.commands import SAMPLE_RECORD_KEY

    def sample(run, name, **values):
        ckpt = run / "checkpoints" / "last.ckpt"
        out = tmp_path / name
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(ckpt), n=4, batch_size=4, out=str(out), **values))
        return out, str(ckpt.resolve())

    for run, noise, seed in ((latent_run, True, 3), (latent_run, None, 0), (sdegan_run, None, 0)):
        tag = f"{run.name}_{noise}"
        npz, ckpt = sample(run, f"{tag}.npz", observation_noise=noise, seed=seed)
        data = np.load(npz)  # no allow_pickle: plain arrays
        assert sorted(data.files) == ["channels", "checkpoint", "observation_noise", "seed", "times", "values"]
        assert data["observation_noise"].dtype == bool and bool(data["observation_noise"]) is bool(noise)
        assert str(data["checkpoint"]) == ckpt and int(data["seed"]) == seed
        parquet, _ = sample(run, f"{tag}.parquet", observation_noise=noise, seed=seed)
        record = json.loads(pq.read_schema(parquet).metadata[SAMPLE_RECORD_KEY])
        assert record == {"checkpoint": ckpt, "seed": seed, "observation_noise": bool(noise)}
        frame = pd.read_parquet(parquet)
        channels = [str(c) for c in data["channels"]]
        assert list(frame.columns) == ["path", "time", *channels] and frame.index.equals(pd.RangeIndex(len(frame)))
        # the same seed's paths in both files
        np.testing.assert_array_equal(frame[channels].to_numpy().reshape(data["values"].shape), data["values"])
        csv, _ = sample(run, f"{tag}.csv", observation_noise=noise, seed=seed)
        assert json.loads((tmp_path / f"{tag}.csv.json").read_text()) == record
        frame = pd.read_csv(csv)  # the CSV itself is the plain table: no comment lines for pandas to trip on
        assert list(frame.columns) == ["path", "time", *channels] and len(frame) == data["values"][..., 0].size
        np.testing.assert_allclose(frame[channels].to_numpy().reshape(data["values"].shape), data["values"],
                                   rtol=1e-6)


def test_a_csvs_sidecar_is_never_overwritten_unasked_nor_left_stale(latent_run, tmp_path):
    from neuralsde.commands import write_paths

    ckpt = str(latent_run / "checkpoints" / "last.ckpt")
    out, sidecar = tmp_path / "s.csv", tmp_path / "s.csv.json"
    sidecar.write_text("notes of mine\n")
    with pytest.raises(ConfigError, match=r"out=.*s.csv' would overwrite .*s.csv.json', where sample.py records "
                                          r"what drew a CSV's paths. Fix: .*overwrite=true"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=2, out=str(out)))
    assert sidecar.read_text() == "notes of mine\n" and not out.exists()
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=2, out=str(out), overwrite=True,
                        observation_noise=True))
    assert json.loads(sidecar.read_text())["observation_noise"] is True
    write_paths(out, torch.zeros(1, 3, 2), ["a"])  # paths with no record: a sidecar would describe others
    assert not sidecar.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_sample_observation_noise_is_refused_for_the_sdegan(sdegan_run, tmp_path):
    ckpt = str(sdegan_run / "checkpoints" / "last.ckpt")
    out = tmp_path / "s.csv"
    with pytest.raises(ConfigError, match=r"observation_noise=true, but .* holds a 'sdegan' model, which has no "
                                          r"observation model.*Fix: drop observation_noise"):
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=4, out=str(out), observation_noise=True))
    assert not out.exists()
    run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=ckpt, n=4, out=str(out), observation_noise=False))  # as without


def test_eval_metrics_follow_and_record_the_observation_noise_option(latent_run, tmp_path, capsys):
    """The metrics score model.sample, so they follow model.sample_observation_noise (set for eval.py with
    cfg_overrides); metrics.json and the table's heading say which samples were compared."""
    ckpt = str(latent_run / "checkpoints" / "last.ckpt")
    scores = {}
    for noisy in (False, True):
        out = tmp_path / str(noisy)
        scores[noisy] = run_eval(_cmd_cfg("eval", out, ckpt_path=ckpt, n_samples=64, metrics=["marginal_w1"],
                                          cfg_overrides=[f"model.sample_observation_noise={str(noisy).lower()}"]))
        assert json.loads((out / "metrics.json").read_text())["sample_observation_noise"] is noisy
        heading = capsys.readouterr().out.replace("\n", " ")
        assert ("real paths and as many generated with observation noise" in heading) is noisy
    assert scores[True]["test/marginal_w1"] != scores[False]["test/marginal_w1"]
    assert scores[True]["test/elbo"] == scores[False]["test/elbo"]  # the ELBO draws no samples


def test_a_latent_sde_checkpoint_from_before_the_observation_noise_option(latent_run, tmp_path):
    """A checkpoint whose config and hyperparameters lack model.sample_observation_noise loads with the option off;
    sample.py's observation_noise and eval.py's '+model.sample_observation_noise=true' (as the README says) add it."""
    from latent_sde.module import LatentSDE
    from neuralsde.checkpoints import load_sampler

    ckpt = read_checkpoint(latent_run / "checkpoints" / "last.ckpt")
    for config in (ckpt["neuralsde"].get("config_source"), ckpt["neuralsde"].get("config")):
        if config is not None:
            del config["model"]["sample_observation_noise"]
    del ckpt["hyper_parameters"]["sample_observation_noise"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert load_sampler(str(old))[0].sample_observation_noise is False
    assert LatentSDE.from_checkpoint(old).sample_observation_noise is False

    def sample(name, noise):
        out = tmp_path / f"{name}.npz"
        run_sample(_cmd_cfg("sample", tmp_path, ckpt_path=str(old), n=8, out=str(out), observation_noise=noise))
        return np.load(out)["values"]
    assert not np.array_equal(sample("noisy", True), sample("clean", None))

    def evaluate(name, override):
        out = tmp_path / name
        run_eval(_cmd_cfg("eval", out, ckpt_path=str(old), n_samples=32, metrics=["marginal_w1"],
                          cfg_overrides=[override]))
        return json.loads((out / "metrics.json").read_text())["sample_observation_noise"]
    with pytest.raises(CheckpointError, match=r"has no key 'model.sample_observation_noise'.*write "
                                              r"\+model.sample_observation_noise=true"):
        evaluate("unknown", "model.sample_observation_noise=true")
    assert evaluate("added", "+model.sample_observation_noise=true") is True


def test_eval_reports_a_latent_sde_test_elbo_as_its_test_stage(latent_run, tmp_path, capsys):
    """eval.py on a latent SDE printed and saved the sample metrics alone: not the ELBO, the family's own figure
    (and its experiments' optimized_metric), which only the training run's test stage logged."""
    import pytorch_lightning as pl

    ckpt = str(latent_run / "checkpoints" / "last.ckpt")
    batches = ["data.eval_batch_size=4"]  # several test batches of unequal size: the mean is per path
    values = run_eval(_cmd_cfg("eval", tmp_path, ckpt_path=ckpt, n_samples=16, metrics=["marginal_w1"],
                               cfg_overrides=batches))
    model, dm, _ = load_model(ckpt, batches)
    assert len(dm.test) % 4 and len(dm.test) > 4
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    stage = trainer.test(model, datamodule=dm, verbose=False)[0]  # the module's own test_step, every test batch
    for key in ("test/elbo", "test/log_lik", "test/kl"):
        assert values[key] == pytest.approx(stage[key], rel=1e-5)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["test/elbo"] == values["test/elbo"]
    out = capsys.readouterr().out
    assert "test/elbo" in out and f"the ELBO on all {len(dm.test)} test paths" in out


def test_checkpoint_of_other_family_is_refused(sdegan_run, latent_run, tmp_path):
    cfg = shrink(compose_config(["experiment=ou_latent_sde"]), tmp_path, steps=3)
    with open_dict(cfg):
        cfg.ckpt_path = str(sdegan_run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="holds a 'sdegan' model but this config builds a 'latent_sde'"):
        train(cfg)


def test_eval_never_overwrites_an_earlier_evaluation(sdegan_run, tmp_path):
    """Runs never overwrite each other: a second eval.py into the same hydra.run.dir is refused before any work."""
    cfg = _cmd_cfg("eval", tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), n_samples=16,
                   metrics=["marginal_w1"])
    run_eval(cfg)
    first = (tmp_path / "metrics.json").read_text()
    cfg.seed = 1
    with pytest.raises(ConfigError, match="already holds an earlier evaluation"):
        run_eval(cfg)
    assert (tmp_path / "metrics.json").read_text() == first


def sample_cfg(tmp_path, **values):
    cfg = OmegaConf.load(ROOT / "configs" / "sample.yaml")
    cfg.pop("defaults"), cfg.pop("hydra")
    cfg.paths = {"output_dir": str(tmp_path)}
    cfg.ckpt_path, cfg.out = str(tmp_path / "never_read.ckpt"), str(tmp_path / "s.csv")
    for key, value in values.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("values, needle", [
    # n=abc was int()'s ValueError, batch_size=0 "range() arg 3 must not be zero"
    ({"n": "abc"}, r"n='abc' is not valid: expected a positive integer \(number of paths\). Fix: e.g. n=1000"),
    ({"batch_size": 0}, r"batch_size=0 is not valid: expected a positive integer. Fix"),
    ({"seed": "x"}, r"seed='x' is not valid: expected an integer"),
    ({"out": "???"}, r"out is required and not set. Fix: pass out=samples.csv"),
    ({"observation_noise": "yes"}, r"observation_noise='yes' is not valid: expected true, false or null"),
])
def test_sample_options(tmp_path, values, needle):
    with pytest.raises(ConfigError, match=needle):
        run_sample(sample_cfg(tmp_path, **values))


@pytest.mark.parametrize("kind", ["eval", "sample"])
def test_options_added_with_plus_are_refused(sdegan_run, tmp_path, kind):
    """``+data=stocks`` (Hydra's own suggestion for ``data=stocks``) was silently ignored: the checkpoint's data was
    scored as if nothing was said."""
    cfg = _cmd_cfg(kind, tmp_path, ckpt_path=str(sdegan_run / "checkpoints" / "last.ckpt"), out=str(tmp_path / "s.csv"))
    if kind == "eval":
        cfg.pop("out")
    cfg.data = {"source": {"ticker": "GOOG"}}
    runner = run_eval if kind == "eval" else run_sample
    with pytest.raises(ConfigError, match=rf"{kind}.py has no option data \(given with \+\).*cfg_overrides"):
        runner(cfg)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("script", ["eval.py", "sample.py"])
def test_help_shows_the_commands_own_options(script):
    """``--help`` listed train.py's config groups (data, model, experiment, ...), which these commands do not take."""
    res = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"python {script} ckpt_path=" in res.stdout and "ckpt_path: ???" in res.stdout
    assert "Configuration groups" not in res.stdout and "experiment:" not in res.stdout
