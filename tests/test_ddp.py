"""trainer=ddp_sim: two CPU processes over gloo hold identical parameters after every step."""
import dataclasses
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neuralsde.errors import ConfigError
from tests.conftest import ROOT

TINY = ["data.source.n_paths=128", "data.source.t_size=16", "data.batch_size=16", "model.train_steps=3",
        "trainer.val_check_interval=2", "callbacks.metrics.n_samples=32", "callbacks.metrics.options.n_boot=20",
        "callbacks.metrics.options.classifier_epochs=2", "callbacks.metrics.options.forecast_epochs=2",
        "extras.print_config=false", "callbacks.progress_bar=null"]


def _ddp_run(tmp_path, overrides, trainer=("trainer=ddp_sim",), name="run"):
    out = tmp_path / name
    check = tmp_path / ("check.txt" if name == "run" else f"check_{name}.txt")
    cmd = [sys.executable, "train.py", *trainer, *TINY, *overrides,
           "+callbacks.rank_check._target_=neuralsde.distributed.RankConsistencyCheck",
           f"+callbacks.rank_check.out_file={check}", f"hydra.run.dir={out}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, check


ALTERNATING = ["model.swa_start=1", "model.update=alternating", "model.n_critic=2"]


@pytest.mark.parametrize("overrides, trainer", [
    (["model.swa_start=1"], ("trainer=ddp_sim",)),
    pytest.param(ALTERNATING, ("trainer=ddp_sim",), marks=pytest.mark.slow),
    # Lightning's own DDP (as trainer=gpu trainer.devices=4 gets): it failed at step 2 with "parameters that were
    # not used" until the strategy looked for unused parameters for this update
    pytest.param(ALTERNATING, ("trainer=cpu", "trainer.devices=2"), marks=pytest.mark.slow),
    pytest.param(["model.swa_start=1", "model.lipschitz=gradient_penalty"], ("trainer=ddp_sim",),
                 marks=pytest.mark.slow),
    pytest.param(["experiment=ou_latent_sde"], ("trainer=ddp_sim",), marks=pytest.mark.slow),
])
def test_ranks_stay_identical_and_share_one_run_directory(tmp_path, overrides, trainer):
    gan = "experiment=ou_latent_sde" not in overrides
    probe = ["+callbacks.probe._target_=tests.test_ddp.FakeBatchProbe",
             f"+callbacks.probe.out_file={tmp_path / 'fakes.txt'}"] if gan else []
    probe += ["+callbacks.unused._target_=tests.test_ddp.UnusedParametersProbe",
              f"+callbacks.unused.out_file={tmp_path / 'unused.txt'}"]
    out, check = _ddp_run(tmp_path, overrides + probe, trainer)
    # DDP looked for unused parameters only for the alternating update (the others trained without, ranks equal)
    assert (tmp_path / "unused.txt").read_text() == str("model.update=alternating" in overrides)
    lines = check.read_text().split()
    steps = [int(x) for x in lines[0::3]]
    assert steps == [1, 2, 3] and set(lines[1::3]) == {"2"}
    if gan:  # each rank generated its own fake batch at every step (identical ones add no information)
        sums = [[float(x) for x in line.split()] for line in (tmp_path / "fakes.txt").read_text().splitlines()]
        assert len(sums) == 3 and all(rank0 != rank1 for rank0, rank1 in sums)
    # One output directory per run, not per rank; rank 0 alone writes the logs and checkpoints.
    written = {"check.txt", "run", "unused.txt"} | ({"fakes.txt"} if gan else set())
    assert {p.name for p in tmp_path.iterdir()} == written
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.read_csv(out / "csv" / "metrics.csv")
    assert metrics["train/step"].max() == 3


@pytest.mark.slow
@pytest.mark.parametrize("trainer", [("trainer=ddp_sim",), ("trainer=cpu", "trainer.devices=2")])
def test_ddp_validation_and_test_figures_equal_a_single_process_on_the_same_weights(tmp_path, trainer):
    # Lightning's DistributedSampler split (and padded) the test split between the ranks: test/elbo was -2536 under
    # ddp_sim against -2320 from one process testing the same checkpoint; ddp_sim turned the sampler off, but
    # trainer.devices=2 alone (Lightning's default use_distributed_sampler) read -638.6 against -747.3.
    from neuralsde.checkpoints import load_model

    out, _ = _ddp_run(tmp_path, ["experiment=ou_latent_sde", "model.train_steps=2",
                                 "callbacks.metrics.test_metrics=[marginal_w1]"], trainer)
    ddp = pd.read_csv(out / "csv" / "metrics.csv")["test/elbo"].dropna().iloc[-1]
    model, datamodule, _ = load_model(out / "checkpoints" / "last.ckpt")
    trainer = pl.Trainer(devices=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    single = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/elbo"]
    assert ddp == pytest.approx(single, rel=1e-5)


@pytest.mark.parametrize("model, leaves_unused", [
    ([], False), (["model.update=alternating"], True), (["experiment=ou_latent_sde"], False)])
def test_ddp_looks_for_unused_parameters_only_where_the_model_leaves_some(tmp_path, model, leaves_unused):
    # trainer=ddp set find_unused_parameters for every model: the simultaneous update and the latent SDE paid a
    # graph traversal per step and torch's notice on every rank; Lightning's own DDP (trainer.devices=2) never set
    # it, and the alternating update failed at step 2 with "parameters that were not used".
    from neuralsde.distributed import ddp_options
    from neuralsde.training import build
    from tests.conftest import compose_config, shrink

    _, built = build(shrink(compose_config(model), tmp_path))
    assert built.leaves_parameters_unused is leaves_unused
    fix = {"strategy": "ddp_find_unused_parameters_true"} if leaves_unused else {}
    for trainer, options in ((["trainer=ddp"], {"strategy": {"find_unused_parameters": leaves_unused}}),
                             (["trainer=ddp_sim"], {"strategy": {"find_unused_parameters": leaves_unused}}),
                             (["trainer=cpu", "trainer.devices=2"], fix),
                             (["trainer=gpu", "trainer.devices=4"], fix),
                             (["trainer=gpu", "trainer.devices=[0,2]"], fix),
                             (["trainer=gpu", "trainer.devices=2", "+trainer.strategy=ddp"], fix),
                             (["trainer=cpu"], {}),  # one process: no DDP to configure
                             (["trainer=cpu", "trainer.devices=2", "+trainer.strategy=ddp_spawn"],
                              {"strategy": "ddp_spawn_find_unused_parameters_true"} if leaves_unused else {})):
        assert ddp_options(compose_config([*model, *trainer]).trainer, built) == options, trainer
    # set by hand: kept where it works (e.g. to measure its cost), refused where DDP would fail at step 2
    forced = compose_config([*model, "trainer=ddp_sim",
                             f"+trainer.strategy.find_unused_parameters={not leaves_unused}"]).trainer
    if leaves_unused:
        with pytest.raises(ConfigError, match="model.update=alternating leaves the generator without gradients"):
            ddp_options(forced, built)
    else:
        assert ddp_options(forced, built) == {}


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_writes_the_config_and_says_where_it_resumes(tmp_path, monkeypatch, caplog, rank):
    # every DDP process wrote config.yaml (rank 1 again, while a reader such as aggregate.py may read it) and
    # logged the resume=auto line; rank 1 stands in here for Lightning's second process up to building the data
    from pytorch_lightning.utilities import rank_zero_only

    import neuralsde.training as training
    from tests.conftest import compose_config, shrink

    class Built(Exception):
        pass

    def stop(cfg, **kwargs):
        raise Built

    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.setattr(training, "build", stop)
    cfg = shrink(compose_config(["resume=auto", f"resume_dir={tmp_path}"]), tmp_path)  # its own dir: a fresh start
    with caplog.at_level("INFO", logger="neuralsde.resume"), pytest.raises(Built):
        training.train(cfg)
    assert (tmp_path / "config.yaml").is_file() is (rank == 0)
    assert ("resume=auto: no checkpoint in this job's directory yet" in caplog.text) is (rank == 0)


@pytest.mark.parametrize("trainer", [["trainer=ddp_sim"], ["trainer=cpu", "trainer.devices=2"]])
def test_lightning_leaves_the_training_and_evaluation_loaders_as_they_are_under_ddp(tmp_path, trainer):
    # What Lightning does to the datamodule's loaders under DDP with its default use_distributed_sampler (which
    # trainer=ddp/ddp_sim had turned off; trainer=gpu trainer.devices=4 has it on): the training loader is left to
    # StepBatches' own sharding, and each rank's evaluation batches hold every path of the split, once, in order.
    from hydra.utils import instantiate
    from pytorch_lightning.trainer.states import RunningStage

    from neuralsde.training import build
    from tests.conftest import compose_config, shrink

    cfg = shrink(compose_config(trainer), tmp_path)
    datamodule, _ = build(cfg)
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer._accelerator_connector.use_distributed_sampler and trainer.world_size == 2
    prepare = trainer._data_connector._prepare_dataloader
    train = datamodule.train_dataloader()
    assert prepare(train, shuffle=True, mode=RunningStage.TRAINING) is train
    for name, stage in (("val", RunningStage.VALIDATING), ("test", RunningStage.TESTING)):
        loader = prepare(getattr(datamodule, f"{name}_dataloader")(), shuffle=False, mode=stage)
        seen = torch.cat([paths for paths, _ in loader])
        assert torch.equal(seen.nan_to_num(), getattr(datamodule, name).nan_to_num())


class UnusedParametersProbe(pl.Callback):
    """Rank 0 writes whether the DDP wrapper it trains in looks for unused parameters ("True" / "False")."""

    def __init__(self, out_file: str):
        self.out_file = out_file

    def on_train_start(self, trainer, module):
        if trainer.is_global_zero:
            with open(self.out_file, "w") as f:
                f.write(str(trainer.strategy.model.find_unused_parameters))


class FakeBatchProbe(pl.Callback):
    """Rank 0 writes a line per training step: the sum of the paths each rank's generator made in that step."""

    def __init__(self, out_file: str):
        self.out_file, self.sums = out_file, []

    def on_train_start(self, trainer, module):
        module.generator.register_forward_hook(lambda net, args, out: self.sums.append(out.detach().double().sum()))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.sums.clear()  # validation between steps may sample from the generator

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        mine = torch.stack(self.sums).sum().reshape(1)
        gathered = [torch.zeros_like(mine) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, mine)
        if trainer.is_global_zero:
            with open(self.out_file, "a") as f:
                f.write(" ".join(repr(float(g)) for g in gathered) + "\n")


def _check_finite_on_rank(rank, world, init_file, skip, out_dir):
    from neuralsde.data.preprocessing import Normalizer
    from neuralsde.errors import TrainingDivergedError
    from neuralsde.module_base import GenerativeModule

    # a rank left alone in a collective fails after a minute instead of gloo's 30
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = GenerativeModule(torch.arange(5.0), Normalizer(torch.zeros(1), torch.ones(1)), train_steps=3,
                                 skip_nonfinite=skip)
        try:
            result = model.check_finite("train/d_loss", torch.tensor(float("nan") if rank == 1 else 0.5))
        except TrainingDivergedError as err:
            result = str(err)
        (out_dir / f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("skip", [True, False])
def test_a_non_finite_loss_on_one_rank_is_decided_alike_on_every_rank(tmp_path, skip):
    # A NaN loss on rank 1 alone: rank 1 skipped the batch (or raised) while rank 0 went on into the gradient
    # all-reduce and waited there for good (ddp_sim with model.skip_nonfinite=true hung for 13 minutes).
    mp.spawn(_check_finite_on_rank, args=(2, tmp_path / "init", skip, tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    if skip:
        assert results == [False, False]
    else:
        assert all("train/d_loss is" in r and "on process(es) [1] of 2 at training step 0" in r for r in results)
        assert "is nan on process(es) [1]" in results[1]


class PoisonRankOne(pl.Callback):
    """Turns rank 1's batch at training step 1 into NaNs (the other rank's stays finite)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_rank == 1 and module.steps_taken == 1:
            for tensor in batch:
                tensor.fill_(float("nan"))


@pytest.mark.slow
def test_ddp_run_skips_a_batch_that_is_non_finite_on_one_rank_on_every_rank(tmp_path):
    out, check = _ddp_run(tmp_path, ["model.swa_start=1", "model.skip_nonfinite=true",
                                     "+callbacks.poison._target_=tests.test_ddp.PoisonRankOne"])
    lines = check.read_text().split()
    assert [int(x) for x in lines[0::3]] == [1, 2, 3]  # every step ended with the ranks' parameters equal
    last = pd.read_csv(out / "csv" / "metrics.csv").dropna(subset=["train/d_loss"]).iloc[-1]
    assert last["train/step"] == 3 and abs(last["train/d_loss"]) < 1e3  # trained on past the skipped batch


class MetricWorkProbe(pl.Callback):
    """Appends a line ``<stage> <metric>`` to ``<out_dir>/work_<rank>.txt`` for every metric this process computes,
    and writes the ``val/`` and ``test/`` figures it ends with to ``<out_dir>/figures_<rank>.json``."""

    def __init__(self, out_dir: str):
        self.out_dir, self.saved = Path(out_dir), None

    def setup(self, trainer, module, stage):
        from neuralsde.metrics import suite

        if self.saved is not None:
            return
        self.saved = dict(suite.METRICS)
        work = self.out_dir / f"work_{trainer.global_rank}.txt"

        def counted(name, compute):
            def run(*args):
                with open(work, "a") as f:
                    f.write(f"{trainer.state.stage.value} {name}\n")
                return compute(*args)
            return run

        for name, metric in self.saved.items():
            suite.METRICS[name] = dataclasses.replace(metric, compute=counted(name, metric.compute))

    def teardown(self, trainer, module, stage):
        from neuralsde.metrics import suite

        if self.saved is not None:
            suite.METRICS.update(self.saved)
            self.saved = None

    def on_validation_end(self, trainer, module):
        self._save(trainer, "val/")

    def on_test_end(self, trainer, module):
        self._save(trainer, "test/")

    def _save(self, trainer, stage):
        path = self.out_dir / f"figures_{trainer.global_rank}.json"
        figures = json.loads(path.read_text()) if path.exists() else {}
        figures.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(stage)})
        path.write_text(json.dumps(figures))


def test_ddp_computes_the_sample_metrics_once_on_rank_zero_and_every_rank_logs_a_single_process_s_figures(tmp_path):
    # every DDP process sampled, trained the real/fake classifier and the TSTR forecaster and bootstrapped the
    # signature MMD, to the same figures: the test stage's metric work was done once per process
    from hydra.utils import instantiate

    from neuralsde.checkpoints import load_model

    probe = tmp_path / "probe"
    probe.mkdir()
    out, _ = _ddp_run(tmp_path, ["model.train_steps=2", "+callbacks.probe._target_=tests.test_ddp.MetricWorkProbe",
                                 f"+callbacks.probe.out_dir={probe}"])
    assert not (probe / "work_1.txt").exists()  # rank 1 computed no metric, in validation or test
    work = (probe / "work_0.txt").read_text().splitlines()
    val_metrics = ["sig_mmd", "marginal_w1", "marginal_ks", "acf_error", "cross_corr_error"]
    assert [line for line in work if line.startswith("validate ")] == [f"validate {m}" for m in val_metrics]
    tested = [line.split()[1] for line in work if line.startswith("test ")]
    assert tested.count("real_fake") == 1 and tested.count("tstr") == 1 and tested.count("sig_mmd") == 2  # + ref_
    ranks = [json.loads((probe / f"figures_{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1] and {"test/real_fake_acc", "test/tstr_loss", "val/sig_mmd"} <= set(ranks[0])

    # one process testing the same weights with the same metric settings computes the same work and figures
    model, datamodule, cfg = load_model(out / "checkpoints" / "last.ckpt")
    single = tmp_path / "single"
    single.mkdir()
    metrics = instantiate(cfg.callbacks.metrics, out_dir=str(single))
    trainer = pl.Trainer(devices=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[metrics, MetricWorkProbe(str(single))])
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert (single / "work_0.txt").read_text().splitlines() == [line for line in work if line.startswith("test ")]
    alone = json.loads((single / "figures_0.json").read_text())
    assert alone == {k: v for k, v in ranks[0].items() if k.startswith("test/")}


def _rank_zero_work(rank, world, init_file, out_dir):
    from neuralsde.distributed import computed_on_rank_zero

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = []
        for fail in (None, ValueError("no test split"), KeyboardInterrupt()):  # the last: a second Ctrl-C
            def compute(fail=fail):
                (out_dir / f"ran_{type(fail).__name__}_{rank}").touch()
                if fail is not None:
                    raise fail
                return {"sig_mmd": 0.25, "rank": rank}
            try:
                results.append(computed_on_rank_zero(compute))
            except BaseException as err:
                results.append(f"{type(err).__name__}: {err}")
        (out_dir / f"{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_work_computed_on_rank_zero_reaches_every_rank_and_so_does_its_error(tmp_path):
    mp.spawn(_rank_zero_work, args=(2, tmp_path / "init", tmp_path), nprocs=2)
    assert sorted(p.name for p in tmp_path.glob("ran_*")) == ["ran_KeyboardInterrupt_0", "ran_NoneType_0",
                                                               "ran_ValueError_0"]
    (done, rank0_error, rank0_stop), (sent, rank1_error, rank1_stop) = [
        json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert done == sent == {"sig_mmd": 0.25, "rank": 0}
    # rank 1 learns of rank 0's error instead of waiting in the broadcast until the timeout
    assert rank0_error == "ValueError: no test split"
    assert rank1_error == "RuntimeError: Rank 0 failed in work it does for every rank: ValueError: no test split"
    # and of an interrupt: only an Exception was sent on, so it learned of a KeyboardInterrupt when rank 0's process
    # went away (gloo's "Connection closed by peer"; NCCL waits out its timeout, 30 minutes by default)
    assert rank0_stop == "KeyboardInterrupt: "
    assert rank1_stop == "RuntimeError: Rank 0 failed in work it does for every rank: KeyboardInterrupt: "


def test_a_resume_under_another_number_of_processes_says_what_changes_in_the_batch():
    from neuralsde.module_base import batch_change_note

    assert batch_change_note({"processes": 2, "batch_size": 16}, {"processes": 2, "batch_size": 16}) is None
    assert batch_change_note(None, {"processes": 1, "batch_size": 16}) is None  # a checkpoint from before the record
    level, text = batch_change_note({"processes": 2, "batch_size": 16}, {"processes": 1, "batch_size": 16})
    assert level == "warn" and "(32 paths a step)" in text and "(16 paths a step)" in text
    assert "Fix: data.batch_size=32 keeps" in text
    # the laptop run moved to a 4-GPU node: the paper's batch of 128 is kept by 32 a process
    _, text = batch_change_note({"processes": 1, "batch_size": 128}, {"processes": 4, "batch_size": 128})
    assert "Fix: data.batch_size=32 keeps" in text
    _, text = batch_change_note({"processes": 1, "batch_size": 100}, {"processes": 3, "batch_size": 100})
    assert "3 x data.batch_size = 100" in text
    level, text = batch_change_note({"processes": 2, "batch_size": 16}, {"processes": 1, "batch_size": 32})
    assert level == "info" and "the same paths a step" in text


def test_a_resume_warns_when_the_checkpoints_batch_had_another_number_of_processes(tmp_path):
    # the note's wiring in one process (the DDP run that writes such a checkpoint is the slow test below): a
    # checkpoint recorded as trained by 2 processes x 16 paths, resumed by 1 x 16
    from tests.test_resume import _run

    _run(tmp_path, "a", 2)
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["neuralsde"]["batch"] == {"processes": 1, "batch_size": 16}
    ckpt["neuralsde"]["batch"]["processes"] = 2
    torch.save(ckpt, tmp_path / "ddp.ckpt")
    with pytest.warns(UserWarning, match=r"trained by 2 process\(es\) x data.batch_size=16 \(32 paths a step\); "
                                         r"this run has 1 x 16 \(16 paths a step\).*Fix: data.batch_size=32 keeps"):
        _run(tmp_path, "b", 3, tmp_path / "ddp.ckpt")


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_on_one_process_and_says_the_batch_changed(tmp_path):
    out, _ = _ddp_run(tmp_path, ["model.swa_start=1"])
    res = subprocess.run([sys.executable, "train.py", "trainer=cpu", *TINY, "model.train_steps=4", "model.swa_start=1",
                          f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained by 2 process(es) x data.batch_size=16 (32 paths a step); this run has 1 x 16" in res.stderr
    ckpt = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["neuralsde"]["train_step"] == 4 and ckpt["neuralsde"]["batch"] == {"processes": 1, "batch_size": 16}


@pytest.mark.slow
def test_ddp_reruns_and_resumes_are_bit_identical(tmp_path):
    # the README's claim for trainer=ddp_sim: same seed and number of processes, same run; a resume under the same
    # number of processes continues as the uninterrupted run (each rank's noise stream comes from rank 0's RNG state)
    steps = ["model.train_steps=4", "model.swa_start=1", "trainer.log_every_n_steps=1",
             "callbacks.model_checkpoint.every_n_train_steps=4"]  # optimiser steps: after two batches
    full, _ = _ddp_run(tmp_path, steps, name="full")
    again, _ = _ddp_run(tmp_path, steps, name="again")
    resumed, _ = _ddp_run(tmp_path, [*steps, f"ckpt_path={full / 'checkpoints' / 'step000004.ckpt'}"], name="resumed")

    def losses(run):
        logged = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["train/d_loss"])
        return dict(zip(logged["train/step"].astype(int), logged["train/d_loss"], strict=True))

    def state(run):
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    assert list(losses(full)) == [1, 2, 3, 4] and losses(again) == losses(full)
    assert losses(resumed) == {k: v for k, v in losses(full).items() if k > 2}
    for other in (again, resumed):
        assert all(torch.equal(value, state(other)[key]) for key, value in state(full).items())
