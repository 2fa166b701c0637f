"""Run directories -> one table row per run, ranked by the objective.

Nothing here chooses an epoch or a run by test accuracy. Runs without a validation split have no
selection: their row is the last epoch, and such a table is ranked by final test accuracy, as it
says. A run directory of any shape is read, never trusted: unreadable files list the run as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fmnist.hparams import DERIVED
from fmnist.metrics import METRIC_NAMES, OBJECTIVES, direction, select
from fmnist.run import provenance
from fmnist.run.files import read_json
from fmnist.run.provenance import read_provenance
from fmnist.run.status import STATUS, read_status, where_running

SORT_KEYS = ("objective", "test_accuracy", "last_test_accuracy", "train_loss", "duration_s", "run")


@dataclass
class Summary:
    root: Path
    table: pd.DataFrame
    constants: dict[str, Any] = field(default_factory=dict)
    varying: list[str] = field(default_factory=list)
    epochs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run -> curve
    seeds: pd.DataFrame | None = None  # mean and spread over seeds, when seed varies
    monitor: str | None = None  # the objective the table is ranked by; None = no selection
    note: str = ""


def find_runs(path: Path) -> list[Path]:
    """Directories holding a run (status.json or results.json), at any depth."""
    found = {p.parent for name in (STATUS, "results.json") for p in path.rglob(name)}
    return sorted(found)


def _history(run_dir: Path) -> list[dict[str, Any]] | None:
    """results.json as a list of rows with an integer epoch, or None when it is not that."""
    try:
        rows = read_json(run_dir / "results.json")
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in rows
    ):
        return None
    return rows


def load_run(run_dir: Path, root: Path) -> dict[str, Any]:
    status = read_status(run_dir)
    history = _history(run_dir)
    state, reason = where_running(status)
    if history is None or (status is None and (run_dir / STATUS).exists()):
        state, reason, history = (
            "unreadable",
            "status.json or results.json is damaged",
            history or [],
        )
    hparams = (status or {}).get("hparams")
    hparams = dict(hparams) if isinstance(hparams, dict) else {}
    if not hparams and history:  # no status: recover hyperparameters from a results row
        hparams = {k: v for k, v in history[-1].items() if k not in METRIC_NAMES}
    error = (status or {}).get("error")
    if isinstance(error, dict) and not reason:
        reason = f"{error.get('type')}: {error.get('message')}"
    if state == "pruned" and not reason:
        reason = str((status or {}).get("stopped_early") or "pruned by the search")
    monitor = (status or {}).get("monitor")
    if monitor not in OBJECTIVES:
        monitor = "val_accuracy" if any("val_accuracy" in h for h in history) else None
    return {
        "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "dir": run_dir,
        "status": state,
        "reason": reason,
        "hparams": hparams,
        "history": history,
        "monitor": monitor,
        "commit": provenance.short(read_provenance(run_dir)),
        "slurm_job": (status or {}).get("slurm_job"),
    }


def slurm_jobs_not_started(root: Path, seen: set[Path]) -> list[dict[str, Any]]:
    """Jobs of a Slurm sweep (its slurm_jobs.json) that have no run directory yet, with Slurm's
    state of each (pending, or ended before the run began)."""
    from fmnist.run.status import slurm_states
    from fmnist.sweeps.slurm import JOBS_FILE

    try:
        jobs = read_json(root / JOBS_FILE)["jobs"]
        entries = [(str(j["job_id"]), Path(j["dir"])) for j in jobs.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    missing = [(job, d) for job, d in entries if d not in seen]
    states = slurm_states([job for job, _ in missing])
    return [
        {
            "run": str(d.relative_to(root)) if d.is_relative_to(root) else d.name,
            "dir": d,
            "status": (states.get(job) or "submitted").split()[0].lower(),
            "reason": f"Slurm job {job} {states.get(job) or '(Slurm does not answer here)'}",
            "hparams": {},
            "history": [],
            "monitor": None,
            "commit": "",
            "slurm_job": job,
        }
        for job, d in missing
    ]


def summarize(
    path: str | Path,
    sort: str | None = None,
    top: int | None = None,
    epoch: int | None = None,
) -> Summary:
    """Read every run under `path`; raises FileNotFoundError/ValueError with a one-line reason."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    if top is not None and top < 1:
        raise ValueError(f"--top {top}: must be 1 or more")
    runs = [load_run(d, root) for d in find_runs(root)]
    runs += slurm_jobs_not_started(root, {r["dir"] for r in runs})
    if not runs:
        raise ValueError(f"no runs under {root} (looked for status.json / results.json)")
    keys = sorted({k for r in runs for k in r["hparams"]})
    values = {
        k: {json.dumps(r["hparams"].get(k), sort_keys=True, default=str) for r in runs}
        for k in keys
    }
    varying = [k for k in keys if len(values[k]) > 1 and k not in DERIVED]
    constants = {k: runs[0]["hparams"].get(k) for k in keys if len(values[k]) == 1}
    monitors = {r["monitor"] for r in runs if r["history"]}
    monitor = monitors.pop() if len(monitors) == 1 else None
    if len(monitors) > 1:  # mixed objectives cannot be ranked together
        monitor = None
    commits = {r["commit"] for r in runs}
    from fmnist.run.status import slurm_states

    slurm = slurm_states(sorted({str(r["slurm_job"]) for r in runs if r.get("slurm_job")}))
    rows, curves = [], {}
    for r in runs:
        history = (
            r["history"] if epoch is None else [h for h in r["history"] if h["epoch"] <= epoch]
        )
        last, chosen = (history[-1] if history else {}), select(history, monitor)
        row = {"run": r["run"], **{k: r["hparams"].get(k) for k in varying}}
        if monitor:
            row[monitor] = chosen.get(monitor)
        row |= {
            "selected_epoch": chosen.get("epoch"),
            "test_accuracy": chosen.get("test_accuracy"),  # of the selected checkpoint
            "last_test_accuracy": last.get("test_accuracy"),
            "train_loss": last.get("loss"),
            "train_accuracy": last.get("accuracy"),
            "epochs": last.get("epoch", 0),
            "duration_s": last.get("run_duration"),
            "status": r["status"],
        }
        if slurm:  # Slurm's own view of each job, where sacct or squeue answers
            job = r.get("slurm_job")
            row["slurm"] = f"{job} {slurm.get(str(job), '?')}" if job else "-"
        if len(commits) > 1:
            row["commit"] = r["commit"]
        if r["reason"]:
            row["reason"] = r["reason"]
        rows.append(row)
        metric = monitor or "test_accuracy"  # epochs not evaluated (eval_every) have no point
        curves[r["run"]] = [(h["epoch"], h[metric]) for h in history if h.get(metric) is not None]
    table = pd.DataFrame(rows)
    for column in ("selected_epoch", "epochs"):
        table[column] = table[column].astype("Int64")  # stays integer beside failed runs
    sort = sort or "objective"
    if sort == "objective":
        sort = monitor or "test_accuracy"
    if sort not in table.columns:
        raise ValueError(f"--sort {sort}: not a column; choose one of {', '.join(table.columns)}")
    ascending = sort == "run" or direction(sort) == "min"  # run names A to Z
    table = table.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    # trials a search pruned rank after every other run: cut short, they are never the best
    table = table.sort_values("status", key=lambda s: s == "pruned", kind="stable")
    table = table.reset_index(drop=True)
    seeds = across_seeds(table, varying, monitor)
    if top:
        table = table.head(top)
    note = (
        f"ranked by {sort}; test_accuracy is that of the epoch {monitor} selected"
        if monitor
        else "no validation split: nothing was selected; test_accuracy is the last epoch's"
    )
    return Summary(root, table, constants, varying, curves, seeds, monitor, note)


def across_seeds(
    table: pd.DataFrame, varying: list[str], monitor: str | None = None
) -> pd.DataFrame | None:
    """Mean and sample standard deviation over seeds of otherwise identical completed runs.

    This is how a result is reported honestly: `-m experiment=fast seed=0,1,2`, then compare.
    """
    if "seed" not in varying:
        return None
    done = table[table["status"] == "completed"]
    keys = [k for k in varying if k != "seed"]
    groups = done.groupby([done[k].astype(str) for k in keys], sort=False) if keys else [((), done)]
    rows = []
    for _, group in groups:
        if len(group) < 2:
            continue
        accuracy = group["test_accuracy"].astype(float)
        row = {k: group[k].iloc[0] for k in keys}
        row |= {
            "seeds": len(group),
            "mean_test_accuracy": accuracy.mean(),
            "sd_test_accuracy": accuracy.std(ddof=1),
            "min_test_accuracy": accuracy.min(),
            "max_test_accuracy": accuracy.max(),
        }
        if monitor in group:
            row[f"mean_{monitor}"] = group[monitor].astype(float).mean()
        row["mean_duration_s"] = group["duration_s"].astype(float).mean()
        rows.append(row)
    if not rows:
        return None
    return pd.DataFrame(rows).sort_values("mean_test_accuracy", ascending=False, kind="stable")
