"""SLURM's requeue notices while training (``InterruptCheckpoint`` stops at a step's end, saves, then calls ``run``).

Two senders: Lightning's SLURM auto-requeue (SIGUSR1, e.g. ``sbatch --signal=USR1@90``) and submitit, the
``hydra/launcher=slurm`` launcher (SIGUSR2, ``signal_delay_s`` before the time limit, or on preemption where the
cluster sends it). Both acted inside the signal handler, wherever the step was: Lightning wrote ``hpc_ckpt_N.ckpt``
into the run directory, where ``resume=auto`` did not look (``resume.own_checkpoints`` now does), with a mid-step
state and barriers that can hang DDP ranks; submitit requeued and exited at once, so the requeued job lost every
step since the last periodic checkpoint. Here the notice only stops training; Lightning's requeue is then ours
(``scontrol requeue``, no hpc checkpoint), and a launcher's own handler (submitit's, which counts timeouts against
``max_num_timeout``) runs after ``last.ckpt`` is written."""
from __future__ import annotations

import os
import signal
import subprocess

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
CONTINUES = "started again in this run directory, it continues from this checkpoint (resume.resolve_ckpt_path)."


class Requeue:
    """The requeue notice received (``signum``), and what requeues the job for each signal: a launcher's handler
    that was installed before training, else ``scontrol requeue`` for Lightning's signal."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.lightning_signal: int | None = None  # Lightning's auto-requeue signal, taken over
        self._launcher: dict[int, object] = {}

    def install(self, handler) -> list[int]:
        """Point the requeue signals somebody listens to (a launcher or Lightning) at ``handler``; return them.
        Call it after Lightning has registered its handlers: its teardown restores the launcher's."""
        installed = []
        # Lightning's may be another (SLURMEnvironment(requeue_signal=...)): its own handler is off, so ours or none
        for signum in dict.fromkeys(s for s in (*REQUEUE_SIGNALS, self.lightning_signal) if s is not None):
            previous = signal.getsignal(signum)
            if callable(previous):
                self._launcher[signum] = previous
            elif signum == self.lightning_signal:
                self._launcher.pop(signum, None)
            else:
                continue
            signal.signal(signum, handler)
            installed.append(signum)
        return installed

    def run(self, signum: int, global_zero: bool) -> str:
        """Requeue the job after ``signum`` (the checkpoint is written); return what happened, one sentence."""
        launcher = self._launcher.get(signum)
        if launcher is not None:
            try:
                launcher(signum, None)
            except SystemExit:  # submitit exits once it has requeued
                return f"The launcher requeued the job; {CONTINUES}"
            except Exception as err:  # noqa: BLE001  (submitit's "not requeued" and scontrol failures alike)
                return f"The launcher did not requeue the job: {err}"
            return "The launcher's handler for the signal ran."
        if not global_zero:  # one process requeues the job
            return ""
        return scontrol_requeue()


def slurm_job_id() -> str | None:
    """The job id ``scontrol requeue`` takes: an array task's own (``<array job>_<task>``), else SLURM_JOB_ID."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def scontrol_requeue() -> str:
    job = slurm_job_id()
    if not job:
        return "Not requeued: SLURM_JOB_ID is not set."
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"Not requeued: scontrol requeue {job} failed ({err}). Fix: requeue it by hand, or run the " \
               "command above."
    if done.returncode:
        why = (done.stderr or done.stdout).strip()
        return f"Not requeued: scontrol requeue {job} exited with status {done.returncode} ({why}). Fix: requeue " \
               "it by hand, or run the command above."
    return f"Requeued SLURM job {job}; {CONTINUES}"


def take_over_lightning_requeue(trainer, requeue: Requeue) -> None:
    """Turn Lightning's SLURM auto-requeue off (its mid-step ``hpc_ckpt_N.ckpt`` and its requeue) and note its
    signal, which ``Requeue.install`` then handles. Call it before Lightning registers its signal handlers."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    # the one Lightning's signal connector reads; trainer.strategy.cluster_environment (public) is the same object
    # under DDP but absent from the SingleDeviceStrategy of a one-GPU job, the usual SLURM job
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        environment.auto_requeue = False
        requeue.lightning_signal = environment.requeue_signal
