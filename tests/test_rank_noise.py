"""Under DDP each rank draws its own training noise from a shared, resumable RNG stream (no process group needed)."""
import torch

import neuralsde.module_base as module_base
from neuralsde.data.preprocessing import Normalizer
from neuralsde.module_base import GenerativeModule


class Drawing(GenerativeModule):
    """A family whose training step draws noise from torch's global RNG, as both real families do."""

    def train_batch(self, batch):
        self.drawn = torch.randn(4)
        return None


def _step_as(rank, world, monkeypatch):
    monkeypatch.setattr(module_base, "_rank_and_world", lambda: (rank, world), raising=False)
    torch.manual_seed(0)  # seed_everything: the same seed on every rank
    model = Drawing(torch.arange(5.0), Normalizer(torch.zeros(1), torch.ones(1)), train_steps=3)
    model.training_step(None, 0)
    return model.drawn, torch.get_rng_state()


def test_ranks_draw_different_noise_and_keep_one_shared_stream(monkeypatch):
    noise0, state0 = _step_as(0, 2, monkeypatch)
    noise1, state1 = _step_as(1, 2, monkeypatch)
    # Identical noise on every rank made the SDE-GAN generate one fake batch `devices` times over.
    assert not torch.equal(noise0, noise1)
    # The shared stream advances alike on every rank, so rank 0's checkpointed RNG state resumes them all exactly.
    assert torch.equal(state0, state1)
    # The draws are a function of the shared state and the rank: a rerun (a resumed run) draws the same.
    again, _ = _step_as(1, 2, monkeypatch)
    assert torch.equal(noise1, again)


def test_a_single_process_draws_from_the_global_stream_as_before(monkeypatch):
    noise, _ = _step_as(0, 1, monkeypatch)
    torch.manual_seed(0)
    assert torch.equal(noise, torch.randn(4))
