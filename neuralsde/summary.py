"""The model summary printed when training starts, without Lightning's FLOPs column and total: Lightning counts
FLOPs by running the module's ``example_input_array``, which these models do not have, so every count read 0
("Total FLOPs: 0"). Both of Lightning's summaries print that total whatever they are given, so this one draws its
own table from the same figures (``ModelSummary.summarize``'s arguments)."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelSummary, RichModelSummary
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

FLOPS_COLUMN = "FLOPs"
RIGHT_ALIGNED = {"Params", "Params per Device", "In sizes", "Out sizes"}


class ParameterSummary(RichModelSummary):
    """Lightning's default summary (``RichModelSummary``): the layers, their parameter counts and modes, the totals
    and the size, less the FLOPs, which no model here can count."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int] | None = None, total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        # the last two are optional: Lightning before 2.3 passes neither (pyproject allows >=2.2)
        from rich import get_console
        from rich.table import Table

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        columns = [(name, values) for name, values in summary_data if name != FLOPS_COLUMN]
        for name, _ in columns:
            table.add_column(name, justify="right" if name in RIGHT_ALIGNED else "left",
                             style="dim" if name == " " else None, no_wrap=name == "Name")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        count = get_human_readable_count
        rows = [("Trainable params", count(trainable_parameters)),
                ("Non-trainable params", count(total_parameters - trainable_parameters)),
                ("Total params", count(total_parameters)),
                ("Total estimated model params size (MB)", get_formatted_model_size(model_size))]
        if total_training_modes:
            rows += [("Modules in train mode", total_training_modes["train"]),
                     ("Modules in eval mode", total_training_modes["eval"])]
        totals = Table.grid(expand=True)
        for label, value in rows:
            totals.add_row(f"[bold]{label}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(totals)


def summary_callbacks(trainer_cfg: DictConfig, callbacks: list) -> list:
    """``[ParameterSummary()]`` where Lightning would add its default summary (``trainer.enable_model_summary`` true,
    or unset outside ``barebones``, and no summary among ``callbacks``), else ``[]``."""
    enabled = trainer_cfg.get("enable_model_summary")
    if enabled is None:
        enabled = not trainer_cfg.get("barebones", False)
    if not enabled or any(isinstance(cb, ModelSummary) for cb in callbacks):
        return []
    return [ParameterSummary()]
