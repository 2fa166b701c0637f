"""The sweeper's `sweep`: ask, launch a batch of trials as sweep jobs, tell, until n_trials."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmnist.sweeps.search.report import TrialReport
from fmnist.sweeps.search.space import (
    SearchError,
    SearchSpace,
    one_line,
    override,
    quoted,
    sample_point,
    search_space,
)
from fmnist.sweeps.search.study import FINISHED, make_pruner, make_sampler, open_study, storage_url

log = logging.getLogger("fmnist")


@dataclass
class Settings:
    """hydra.sweeper.* (conf/hparams_search/optuna.yaml documents each)."""

    direction: str
    study_name: str
    storage: str | None
    n_trials: int
    n_jobs: int | None  # None: the pool's slots, else 1
    sampler: Any
    pruner: Any
    params: dict[str, Any] | None


class Search:
    """Ask up to `n_jobs` trials, launch them as one batch of sweep jobs, tell the study how each
    ended (from its run directory), until the study holds `n_trials` finished trials. Trials a
    killed search left running are launched again first: their jobs resume from checkpoints."""

    def __init__(self, settings: Settings, launcher: Any, config: Any, validate: Any):
        self.settings, self.launcher, self.config = settings, launcher, config
        self.validate = validate  # the sweeper's validate_batch_is_legal: composes the overrides
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.url = storage_url(settings.storage, self.sweep_dir)

    def run(self, arguments: list[str]) -> optuna.Study:
        from fmnist.run.locking import FileLock, LockHeld

        s = self.settings
        if s.n_trials < 1 or (s.n_jobs is not None and s.n_jobs < 1):
            raise SearchError(
                f"hydra.sweeper.n_trials={s.n_trials}, n_jobs={s.n_jobs}: n_trials must be "
                ">= 1, n_jobs >= 1 or null (the pool's slots, else 1)"
            )
        if self.config.hydra.launcher.get("wait") is False:
            raise SearchError(
                "an Optuna search waits for its trials: drop hydra.launcher.wait=false"
            )
        space = search_space(s.params, arguments)
        make_pruner(s.pruner), make_sampler(s.sampler)  # refused here, before any file is written
        self.validate([self.job_overrides(space, sample_point(space), 0)])  # a bad key fails here
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.sweep_dir / ".search.lock")
        try:
            lock.acquire(wait_s=0)
        except LockHeld as held:
            raise SearchError(
                f"another search runs in {self.sweep_dir} (process {held.owner}); wait for it"
            ) from None
        try:
            return self.search(space)
        finally:
            lock.release()

    def search(self, space: SearchSpace) -> optuna.Study:
        from omegaconf import OmegaConf

        s = self.settings
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        study = open_study(self.url, s.study_name, s.direction, s.sampler, s.pruner)
        pending = [
            optuna.Trial(study, t._trial_id)  # noqa: SLF001  (rebuild a running trial)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ]
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if finished or pending:
            log.info(
                "continuing study %s in %s: %d trials finished, %d cut short (resumed first)",
                s.study_name,
                self.url,
                finished,
                len(pending),
            )
        if hasattr(self.launcher, "pool"):  # one trial at a time: a new one as soon as one ends
            self.search_without_batches(study, space, pending, finished)
            self.report(study)
            return study
        width = s.n_jobs or 1
        while True:
            batch, pending = pending[:width], pending[width:]
            while len(batch) < width and finished + len(batch) + len(pending) < s.n_trials:
                batch.append(study.ask(space.distributions))
            if not batch:
                break
            jobs = [self.job_overrides(space, t.params, t.number) for t in batch]
            returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
            for trial, job_return in zip(batch, returns, strict=True):
                self.tell(study, trial, job_return)
            finished += len(batch)
        self.report(study)
        return study

    def search_without_batches(
        self, study: optuna.Study, space: SearchSpace, pending: list, finished: int
    ) -> None:
        """Keep `n_jobs` trials running: ask for the next the moment one ends (completed,
        pruned or failed); trials a killed search left running go first."""
        s, pool, running = self.settings, self.launcher.pool(), {}
        width = min(s.n_jobs or len(pool.slots), len(pool.slots))  # a trial asked waits for none
        log.info(
            "%d trial(s) at once in %d pool slot(s)%s", width, len(pool.slots),
            f" (hydra.sweeper.n_jobs={s.n_jobs})" if s.n_jobs else "",
        )  # fmt: skip
        try:
            while True:
                while len(running) < width and (pending or finished + len(running) < s.n_trials):
                    trial = pending.pop(0) if pending else study.ask(space.distributions)
                    job = self.job_overrides(space, trial.params, trial.number)
                    running[pool.submit(job, trial.number)] = trial
                if not running:
                    break
                for handle in pool.wait_any():
                    self.tell(study, running.pop(handle), handle.ret)
                    finished += 1
                if pool.interrupted is not None:
                    raise pool.interrupted
        finally:
            pool.close()

    def job_overrides(self, space: SearchSpace, params: dict[str, Any], number: int) -> list[str]:
        return [
            *space.fixed,
            *(override(k, v) for k, v in params.items()),
            # reporting to the trial is an ordinary callback of the job (report.py)
            f"+callbacks.trial._target_={TrialReport.__module__}.{TrialReport.__name__}",
            f"+callbacks.trial.number={number}",
            f"+callbacks.trial.study={quoted(self.settings.study_name)}",
            f"+callbacks.trial.storage={quoted(self.url)}",
            f"+callbacks.trial.pruner={quoted(json.dumps(self.settings.pruner))}",
            f"hydra.sweep.subdir={trial_dir(number)}",  # one directory per trial, whatever its values
        ]

    def tell(self, study: optuna.Study, trial: optuna.Trial, job_return: Any) -> None:
        from hydra.core.utils import JobStatus

        from fmnist.run.status import ENDED_AS_PLANNED, read_status
        from fmnist.sweeps.report import job_exception

        run_dir = self.sweep_dir / trial_dir(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        status = read_status(run_dir) or {}
        state = status.get("status")
        if job_return.status == JobStatus.FAILED or state not in ENDED_AS_PLANNED:
            if state == "interrupted":  # stopped by a signal: a rerun resumes it
                return
            exc = job_exception(job_return)
            reason = one_line(exc) if exc else f"the run ended {state or 'without a status'}"
            trial.set_user_attr("error", reason)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
        elif state == "pruned":
            trial.set_user_attr("pruned", status.get("stopped_early"))
            study.tell(trial, state=TrialState.PRUNED)
        elif status.get("objective") is None:
            trial.set_user_attr("error", "no objective: the run had no validation split")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(status["objective"]))

    def report(self, study: optuna.Study) -> None:
        """optimization_results.yaml (best parameters and value) and one line on the console."""
        from omegaconf import OmegaConf

        counts = {
            state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
        done = counts["complete"]
        best = study.best_trial if done else None
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.url,
            "direction": study.direction.name.lower(),
            "trials": counts,
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
        }
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        summary = ", ".join(f"{n} {state}" for state, n in counts.items())
        if best is None:
            raise SearchError(f"no trial completed ({summary}); see the sweep summary for reasons")
        print(
            f"Best value: {best.value:.4f} (trial {best.number}, {summary}); "
            f"parameters: {dict(best.params)}",
            flush=True,
        )


def trial_dir(number: int) -> str:
    return f"trial_{number:03d}"
