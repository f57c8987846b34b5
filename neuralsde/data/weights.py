"""Trajectories of individual network weights during SGD training, generated in code.

Kidger et al. (2021) model a "weights" dataset of parameter trajectories recorded while training
small networks; no copy was published, so this module regenerates an equivalent offline:

Recipe. ``n_runs`` independent runs (run ``r`` seeded ``seed + r``) each train a one-hidden-layer tanh
MLP (``in -> hidden -> out``) with plain minibatch SGD on cross-entropy, on either scikit-learn's
bundled ``load_digits`` (1,797 8x8 images, features scaled to [0, 1]; ships in the wheel, no
download) or a synthetic Gaussian-blob classification task. ``n_weights`` parameter positions are drawn
once (seeded by ``seed``) from all weights and biases, the same positions in every run, and recorded
at step 0 and every ``record_every`` steps, ``n_records`` times. Each recorded weight is one univariate
series, like the paper's data. The exact recipe of the paper was not verified.

The generated data carry no third-party licence (digits: scikit-learn's copy of the UCI optdigits
set, CC BY 4.0).
"""
from __future__ import annotations

import torch

from neuralsde.data.base import RawSeries, user_path
from neuralsde.data.cache import cache_path, cached
from neuralsde.errors import bad_option

NAME = "weights"
VERSION = 1


def _task(task: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(M, D)`` float32 and integer targets ``(M,)`` of the training task."""
    if task == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(seed)
    n_classes, dim, per_class = 4, 16, 256
    centres = torch.randn(n_classes, dim, generator=gen) * 1.5
    targets = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[targets] + torch.randn(len(targets), dim, generator=gen), targets


def train_and_record(x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor, hidden: int, lr: float,
                     batch_size: int, n_records: int, record_every: int, seed: int) -> torch.Tensor:
    """Train one MLP by SGD and record the flat parameters at ``positions``.

    x: ``(M, D)``, y: ``(M,)`` int. positions: ``(W,)`` indices into the flattened parameter vector
    ``[W1 (D*hidden), b1 (hidden), W2 (hidden*K), b2 (K)]``. Returns ``(n_records, W)`` float32.
    """
    gen = torch.Generator().manual_seed(seed)
    d, k = x.shape[1], int(y.max()) + 1
    # Explicit initialisation from our own generator keeps runs independent of the global RNG.
    params = [torch.randn(d, hidden, generator=gen) / d ** 0.5, torch.zeros(hidden),
              torch.randn(hidden, k, generator=gen) / hidden ** 0.5, torch.zeros(k)]
    for p in params:
        p.requires_grad_(True)
    records = []
    for step in range((n_records - 1) * record_every + 1):
        if step % record_every == 0:
            records.append(torch.cat([p.detach().flatten() for p in params])[positions])
        if step == (n_records - 1) * record_every:
            break
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        w1, b1, w2, b2 = params
        logits = torch.tanh(x[idx] @ w1 + b1) @ w2 + b2
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
    return torch.stack(records)


class WeightsSource:
    """SGD weight trajectories; see the module docstring for the recipe.

    Options: ``n_runs`` (default 16), ``n_weights`` recorded per run (default 16), ``n_records`` points
    per trajectory (default 64), ``record_every`` SGD steps (default 10), ``hidden`` units (default 32),
    ``lr`` (default 0.1), ``batch_size`` (default 32), ``task`` ``digits`` | ``synthetic``, ``seed``,
    ``layout`` ``per_weight`` (default: each weight a 1-channel series) | ``per_run`` (each run one
    series with ``n_weights`` channels), ``cache_dir`` (default ``data_dir``) and ``use_cache``.

    ``load()`` returns values ``(n_runs * n_weights, n_records, 1)`` (per_weight; ordered run-major,
    labels ``(N,)`` = run index) or ``(n_runs, n_records, n_weights)`` (per_run), times
    ``record_every * (0..n_records-1)`` (SGD steps). Defaults generate in a few seconds on CPU.
    """

    def __init__(self, data_dir: str = "datasets", n_runs: int = 16, n_weights: int = 16, n_records: int = 64,
                 record_every: int = 10, hidden: int = 32, lr: float = 0.1, batch_size: int = 32,
                 task: str = "digits", seed: int = 0, layout: str = "per_weight",
                 cache_dir: str | None = None, use_cache: bool = True):
        if task not in ("digits", "synthetic"):
            raise bad_option("task", task, "'digits' or 'synthetic'", "choose one of them.")
        if layout not in ("per_weight", "per_run"):
            raise bad_option("layout", layout, "'per_weight' or 'per_run'", "choose one of them.")
        if n_records < 2 or record_every < 1 or n_runs < 1 or n_weights < 1:
            raise bad_option("n_records/record_every/n_runs/n_weights", (n_records, record_every, n_runs,
                             n_weights), "n_records >= 2 and the others >= 1", "increase them.")
        self.options = {"n_runs": n_runs, "n_weights": n_weights, "n_records": n_records,
                        "record_every": record_every, "hidden": hidden, "lr": lr, "batch_size": batch_size,
                        "task": task, "seed": seed, "layout": layout}
        self.cache_dir = str(user_path(cache_dir if cache_dir is not None else data_dir))
        self.use_cache = use_cache

    def load(self) -> RawSeries:
        """Generate (or reuse the cached) trajectories; shapes in the class docstring."""
        if not self.use_cache:
            return self._build().validate(NAME)
        path = cache_path(self.cache_dir, NAME, self.options)
        return cached(path, VERSION, self._build, self.options).validate(NAME)

    def _build(self) -> RawSeries:
        o = self.options
        x, y = _task(o["task"], o["seed"])
        k = int(y.max()) + 1
        n_params = x.shape[1] * o["hidden"] + o["hidden"] + o["hidden"] * k + k
        # Weights fed by a constant input (digits' blank border pixels) never move: don't record them.
        live = torch.ones(n_params, dtype=torch.bool)
        live[:x.shape[1] * o["hidden"]] = (x.std(0) > 0).repeat_interleave(o["hidden"])
        candidates = live.nonzero().flatten()
        if o["n_weights"] > len(candidates):
            raise bad_option("n_weights", o["n_weights"], f"at most {len(candidates)}", "record fewer weights.")
        order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(o["seed"]))
        positions = candidates[order[:o["n_weights"]]].sort().values
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # these ops are tiny: thread overhead made generation ~15x slower
        try:
            runs = torch.stack([
                train_and_record(x, y, positions, o["hidden"], o["lr"], o["batch_size"], o["n_records"],
                                 o["record_every"], o["seed"] + r)
                for r in range(o["n_runs"])])  # (runs, records, weights)
        finally:
            torch.set_num_threads(threads)
        times = torch.arange(o["n_records"], dtype=torch.float32) * o["record_every"]
        meta = {"time_unit": "SGD step", "positions": positions.tolist(), "task": o["task"]}
        if o["layout"] == "per_run":
            return RawSeries(times=times, values=runs.contiguous(),
                             channel_names=[f"w{int(p)}" for p in positions], meta=meta)
        values = runs.permute(0, 2, 1).reshape(-1, o["n_records"], 1).contiguous()
        labels = torch.arange(o["n_runs"]).repeat_interleave(o["n_weights"])
        return RawSeries(times=times, values=values, channel_names=["weight"], labels=labels,
                         label_names=[f"run{r}" for r in range(o["n_runs"])], meta=meta)
