"""`train(cfg)`: plan the run directory, build the run, restore it if it was cut short, fit."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist.engine import budget as budgets
from fmnist.engine.build import build_run, restore
from fmnist.engine.fit import fit_one
from fmnist.engine.signals import StopOnSignal, check_not_stopped
from fmnist.engine.state import RunState
from fmnist.hparams import flat_hparams, identity
from fmnist.models import check_spec, model_spec
from fmnist.run import provenance
from fmnist.run.directory import RunDirectory, write_hydra_files
from fmnist.run.plan import clear_outputs, plan_run
from fmnist.run.status import now
from fmnist.validation import settle_models, validate

log = logging.getLogger("fmnist")


def train(cfg: DictConfig, overrides: list[str] | None = None, hydra_cfg: Any = None) -> dict:
    """Train one run into `cfg.output_dir`; returns the last epoch's results row. The objective
    (the monitored value of the selected epoch) is in the run's status.json. `hydra_cfg`: the
    Hydra job's own node, when Hydra launched it (its .hydra/ files are written from it); by
    default the config's own `hydra` node (composed with `return_hydra_config=True`)."""
    if hydra_cfg is None and "hydra" in cfg:
        hydra_cfg = cfg.hydra
    if overrides is None:  # the command line's, as Hydra recorded it
        task = OmegaConf.select(hydra_cfg, "overrides.task") if hydra_cfg is not None else None
        overrides = [str(o) for o in task or []]
    settle_models(cfg, overrides, log)  # a model given on the command line: budget_models off
    check_config(cfg)
    # from the claim on, a signal stops the run at its next batch; the claim comes before
    # anything is written: a second process is refused there
    with StopOnSignal() as stop, RunDirectory(Path(cfg.output_dir)) as directory:
        run = prepare(cfg, directory, overrides, hydra_cfg, stop=stop)
        if not isinstance(run, RunState):
            return run  # completed before: nothing to do
        try:
            return fit_one(run, stop)
        finally:
            stop.progressed = run.progressed


def check_config(cfg: DictConfig) -> None:
    """What must hold before a run directory is touched."""
    validate(cfg)
    check_spec(model_spec(cfg.model))  # only this package's models, before anything is touched
    budgets.check_models(cfg)  # and budget_models' too
    check_not_stopped()


def prepare(
    cfg: DictConfig,
    directory: RunDirectory,
    overrides: list[str],
    hydra_cfg: Any = None,
    stop: StopOnSignal | None = None,
    **provenance_extra: Any,
) -> RunState | dict[str, Any]:
    """Plan the claimed directory and build the run (restored when it was cut short), or the
    result of a run that already completed. `stop`: the caller's signal handler (it stops a
    budget's timing too); `provenance_extra`: more to record (a fused group)."""
    run_dir = directory.path
    budget = budgets.decide(cfg, run_dir, overrides, log)  # a choice recorded, or epochs given
    plan = plan_run(run_dir, identity(cfg), cfg.epochs)
    if plan.action == "complete":
        status = plan.status
        log.info(
            "%s already completed %d epochs (selected epoch %s, test accuracy %s): nothing to do",
            run_dir,
            status["last_epoch"],
            (status.get("best") or {}).get("epoch"),
            status.get("test_accuracy"),
        )
        return {
            "test_accuracy": status.get("test_accuracy"),
            "objective": status.get("objective"),
            "skipped": True,
        }
    run_log = directory.open_log()  # from here on this run writes into run_dir
    if plan.stale:
        clear_outputs(run_dir)
    if cfg.budget_min is not None and budget is None:
        budget = budgets.size_to_budget(cfg, run_dir, run_log, stop)  # epochs, eval
    write_hydra_files(run_dir, cfg, hydra_cfg)  # the config as it trains (a budget's epochs)
    run = build_run(cfg, run_dir, flat_hparams(cfg), run_log)
    if budget is not None:
        run.budget = provenance_extra["budget"] = asdict(budget)
    if plan.action == "resume":
        restore(run, plan.checkpoint)
    if cfg.runtime.get("slot"):  # a pool launcher's slot: which GPU, which cores
        provenance_extra["slot"] = OmegaConf.to_container(cfg.runtime.slot)
    record, diff = provenance.collect(
        run.device, run.threads, overrides, bf16=run.bf16_reason, **provenance_extra
    )
    run.provenance = provenance.write_provenance(run_dir, record, diff, now())
    return run
