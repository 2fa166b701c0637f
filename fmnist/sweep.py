"""End-of-sweep report: the summary table and every failed job with its reason.

Hydra 1.3 skips `on_multirun_end` when a job failed and re-raises only the first failure, so
`finish()` (called by the console entry after Hydra returns or exits) reports in that case too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fmnist.callbacks.status import read_status, write_status

_SWEEP: dict[str, Any] = {}  # the sweep directory of this process's multirun, if any


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SWEEP.clear()
        _SWEEP["dir"] = Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A job that failed before training started (bad value, no data) still gets a status."""
        if job_return.status != JobStatus.FAILED:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        status = read_status(run_dir)
        if status is None or status.get("status") == "running":
            exc = job_return._return_value
            write_status(
                run_dir,
                status="failed",
                run=run_dir.name,
                last_epoch=(status or {}).get("last_epoch", 0),
                error={"type": type(exc).__name__, "message": str(exc)},
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish(failed_exit=False)


def finish(failed_exit: bool = True) -> None:
    """Print the summary and the failures once; exit 1 if any job failed (when allowed)."""
    sweep_dir = _SWEEP.get("dir")
    if sweep_dir is None or _SWEEP.get("reported"):
        return
    _SWEEP["reported"] = True
    from fmnist.compare import report

    print(f"\n=== sweep summary: {sweep_dir} ===")
    try:
        summary = report(sweep_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"no summary: {exc}")
        return
    failed = summary.table[summary.table["status"] != "completed"]
    if len(failed):
        print(f"\n{len(failed)} of {len(summary.table)} jobs did not complete:", file=sys.stderr)
        for row in failed.itertuples(index=False):
            reason = getattr(row, "reason", "") or ""
            print(f"  {row.run}: {row.status} after epoch {row.epochs}  {reason}", file=sys.stderr)
        print(
            "rerun the same command with hydra.sweep.dir=" + str(sweep_dir) + " to resume",
            file=sys.stderr,
        )
        if failed_exit:
            sys.exit(1)
