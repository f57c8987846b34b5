"""A progress bar over the model's own training steps (not epochs, not optimiser steps)."""
from __future__ import annotations

import sys

from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """Shows ``train_step / train_steps`` with the logged losses and the speed in steps per second.

    Lightning's default bar counts batches per epoch and prints an epoch total of -1 when training is
    bounded by steps, as here. While fitting, validation (one batch every ``val_check_interval`` steps) gets no
    bar of its own: it finished at once and left a line in the log each time; its metrics join the main bar.
    """

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn != "fit":
            return super().init_validation_tqdm()
        return Tqdm(disable=True)

    def init_train_tqdm(self) -> Tqdm:
        module = self.trainer.lightning_module
        # made with its steps and name (Lightning's is made as "Training", then reset: two lines in a log);
        # a resumed run starts where it stopped
        return Tqdm(desc=module.family, total=module.train_steps, initial=int(module.train_step), unit="step",
                    position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True,
                    file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        n = int(pl_module.train_step)  # already advanced by training_step
        if self._should_update(n, bar.total) or n >= bar.total:
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass
