"""Compare runs: one row per run, ranked by the objective (`monitor`, on validation), with the test
accuracy of the checkpoint that objective selected; csv/json/md files and a plot.

    fmnist-compare outputs/sweeps/2026-11-27/10-00-00_123   # one sweep
    fmnist-compare outputs                                    # everything

`table` reads run directories into a table; `report` renders, writes and plots it.
"""

from fmnist.commands.compare.report import main, plot, render, report, write
from fmnist.commands.compare.table import Summary, across_seeds, find_runs, load_run, summarize

__all__ = [
    "Summary",
    "across_seeds",
    "find_runs",
    "load_run",
    "main",
    "plot",
    "render",
    "report",
    "summarize",
    "write",
]
