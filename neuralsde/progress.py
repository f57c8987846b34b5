"""A progress bar over the model's own training steps (not epochs, not optimiser steps)."""
from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class StepProgressBar(TQDMProgressBar):
    """Shows ``train_step / train_steps`` with the logged losses and the speed in steps per second.

    Lightning's default bar counts batches per epoch and prints an epoch total of -1 when training is
    bounded by steps, as here. While fitting, validation (one batch every ``val_check_interval`` steps) gets no
    bar of its own: it finished at once and left a line in the log each time; its metrics join the main bar.

    ``refresh_interval_s``: least seconds between redraws (closing the bar after the last step draws it with the
    final metrics); ``None``: 0.1 on a terminal, 10 when output goes to a file (drawn at every step, the default
    run's 2,000 steps wrote 520 kB of bar lines to a redirected log; now 9 kB).
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 refresh_interval_s: float | None = None):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.refresh_interval_s = refresh_interval_s
        self._last_draw = float("-inf")
        self._interval = 0.0  # set with the bar, when its output stream is known

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn != "fit":
            return super().init_validation_tqdm()
        return Tqdm(disable=True)

    def init_train_tqdm(self) -> Tqdm:
        module = self.trainer.lightning_module
        # made with its steps and name (Lightning's is made as "Training", then reset: two lines in a log);
        # a resumed run starts where it stopped
        interval = self.refresh_interval_s
        self._interval = float(interval) if interval is not None else 0.1 if sys.stdout.isatty() else 10.0
        dev_run = int(self.trainer.fast_dev_run)  # True: one batch, N: N batches, then it stops
        total = module.steps_taken + dev_run if dev_run else module.train_steps
        return self._bar(module.family, total, initial=module.steps_taken, unit="step", smoothing=0)

    def init_test_tqdm(self) -> Tqdm:
        batches = self.trainer.num_test_batches
        if len(batches) != 1:
            return super().init_test_tqdm()
        # one loader: made with its total (Lightning's is made without, then reset and renamed "DataLoader 0":
        # three lines in a log before the first batch)
        return self._bar(self.test_description, convert_inf(batches[0]))

    def _bar(self, desc: str, total, **kwargs) -> Tqdm:
        """A bar made with its name and total, placed and formatted as Lightning's own."""
        return Tqdm(desc=desc, total=total, position=2 * self.process_position, disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT, **kwargs)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if len(trainer.num_test_batches) != 1:
            return super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self.has_dataloader_changed(dataloader_idx)  # keeps Lightning's tracker as its own hook would

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        n = pl_module.steps_taken  # already advanced by training_step
        bar.n = n  # always counted: closing the bar draws the last count and metrics
        now = time.monotonic()
        if n < bar.total and self._should_update(n, bar.total) and now - self._last_draw >= self._interval:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)  # one draw per update, not two
            bar.refresh()
            self._last_draw = now

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, pl_module) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)  # drawn by close
        bar.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # closing ends the bar's line where it stopped: the error or interrupt message that follows was glued onto the
        # last draw in a redirected log
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar):
            if bar is not None and not bar.disable:
                bar.close()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or self._train_progress_bar is None:
            return super().on_validation_end(trainer, pl_module)
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        # the metrics show at the next draw (Lightning drew the bar here too; closing it draws the last ones)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
