"""Latent SDE VAE: shapes, masking, KL, exact adjoint gradients, learning, experiments, checkpoints, errors."""
import math
import re
import warnings

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from latent_sde.components.decoder import Decoder
from latent_sde.components.encoder import Encoder
from latent_sde.module import DegenerateDiffusionWarning, LatentSDE
from latent_sde.support import kl_normal
from neuralsde.checkpoints import load_model
from neuralsde.data.interpolation import fill_missing
from neuralsde.data.preprocessing import Normalizer
from neuralsde.errors import CheckpointError, ConfigError
from neuralsde.fast.probe import _FUSED
from neuralsde.solver import SolverConfig
from neuralsde.training import build, train
from tests.autograd_graph import adjoint_nodes
from tests.conftest import SHARED_DATA
from tests.library_solves import record_library_solves

T, C = 9, 2


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny networks: a second thread only adds synchronisation (and oversubscribes shared CI cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(dtype=torch.float32, seed=0, **kwargs):
    torch.manual_seed(seed)
    options = dict(encoder={"kind": "gru", "hidden_size": 8}, latent_size=3, context_size=4, hidden_size=8,
                   num_layers=1, train_steps=10)
    options.update(kwargs)
    solver = options.pop("solver", SolverConfig())
    model = LatentSDE(torch.arange(T).float(), Normalizer(torch.zeros(C), torch.ones(C)), solver, **options)
    return model.to(dtype)


def make_batch(dtype=torch.float32, batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    paths = torch.randn(batch, T, 1 + C, generator=gen).to(dtype)
    paths[..., 0] = torch.arange(T)
    paths[0, 3, 1] = paths[2, 0, 2] = float("nan")
    return paths, fill_missing(paths)


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["gru", "cde"])
def test_shapes(kind):
    model = make_model(encoder={"kind": kind, "hidden_size": 8})
    paths, filled = make_batch()
    context, mean, log_std = model.encoder(paths, filled)
    assert context.shape == (4, T, 4) and mean.shape == log_std.shape == (4, 3)
    log_lik, kl, zs = model.elbo_terms(paths, filled, gen())
    assert log_lik.shape == kl.shape == (4,) and zs.shape == (4, T, 3)
    assert torch.isfinite(log_lik).all() and torch.isfinite(kl).all()
    sample = model.sample(5, gen())
    assert sample.shape == (5, T, 1 + C) and torch.equal(sample[0, :, 0], model.times)
    rec = model.reconstruct(paths)
    assert rec.shape == paths.shape and torch.isfinite(rec).all()


@pytest.mark.parametrize("method, adjoint, num_layers", [("reversible_heun", True, 1), ("reversible_heun", True, 2),
                                                         ("reversible_heun", False, 1), ("midpoint", True, 2),
                                                         ("midpoint", False, 1)])
def test_cde_encoder_on_the_fast_backend_equals_torchcde(method, adjoint, num_layers, monkeypatch):
    import torchcde
    paths, filled = make_batch(torch.float64)
    out, cdeint, calls = [], torchcde.cdeint, []
    for backend in ("torchsde", "fast"):
        if backend == "fast":  # it must not reach torchcde
            monkeypatch.setattr(torchcde, "cdeint", lambda *a, **k: pytest.fail("torchcde.cdeint called"))
        else:  # and the reference must: not the fast solve twice
            monkeypatch.setattr(torchcde, "cdeint", lambda *a, **k: calls.append(1) or cdeint(*a, **k))
        torch.manual_seed(0)
        solver = SolverConfig(method=method, adjoint=adjoint, backend=backend)
        encoder = Encoder(C, 4, 3, T, kind="cde", hidden_size=8, num_layers=num_layers, solver=solver).double()
        context, mean, log_std = encoder(paths, filled)
        loss = (context ** 2).sum() + (mean * log_std).sum()
        out.append([context, mean, log_std, *torch.autograd.grad(loss, list(encoder.parameters()))])
    assert out[1][3].abs().sum() > 0 and calls
    assert (encoder.cde_func in _FUSED) == adjoint  # the adjoint solve takes the fused hand-written VJPs
    for fast, ref in zip(out[1], out[0], strict=True):
        assert (fast - ref).norm() <= 1e-12 * ref.norm()


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_missing_channel_contributes_nothing(kind):
    torch.manual_seed(0)
    decoder = Decoder(3, 2, kind=kind, scale=0.3)
    single = Decoder(3, 1, kind=kind, scale=0.3)
    with torch.no_grad():
        single.readout.weight.copy_(decoder.readout.weight[:1])
        single.readout.bias.copy_(decoder.readout.bias[:1])
        decoder.log_scale[1] = 0.7
    zs, values = torch.randn(4, T, 3), torch.randn(4, T, 2)
    values[..., 1] = float("nan")
    values[1, 2, 0] = float("nan")
    full = decoder.log_likelihood(zs, values)
    torch.testing.assert_close(full, single.log_likelihood(zs, values[..., :1]))
    full.sum().backward()
    assert torch.isfinite(decoder.readout.weight.grad).all() and decoder.log_scale.grad[1] == 0


def test_a_fully_missing_channel_keeps_the_elbo_finite():  # masking itself: test_missing_channel_contributes_nothing
    model = make_model()
    paths, filled = make_batch()
    paths[..., 2] = float("nan")  # channel 2 fully missing; the encoder sees it as filled zeros + mask 0
    filled = fill_missing(paths)
    a = model.elbo_terms(paths, filled, gen())
    assert all(torch.isfinite(x).all() for x in a)


@pytest.mark.parametrize("backend", ["torchsde", "fast"])
def test_kl_non_negative_and_zero_when_drifts_equal(backend):
    model = make_model(dtype=torch.float64, solver=SolverConfig(backend=backend))
    paths, filled = make_batch(torch.float64)
    _, kl_path, kl_z0 = model.posterior(paths, filled, gen())
    assert (kl_path >= 0).all() and (kl_z0 >= 0).all() and kl_path.sum() > 0
    model.sde.f = model.sde.h  # posterior drift := prior drift (torchsde looks f up by name)
    _, kl_path, _ = model.posterior(paths, filled, gen())
    assert kl_path.abs().max() < 1e-6
    mean, log_std = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert kl_normal(mean, log_std, mean, log_std).abs().max() < 1e-12


def _grads(adjoint: bool, method: str = "reversible_heun", backend: str = "torchsde"):
    model = make_model(torch.float64, solver=SolverConfig(method=method, adjoint=adjoint, backend=backend))
    paths, filled = make_batch(torch.float64)
    log_lik, kl, _ = model.elbo_terms(paths, filled, gen())  # same generator: same z0 noise and Brownian sample
    assert bool(adjoint_nodes(kl.grad_fn)) == adjoint  # an adjoint against backpropagation, not one twice
    (kl - log_lik).mean().backward()
    encoder = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    return torch.cat([p.grad.flatten() for p in model.parameters()]), encoder


@pytest.mark.parametrize("backend", ["torchsde", "fast"])
def test_reversible_heun_adjoint_gradients_are_exact_with_logqp(backend):
    adjoint, adjoint_encoder = _grads(True, backend=backend)
    direct, direct_encoder = _grads(False, backend=backend)
    assert adjoint_encoder.abs().sum() > 0  # the context carries gradients back into the encoder
    assert ((adjoint - direct).norm() / direct.norm()) < 1e-10
    assert ((adjoint_encoder - direct_encoder).norm() / direct_encoder.norm()) < 1e-10


def test_fast_backend_solves_both_methods_without_falling_back(tiny_cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both methods have the KL term on the fast backend: no fallback
        for method in ("reversible_heun", "midpoint"):
            _, model = build(tiny_cfg(["experiment=ou_latent_sde", f"solver={method}", "solver.backend=fast"]))
            assert model.solver.backend == "fast" and model.solver.method == method
            paths, filled = make_batch()
            model = make_model(solver=SolverConfig(backend="fast", method=method))
            zs, kl_path, _ = model.posterior(paths, filled, gen())
            assert zs.shape == (4, T, 3) and (kl_path > 0).all()


@pytest.mark.parametrize("override, value", [("model.encoder.kind", "transformer"), ("model.latent_size", 0),
                                             ("model.likelihood.kind", "poisson"), ("model.optimizer.lr_decay", 2.0)])
def test_bad_options_are_config_errors(tiny_cfg, override, value):
    # the option as typed, with its value, and a fix that names the option again
    said = rf"{re.escape(override)}='?{value}'? is not valid: expected .*\. Fix: .*{re.escape(override)}="
    with pytest.raises(ConfigError, match=said):
        build(tiny_cfg(["experiment=ou_latent_sde", f"{override}={value}"]))


def test_degenerate_diffusion_warns_once():
    model = make_model(diffusion_warn_threshold=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model._check_diffusion(0.1)
        model._check_diffusion(0.05)
    hits = [w for w in caught if issubclass(w.category, DegenerateDiffusionWarning)]
    assert len(hits) == 1 and "ODE" in str(hits[0].message) and "diffusion.floor" in str(hits[0].message)


@pytest.mark.parametrize("experiment", ["ou_latent_sde", "lorenz_latent_sde", "air_quality_latent_sde"])
def test_experiment_fast_dev_run(tiny_cfg, tmp_path, experiment):
    if experiment == "air_quality_latent_sde" and not (SHARED_DATA / "beijing_air_quality").is_dir():
        # without it the source tried to download (a URLError offline): the README says such tests skip
        pytest.skip(f"shared data folder {SHARED_DATA / 'beijing_air_quality'} is absent")
    cfg = tiny_cfg([f"experiment={experiment}"])
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
        if experiment != "ou_latent_sde":  # the evaluation suite is checked once (OU); it dominates the runtime
            cfg.callbacks.pop("metrics", None)
    metrics = train(cfg)
    for key in ("train/elbo", "train/log_lik", "train/kl", "train/diffusion_mean", "val/elbo", "val/kl",
                "val/diffusion_mean", "test/elbo", "test/log_lik", "test/diffusion_mean"):
        assert key in metrics and metrics[key] == metrics[key], key
    assert (tmp_path / "plots" / "reconstruction.png").stat().st_size > 1000


def test_model_latent_sde_under_any_experiment_draws_its_reconstruction(tiny_cfg, tmp_path):
    """python train.py model=latent_sde (the default experiment, ou_sdegan) wrote samples.png only: the
    reconstruction figure was listed by the *_latent_sde experiments alone. The SDE-GAN's run is left without one."""
    cfg = tiny_cfg(["model=latent_sde"], steps=2)
    with open_dict(cfg):
        cfg.test = False
        cfg.callbacks.pop("metrics")
    train(cfg)
    assert (tmp_path / "plots" / "reconstruction.png").stat().st_size > 1000
    gan = tmp_path / "gan"
    cfg = tiny_cfg([], steps=1)
    with open_dict(cfg):
        cfg.test = False
        cfg.paths.output_dir = str(gan)
        cfg.callbacks.pop("metrics")
    train(cfg)
    assert (gan / "plots" / "samples.png").is_file() and not (gan / "plots" / "reconstruction.png").exists()


@pytest.mark.parametrize("anneal, warned", [(5, True), (4, True), (3, False), (0, False)])
def test_a_kl_annealing_longer_than_the_run_warns(tiny_cfg, anneal, warned):
    """model.train_steps=50 at the default kl_anneal_steps=100 ended at KL weight 0.49 without a word."""
    cfg = tiny_cfg(["experiment=ou_latent_sde", f"model.kl_anneal_steps={anneal}"], steps=4)
    with open_dict(cfg):
        cfg.test = False
        for name in ("metrics", "latent_sde_plot", "sample_plot"):
            cfg.callbacks.pop(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg)
    hits = [str(w.message) for w in caught if "kl_anneal_steps" in str(w.message)]
    assert len(hits) == int(warned)
    if warned:
        assert f"reaches only {3 / anneal:.3g} at the last step" in hits[0]
        assert "Fix: model.kl_anneal_steps<4" in hits[0]
        assert metrics["train/kl_weight"] == pytest.approx(3 / anneal)  # what the last logged step used
    else:
        assert metrics["train/kl_weight"] == 1.0


@pytest.mark.parametrize("overrides", [["solver=midpoint"], ["model.encoder.kind=cde"],
                                       ["solver.backend=torchsde", "solver.brownian=tree"],
                                       ["model.likelihood.kind=laplace"]])
def test_options_train(tiny_cfg, overrides):
    cfg = tiny_cfg(["experiment=ou_latent_sde", *overrides], steps=2)
    with open_dict(cfg):
        cfg.test = False
        cfg.callbacks.pop("latent_sde_plot")
    metrics = train(cfg)
    assert metrics["train/elbo"] == metrics["train/elbo"]


def test_checkpoint_round_trip_and_resume(tiny_cfg, tmp_path):
    cfg = tiny_cfg(["experiment=ou_latent_sde"], steps=2)
    with open_dict(cfg):
        cfg.test = False
        cfg.callbacks.pop("latent_sde_plot")
        cfg.callbacks.pop("sample_plot")
    train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    loaded = LatentSDE.from_checkpoint(ckpt)
    assert int(loaded.train_step) == 2 and loaded.family == "latent_sde"
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert loaded.sample(3, gen()).shape == (3, 16, 2)
    with open_dict(cfg):
        cfg.model.train_steps = 4
        cfg.ckpt_path = str(ckpt)
        cfg.paths.output_dir = str(tmp_path / "resumed")
    metrics = train(cfg)
    assert metrics["train/step"] == 4


def test_short_run_raises_validation_elbo(tiny_cfg, tmp_path):
    cfg = tiny_cfg(["experiment=ou_latent_sde", "model.kl_anneal_steps=10"], steps=40)
    with open_dict(cfg):
        cfg.data.source.n_paths = 256
    datamodule, model = build(cfg)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0)
    before = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/elbo"]
    trainer.fit(model, datamodule=datamodule)
    after = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/elbo"]
    assert after > before + 0.2 * abs(before), (before, after)


@pytest.mark.parametrize("method, encoder", [("reversible_heun", "gru"), ("reversible_heun", "cde"),
                                             ("midpoint", "cde")])
def test_elbo_gradients_equal_across_backends_at_the_default_sizes(method, encoder, monkeypatch):
    # ou_latent_sde's networks (batch 128, 64 times), float64, the same z0 noise and Brownian increments on both
    # backends: the ELBO's every parameter gradient (encoder, posterior, prior, diffusion, decoder).
    import neuralsde.fast
    import neuralsde.solver
    from neuralsde.fast import GridBrownian, sample_increments

    batch, length, latent = 128, 64, 4
    dW = sample_increments(length - 1, batch, latent + 1, 1.0, torch.Generator().manual_seed(1), torch.float64)
    monkeypatch.setattr(neuralsde.fast, "sample_increments", lambda *a, **k: dW)
    monkeypatch.setattr(neuralsde.solver, "make_brownian", lambda *a, **k: GridBrownian(dW, 0.0, 1.0))
    gen_paths = torch.Generator().manual_seed(0)
    paths = torch.cat([torch.arange(length, dtype=torch.float64).view(1, -1, 1).expand(batch, -1, 1),
                       torch.randn(batch, length, 1, generator=gen_paths, dtype=torch.float64).cumsum(1) * 0.1], -1)
    paths[::7, 5, 1] = float("nan")
    filled = fill_missing(paths)
    out, solved = {}, record_library_solves(monkeypatch)
    for backend in ("torchsde", "fast"):
        torch.manual_seed(0)
        model = LatentSDE(torch.arange(length).float(), Normalizer(torch.zeros(1), torch.ones(1)),
                          SolverConfig(method=method, backend=backend), encoder={"kind": encoder, "hidden_size": 32},
                          latent_size=latent, context_size=16, hidden_size=32, num_layers=2).double()
        solved.clear()
        log_lik, kl, _ = model.elbo_terms(paths, filled, torch.Generator().manual_seed(2))
        reference = (["cdeint", "_VectorField"] if encoder == "cde" else []) + ["LatentSDEFunc"]
        assert solved == (reference if backend == "torchsde" else []), solved
        loss = (kl - log_lik).mean()
        out[backend] = (loss.detach(), *torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                                             allow_unused=True))
    for fast, ref in zip(out["fast"], out["torchsde"], strict=True):
        if ref is None:
            assert fast is None
            continue
        assert (fast - ref).abs().max() <= 1e-10 * ref.abs().max().clamp_min(1e-300)


def test_from_checkpoint_refuses_other_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LatentSDE.from_checkpoint(tmp_path / "none.ckpt")
    sdegan = tmp_path / "sdegan.ckpt"
    torch.save({"neuralsde": {"family": "sdegan"}, "state_dict": {}}, sdegan)
    with pytest.raises(CheckpointError, match=r"holds a 'sdegan' model, not a latent SDE. Fix: .*load_model"):
        LatentSDE.from_checkpoint(sdegan)


def _noiseless_decode(model, n, generator):
    """The decoded prior paths that ``sample`` drew before observation noise existed, step by step."""
    from latent_sde.components.sdes import PriorSDE
    from neuralsde.brownian import draw_entropy
    from neuralsde.solver import sdeint

    mean, log_std = model.pz0[0], model.pz0[1]
    z0 = mean + log_std.exp() * torch.randn((n, mean.numel()), generator=generator, dtype=mean.dtype)
    with torch.no_grad():
        zs = sdeint(PriorSDE(model.sde), z0, model._ts(z0), model.sample_solver, entropy=draw_entropy(generator))
        return model._with_time(model.decoder(zs))


def test_samples_are_the_noiseless_decoded_paths_by_default():
    model = make_model()
    assert model.sample_observation_noise is False and model.hparams.sample_observation_noise is False
    expected = _noiseless_decode(model, 6, gen(4))
    assert torch.equal(model.sample(6, gen(4)), expected)
    on = make_model(sample_observation_noise=True)  # the same weights (seed 0), noise on in the config
    assert torch.equal(on.sample(6, gen(4), observation_noise=False), expected)


@pytest.mark.parametrize("kind, mean_abs", [("gaussian", (2 / torch.pi) ** 0.5), ("laplace", 2 ** -0.5)])
def test_sample_observation_noise_is_the_likelihoods(kind, mean_abs):
    """With model.sample_observation_noise the samples are the decoded paths (the same seed's noiseless sample) plus
    noise whose per-channel std is the likelihood's (Laplace: sqrt(2) x scale) and whose shape is the likelihood's
    (E|noise| / std: sqrt(2/pi) Gaussian, 1/sqrt(2) Laplace)."""
    model = make_model(likelihood={"kind": kind}, sample_observation_noise=True)
    with torch.no_grad():
        model.decoder.log_scale.copy_(torch.tensor([0.2, 0.7]).log())
    std = model.decoder.observation_std()
    torch.testing.assert_close(std, torch.tensor([0.2, 0.7]) * (1.0 if kind == "gaussian" else 2 ** 0.5))
    n = 4000  # 36000 draws per channel: the std's relative standard error is under 1%
    noisy, clean = model.sample(n, gen(5)), model.sample(n, gen(5), observation_noise=False)
    assert torch.equal(noisy[..., 0], clean[..., 0])  # the time channel has no noise
    noise = (noisy - clean)[..., 1:].reshape(-1, C)
    assert (noise != 0).all()
    torch.testing.assert_close(noise.std(0), std, rtol=0.04, atol=0)
    assert (noise.mean(0).abs() < 4 * std / noise.size(0) ** 0.5).all()
    torch.testing.assert_close(noise.abs().mean(0) / std, torch.full((C,), mean_abs), rtol=0.03, atol=0)


def test_noisy_samples_repeat_with_the_seed():
    model = make_model(sample_observation_noise=True)
    first = model.sample(8, gen(7))
    assert torch.equal(first, model.sample(8, gen(7)))
    assert not torch.equal(first, model.sample(8, gen(8)))


def test_sample_observation_noise_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"model.sample_observation_noise='yes' is not valid: expected true or false"):
        make_model(sample_observation_noise="yes")


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_sdegan_refuses_sample_observation_noise(tiny_cfg, value):
    """The option belongs to the latent SDE: on the SDE-GAN (no likelihood) the unknown-option message says so, when
    a model is built (also from a checkpoint's config given it in cfg_overrides)."""
    cfg = tiny_cfg([f"+model.sample_observation_noise={value}"])
    assert cfg.model._target_ == "sdegan.module.SDEGAN"
    with pytest.raises(ConfigError, match=r"model.sample_observation_noise is an option of the latent_sde model "
                                          r"\(model=latent_sde\) only, not of sdegan.module.SDEGAN. Fix: remove "
                                          r"\+model.sample_observation_noise, or train a latent_sde model"):
        build(cfg)


def test_an_sdegan_option_on_the_latent_sde_names_its_family(tiny_cfg):
    cfg = tiny_cfg(["model=latent_sde", "+model.swa_start=3"])
    with pytest.raises(ConfigError, match=r"model.swa_start is an option of the sdegan model \(model=sdegan\) only"):
        build(cfg)


def test_an_sdegan_experiment_with_model_latent_sde_names_the_experiment_not_a_plus_key(tmp_path):
    """Was: "Fix: remove +model.generator", a key the user never typed: experiment=stocks_sdegan set it."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=stocks_sdegan", "model=latent_sde",
                          f"hydra.run.dir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-2000:]
    assert ("ConfigError: model.generator, set by experiment=stocks_sdegan, is an option of the sdegan model, not of "
            "latent_sde.module.LatentSDE: that config is for a sdegan model. Fix: choose a latent_sde experiment "
            "(experiment=air_quality_latent_sde, experiment=lorenz_latent_sde, experiment=ou_latent_sde), or "
            "model=sdegan.") in out
    assert "+model.generator" not in out


@pytest.mark.parametrize("kwargs, message", [
    ({"kl_anneal_steps": 2.5}, r"model.kl_anneal_steps=2.5 is not valid: expected an integer of at least 0"),
    ({"kl_anneal_steps": True}, r"model.kl_anneal_steps=True is not valid"),
    ({"learn_prior_z0": "maybe"}, r"model.learn_prior_z0='maybe' is not valid: expected true or false"),
    ({"likelihood": {"learn_scale": 2}}, r"model.likelihood.learn_scale=2 is not valid: expected true or false"),
    ({"likelihood": {"scale": float("inf")}}, r"model.likelihood.scale=inf is not valid: expected a positive finite"),
    ({"diffusion": {"floor": float("inf")}}, r"model.diffusion.floor=inf is not valid: expected a finite number >= 0"),
    ({"diffusion": {"scale": float("nan")}}, r"model.diffusion.scale=nan is not valid: expected a positive finite"),
    ({"optimizer": {"lr": float("inf")}}, r"model.optimizer.lr=inf is not valid"),
    ({"diffusion_warn_threshold": -1.0}, r"model.diffusion_warn_threshold=-1.0 is not valid: expected a finite number"),
    ({"val_seed": 0.5}, r"model.val_seed=0.5 is not valid: expected an integer"),
    ({"skip_nonfinite": "maybe"}, r"model.skip_nonfinite='maybe' is not valid: expected true or false"),
    ({"encoder": {"kind": "gru", "num_layers": 0}},
     r"model.encoder.num_layers=0 .* Fix: e.g. model.encoder.num_layers=1$"),
])
def test_option_values_are_checked_not_coerced(kwargs, message):
    """Each was accepted: 2.5 and true truncated to an int, 'maybe' and 2 read as true, inf made the likelihood or the
    diffusion infinite (a NaN loss at the first step), a negative threshold silenced the collapse warning."""
    with pytest.raises(ConfigError, match=message):
        make_model(**kwargs)


@pytest.mark.parametrize("overrides, message", [
    (["experiment=ou_latent_sde", "+model.optimizer.momentum=0.9"],
     r"model.optimizer.momentum is not an option of model.optimizer.name=adam \(torch.optim.Adam takes \["),
    (["experiment=ou_latent_sde", "+model.optimizer.weight_decay=-1"],
     r"Adam refused model.optimizer.weight_decay=-1: Invalid weight_decay value: -1. Fix: correct "
     r"model.optimizer.weight_decay"),
    (["+model.optimizer.momentum=0.9"], r"model.optimizer.momentum is not an option of model.optimizer.name=adadelta"),
    (["model.optimizer.name=adamax"], r"model.optimizer.name='adamax' is not valid"),
    # was "not an option of model.optimizer.name=adadelta", which Adadelta's lr is
    (["+model.optimizer.lr=0.1"], r"model.optimizer.lr is not read: the model passes the optimiser its parameters "
                                  r"and its learning rate \(model.optimizer.g_lr and d_lr\). Fix: remove "
                                  r"\+model.optimizer.lr; set model.optimizer.g_lr and d_lr instead."),
])
def test_optimizer_options_are_checked_when_the_model_is_built(tiny_cfg, overrides, message):
    """Keys of model.optimizer that a family does not read go to the optimiser, which Lightning builds once training
    has started: a wrong one ended the run after the data load in a bare TypeError from inside Lightning."""
    with pytest.raises(ConfigError, match=message):
        build(tiny_cfg(overrides))


@pytest.mark.parametrize("overrides, key, value", [
    (["experiment=ou_latent_sde", "model.optimizer.name=sgd", "+model.optimizer.momentum=0.9"], "momentum", 0.9),
    (["model.optimizer.name=adam", "+model.optimizer.betas=[0.5,0.9]"], "betas", [0.5, 0.9])])
def test_optimizer_options_that_the_optimizer_has_reach_it(tiny_cfg, overrides, key, value):
    _, model = build(tiny_cfg(overrides))
    opts = model.configure_optimizers()
    opt = opts["optimizer"] if isinstance(opts, dict) else opts[0]
    assert list(opt.defaults[key]) == value if isinstance(value, list) else opt.defaults[key] == value


def test_float64_training_ends_with_its_reconstruction_and_checkpoint(tiny_cfg, tmp_path):
    """trainer.precision=64-true (the README's advice for long series) trained, then the reconstruction figure fed
    the data module's float32 paths to the float64 model: a DataError at the end of training, and no last.ckpt."""
    cfg = tiny_cfg(["experiment=ou_latent_sde", "trainer.precision=64-true", "model.kl_anneal_steps=0"], steps=1)
    with open_dict(cfg):
        cfg.callbacks.pop("metrics")
    metrics = train(cfg)
    assert (tmp_path / "plots" / "reconstruction.png").stat().st_size > 1000
    # load_model (eval.py, sample.py) rebuilt it in float32: its test/elbo was 7% off the run's (noise in float32)
    model, datamodule, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert model.dtype == torch.float64
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    # the weights themselves, not float32 roundings of them (a cast after loading rounded them on the way)
    assert all(torch.equal(p, saved[name]) for name, p in model.named_parameters())
    datamodule.setup("test")
    elbo = model.split_elbo(datamodule.test_dataloader())  # float32 batches, float64 model
    assert elbo["elbo"] == pytest.approx(metrics["test/elbo"], rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ("+model.diffusion.flor=0.05",
     r"model.diffusion.flor is not an option of model.diffusion \(it takes \['hidden_size', 'floor', 'scale'\]\). "
     r"Fix: model.diffusion.floor=0.05"),
    ("+model.likelihood.scal=0.5", r"model.likelihood.scal is not an option .* Fix: model.likelihood.scale=0.5"),
    ("+model.encoder.hidden=3", r"model.encoder.hidden is not an option of model.encoder .* Fix: "
                                r"model.encoder.hidden_size=3"),
])
def test_an_unknown_key_of_a_model_section_is_named_with_its_section(tiny_cfg, override, message):
    """A mistyped diffusion key was ignored (the floor stayed at its default); encoder and likelihood keys were
    named as "foo in model.<section>"."""
    with pytest.raises(ConfigError, match=message):
        build(tiny_cfg(["experiment=ou_latent_sde", override]))


def test_observation_noise_leaves_later_samples_of_the_stream_alone():
    """sample.py draws n paths a batch_size at a time from one generator: the noise of the first batch advanced it,
    so from the second batch on the noisy samples were other paths (a short OU run, sample.py n=10 batch_size=5: the
    second batch differed from the noiseless file by 2.9 data units per value, against the noise's 0.39)."""
    model = make_model(sample_observation_noise=True)
    with torch.no_grad():
        model.decoder.log_scale.fill_(math.log(0.01))
    clean_gen, noisy_gen = gen(11), gen(11)
    for _ in range(3):
        clean = model.sample(50, clean_gen, observation_noise=False)
        noisy = model.sample(50, noisy_gen)
        noise = (noisy - clean)[..., 1:]
        assert (noise != 0).all()
        torch.testing.assert_close(noise.std(), torch.tensor(0.01), rtol=0.1, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cde_encoder_keeps_the_posterior_finite_on_sparse_data(tiny_cfg, seed):
    """The CDE encoder read the 0/1 observation mask as part of its control; each gap's edge is a jump of 1 in it, and
    on lorenz with half the values missing the CDE's state grew until, at initialisation, the posterior SDE diverged
    (mean KL per path 1.4e9, 8.4e5, 2.0e8 for seeds 0-2 here). It now reads the observations counted from the end,
    over T - 1 (model.encoder.mask=auto: cumulative for the CDE)."""
    cfg = tiny_cfg(["experiment=lorenz_latent_sde", "model.encoder.kind=cde", "data.source.drop_fraction=0.5",
                    f"seed={seed}"])
    with open_dict(cfg):
        cfg.data.source.n_paths = 128
    datamodule, model = build(cfg)
    paths, filled = datamodule.train[:64], datamodule.filled["train"][:64]
    log_lik, kl, _ = model.elbo_terms(paths, filled, gen(0))
    observed = (~torch.isnan(paths[..., 1:])).sum((1, 2))
    assert kl.mean() < 10 and (log_lik / observed).mean() > -200
    assert model.encoder.mask == "cumulative"


def test_encoder_mask_options():
    auto = {kind: Encoder(C, 4, 3, T, kind=kind, mask="auto").mask for kind in ("gru", "cde")}
    assert auto == {"gru": "indicator", "cde": "cumulative"}
    # a checkpoint written before the option has no mask in its config: its encoder reads what it was trained on
    assert make_model(encoder={"kind": "cde", "hidden_size": 8}).encoder.mask == "indicator"
    encoder = Encoder(C, 4, 3, T, kind="cde", mask="cumulative")
    paths, filled = make_batch()
    seen = []
    encoder._run = lambda x: seen.append(x) or torch.zeros(x.size(0), x.size(1), encoder.hidden_size)
    encoder(paths, filled)
    counted = seen[0].flip(1)[..., 1 + C:]  # forward time order again
    expected = (~torch.isnan(paths[..., 1:])).float().flip(1).cumsum(1).flip(1) / (T - 1)
    torch.testing.assert_close(counted, expected)
    with pytest.raises(ConfigError, match=r"model.encoder.mask='count' is not valid"):
        Encoder(C, 4, 3, T, kind="cde", mask="count")
