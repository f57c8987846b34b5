"""Ctrl-C and SIGTERM (SLURM preemption, ``kill``): the run stops at the end of its training step in progress,
writes its ``last.ckpt``, flushes its logs, says how to continue, and exits non-zero. Lightning's own machinery
does most of it: its SIGTERM handler stops the loop at a step's end (``SIGTERMException``), ``on_exception`` hooks
run, then loggers are finalised (the CSV logger writes its buffered rows). Added here: Ctrl-C takes that same path
(Lightning raised ``KeyboardInterrupt`` wherever the step was, a state no checkpoint may hold), the checkpoint
itself, and a non-zero exit status (a ``SIGTERMException`` exits with 0).

Under DDP a stop asked for during a validation waits for its end, where the ranks agree on it: Lightning's evaluation
loop stops each rank between validation batches on its own, and a rank that got the signal later went on into the
validation's collectives (metrics, ``sync_dist``) and failed there ("Connection closed by peer" under gloo, a hang
under NCCL), and no checkpoint was written.

SLURM's requeue notices take the same path (``neuralsde/requeue.py`` says which and who requeues): the job stops at
a step's end, writes ``last.ckpt`` where ``resume=auto`` looks, and only then is requeued."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from neuralsde import requeue
from neuralsde.checkpoints import run_checkpoint, validates_after_this_batch

log = logging.getLogger(__name__)

EXIT_CTRL_C, EXIT_SIGTERM = 130, 143  # a shell's 128 + signal number
NOT_RESUME_OPTIONS = {"ckpt_path", "resume", "resume_dir"}  # replaced by the checkpoint in the resume command


class InterruptCheckpoint(Callback):
    """Writes ``dirpath/last.ckpt`` (through the trainer's checkpoint IO, atomic here) when Ctrl-C, SIGTERM or a
    SLURM requeue notice (then requeues the job) stops training, unless a step was cut off midway (a second Ctrl-C)
    or the run is a ``fast_dev_run``. Other exceptions (a diverged run) write nothing: the last checkpoint written
    before them is the good one.

    Not Lightning's ``OnExceptionCheckpoint``: with one of those among the callbacks, every ``fit`` without a
    ``ckpt_path`` loads the newest ``last.ckpt`` it finds (and warns twice at the start of a fresh run); which
    checkpoint a run continues is ``resume``'s decision here (``neuralsde.resume.resolve_ckpt_path``)."""

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.dirpath, self.filename = dirpath, filename
        self.ctrl_c = False
        self._fit_start_step: int | None = None  # the module's step count when fit began
        self._validation_due: int | None = None  # the step after which Lightning validates by its interval
        self._validated: int | None = None  # the step after which a validation last ended
        self._deferring = False  # in a validation under DDP: a stop waits for its end (see the module's doc)
        self._deferred_stop = False
        self._sigterm_handler = None  # Lightning's, put back at the validation's end
        self.requeue = requeue.Requeue()

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, f"{self.filename}.ckpt")

    def setup(self, trainer, pl_module, stage: str) -> None:
        requeue.take_over_lightning_requeue(trainer, self.requeue)  # before Lightning registers its handlers

    def on_train_start(self, trainer, pl_module) -> None:
        self.ctrl_c = False
        self.requeue.signum = None
        self._fit_start_step = pl_module.steps_taken
        # Installed after Lightning has registered its handlers, so its teardown puts the previous one back.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda signum, frame: self._stop_after_step(trainer))
            for signum in self.requeue.install(lambda signum, frame: self._requeue_after_step(trainer, signum)):
                log.debug("%s: stop at a step's end, save, then requeue", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._validation_due = pl_module.steps_taken if validates_after_this_batch(trainer) else None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.world_size == 1 or trainer.state.fn != TrainerFn.FITTING:
            return
        self._deferring = True
        self._deferred_stop, trainer._signal_connector.received_sigterm = trainer.received_sigterm, False
        if threading.current_thread() is threading.main_thread():
            # Lightning's SIGTERM handler also broadcasts, from inside the handler: that broadcast met a collective of
            # the validation's end on another rank
            self._sigterm_handler = signal.signal(signal.SIGTERM, lambda signum, frame: self._request_stop(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = pl_module.steps_taken
        if self._deferring:
            if self._sigterm_handler is not None:
                signal.signal(signal.SIGTERM, self._sigterm_handler)
                self._sigterm_handler = None
            self._deferring = False
            if _on_any_rank(self._deferred_stop, trainer.strategy.root_device):
                trainer._signal_connector.received_sigterm = True  # every rank stops at the same point
            self._deferred_stop = False

    def _request_stop(self, trainer) -> None:
        """Lightning's graceful stop at the training step's end (``SIGTERMException``), or at the end of a validation
        in progress under DDP."""
        if self._deferring:
            self._deferred_stop = True
        else:  # a private name: the ctrl_c test fails if it changes
            trainer._signal_connector.received_sigterm = True

    def _stop_after_step(self, trainer) -> None:
        self.ctrl_c = True
        self._request_stop(trainer)  # as a SIGTERM asks
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        # os.write: a print or log call from a signal handler can meet the stream's buffer mid-write
        os.write(2, b"\nCtrl-C: stopping at the end of this training step to save last.ckpt "
                    b"(Ctrl-C again stops at once, without it)\n")

    def _requeue_after_step(self, trainer, signum: int) -> None:
        self.requeue.signum = signum
        self._request_stop(trainer)  # as for Ctrl-C
        os.write(2, f"\n{signal.Signals(signum).name} (SLURM: preempted or near the time limit): stopping at the end "
                    "of this training step to save last.ckpt, then requeueing\n".encode())

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        ctrl_c = self.ctrl_c or isinstance(exception, KeyboardInterrupt)
        signum = self.requeue.signum if not ctrl_c else None
        code = 1  # Lightning's own sys.exit(1) after a KeyboardInterrupt
        if isinstance(exception, SIGTERMException):
            # Lightning re-raises this very exception
            code = exception.code = EXIT_CTRL_C if ctrl_c else 128 + signum if signum else EXIT_SIGTERM
        saved, why_not = self._save(trainer, pl_module)
        cause = "Ctrl-C" if ctrl_c else f"{signal.Signals(signum).name}, SLURM requeue" if signum else "SIGTERM"
        message = self._message(cause, trainer, pl_module, saved, why_not)
        if signum:  # after the save: the requeued job must find it
            message += "\n" + self.requeue.run(signum, trainer.is_global_zero)
        if trainer.is_global_zero:
            log.warning(message)
        _finish_wandb_run(code)

    def _save(self, trainer, pl_module) -> tuple[bool, str]:
        """Write the checkpoint if the state is one a resume can continue from exactly: ``(saved, why not)``."""
        if trainer.state.fn != TrainerFn.FITTING:
            return False, "training had finished"
        if trainer.fast_dev_run:
            # resume=auto would continue from it: a one-batch smoke test instead of the real run
            return False, "a fast_dev_run writes no checkpoint"
        if self._fit_start_step is None:  # stopped while setting up or restoring: the weights may be half loaded
            return False, "training had not started"
        if pl_module.steps_taken == self._fit_start_step:
            return False, "no training step had finished since the start"
        # Lightning's counters of the batch in progress: ready (fetched), started, processed (optimisers stepped),
        # completed (hooks run, logs written). All equal: between steps, where Lightning's SIGTERM stop raises.
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        ready, started, processed, completed = progress.ready, progress.started, progress.processed, progress.completed
        if not started == processed == completed or ready - completed not in (0, 1):
            # a KeyboardInterrupt raised inside a step (a second Ctrl-C): its state and logs are partial
            return False, "the training step in progress was cut off midway"
        # not trainer.save_checkpoint: its barriers hung a DDP run whose ranks had stopped at different points (a
        # rank sent SIGTERM twice by `kill` and its launcher ran one more collective). Rank 0 holds the weights.
        if trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            if ready == completed + 1:
                # raised after the next batch was fetched, before its step: saved as if it had not been fetched
                # (restored as it is, Lightning counted one batch too many and the resumed run's logged steps were
                # one ahead); the batches are a function of the step, nothing else changed
                progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
                for counts in (progress["current"], progress["total"]):
                    counts["ready"] -= 1
            if self._validation_due == self._validated == pl_module.steps_taken:
                # saved after the step's validation and Lightning's count of the batch: a restart takes that
                # validation for done and counts the batch again (as after its own saves, made at validation end),
                # and the resumed run logged every step one later than the uninterrupted run
                checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.ckpt_path)
        return True, ""

    def _message(self, cause: str, trainer, pl_module, saved: bool, why_not: str) -> str:
        step = pl_module.steps_taken
        head = f"Interrupted ({cause}) after training step {step} of {pl_module.train_steps}"
        if saved:
            ckpt = str(Path(self.ckpt_path).resolve())
            return f"{head}: saved {ckpt}. Continue with: {resume_command(ckpt)}"
        earlier = _newest_checkpoint(trainer)
        if why_not == "training had finished" and earlier:
            return f"{head}, in the {trainer.state.fn.value} stage: training had finished. Score it with: " \
                   f"python eval.py ckpt_path={shlex.quote(earlier)}"
        if earlier and not trainer.fast_dev_run:
            return f"{head}: no checkpoint written ({why_not}); the newest is {earlier}. Continue with: " \
                   f"{resume_command(earlier)}"
        return f"{head}: no checkpoint written ({why_not})."


def _on_any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` is set on any rank; every rank must call it."""
    flags = torch.tensor([int(flag)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags.item())


def _finish_wandb_run(code: int) -> None:
    """Finish the wandb run as failed: the plain ``wandb.finish()`` after every job recorded exit code 0, and an
    interrupted run showed as finished."""
    wandb = sys.modules.get("wandb")  # never imported: no run to finish
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=code)


def _newest_checkpoint(trainer) -> str | None:
    """This run's newest checkpoint file, else the one it resumed from, else None."""
    path = run_checkpoint(trainer) or (trainer.ckpt_path if trainer.ckpt_path and Path(trainer.ckpt_path).is_file()
                                       else None)
    return None if path is None else str(Path(path).resolve())


def resume_command(ckpt: str) -> str:
    """The command that continues this run from ``ckpt``: train.py with the run's own overrides (read from Hydra;
    none when training from Python) and ``ckpt_path``. It writes to a new run directory. A sweep job's is the sweep's
    own command with ``resume=auto`` (``sweep_resume_command``)."""
    from hydra.core.hydra_config import HydraConfig

    sweep = sweep_resume_command()
    if sweep is not None:
        return sweep
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in NOT_RESUME_OPTIONS]
    return shlex.join(["python", "train.py", *kept, f"ckpt_path={ckpt}"])


def sweep_resume_command() -> str | None:
    """In a sweep job: the sweep's command into the same sweep directory, with ``resume=auto``. An interrupted sweep
    stops at its interrupted job, and the single-run command continued that job into a new directory outside the
    sweep, where aggregate.py does not look, and left the jobs after it unrun (for an Optuna trial it named
    ``hparams_search=...``: a new study, every trial continuing that one checkpoint); this one continues the job in
    place, keeps the finished jobs and runs the rest. The command is read from the sweep's ``multirun.yaml`` (Hydra's
    basic sweeper writes it), else from this process's command line (Optuna's sweeper writes none; its jobs run
    in-process under the basic launcher). None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized() or str(HydraConfig.get().mode) != "RunMode.MULTIRUN":
        return None
    sweep_dir = Path(str(HydraConfig.get().sweep.dir)).resolve()
    record = sweep_dir / "multirun.yaml"
    if record.is_file():
        overrides = OmegaConf.load(record).hydra.overrides
        words = [*overrides.hydra, *overrides.task]
    elif Path(sys.argv[0]).name == "train.py":
        words = [w for w in sys.argv[1:] if w not in ("-m", "--multirun")]
    else:
        return f"the sweep's own command, with hydra.sweep.dir={shlex.quote(str(sweep_dir))} resume=auto"
    dropped = NOT_RESUME_OPTIONS | {"hydra.sweep.dir", "hydra.mode"}
    kept = [w for w in words if w.partition("=")[0].lstrip("+~") not in dropped]
    hydra_words = [w for w in kept if w.lstrip("+~").startswith("hydra")]
    task = [w for w in kept if w not in hydra_words]
    return shlex.join(["python", "train.py", "-m", *hydra_words, f"hydra.sweep.dir={sweep_dir}", *task, "resume=auto"])
