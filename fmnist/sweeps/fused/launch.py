"""`hydra/launcher=fused`: group a sweep's jobs that can train as one fused model, train each
group in this process, and run every other job as Hydra's basic launcher would.

Jobs fuse when their composed configs differ only in keys that each member owns (`member=True`
on the schema, fmnist/config.py: its seed and so its initial weights and batch order, optimizer,
schedule, loss settings, EMA, augmentation, callbacks). Everything that shapes the shared
computation must be equal: the model, `batch_size`, `epochs`, the data split, the device and
runtime, evaluation (`tta`, `eval_every`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from omegaconf import DictConfig, open_dict, read_write

from fmnist.hparams import shared
from fmnist.run.status import finished, objective, read_status
from fmnist.sweeps.compose import compose_jobs

log = logging.getLogger("fmnist")


class Job:
    """One job of the sweep: Hydra's config for it, its task config, its directory."""

    def __init__(self, idx: int, overrides: Sequence[str], config: DictConfig):
        self.idx, self.overrides, self.config = idx, list(overrides), config
        output = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output)
        from fmnist.config import resolve
        from fmnist.engine.budget import decide
        from fmnist.errors import ConfigError
        from fmnist.run.directory import RunDirError

        with hydra_config(config):
            task = copy.deepcopy(config)
            with read_write(task), open_dict(task):
                del task["hydra"]
            resolve(task)  # `${hydra:...}` means this job's config, whatever comes next
        # a preset's budget with epochs on the command line: the epochs, as the run itself decides
        # (grouping needs them); a conflict or a bad record: the job says so itself, in one line
        with contextlib.suppress(ConfigError, RunDirError):
            decide(task, Path(task.output_dir), self.overrides, logging.getLogger("fmnist"))
        self.task = task
        self.name = output.name

    @property
    def label(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"


@contextmanager
def hydra_config(config: DictConfig) -> Iterator[None]:
    """Hydra's global config set to `config` meanwhile (what `${hydra:...}` and the engine read)."""
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = saved


def group_key(task: DictConfig) -> str:
    """What must be equal for two jobs to fuse: the config without what each member owns."""
    return json.dumps(shared(task), sort_keys=True, default=str)


def group_jobs(jobs: list[Job]) -> list[list[Job]]:
    """Jobs with equal keys, in sweep order."""
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(group_key(job.task), []).append(job)
    return sorted(by_key.values(), key=lambda g: g[0].idx)


def plan_groups(
    jobs: list[Job], max_members: int, probe: bool
) -> list[tuple[list[Job], str | None]]:
    """The groups to train, each with why it is not fused (None: fused, or a job alone). With
    `probe`, a group is cut to the size whose step is fastest per member here (probe.py)."""
    from fmnist.sweeps.fused.probe import best_size

    plans: list[tuple[list[Job], str | None]] = []
    for same in group_jobs(jobs):
        reason = why_not_fused(same[0].task, len(same)) if len(same) > 1 else None
        if len(same) == 1 or reason:
            plans.append((same, reason))
            continue
        size = min(len(same), max_members)
        if probe and not all(finished(read_status(j.task.output_dir), j.task.epochs) for j in same):
            size, per_member = best_size(same[0].task, size)
            timings = ", ".join(f"{k}: {ms:.1f}" for k, ms in per_member.items())
            print(
                f"fused launcher: a training step of {same[0].label} in ms per member, by "
                f"members fused: {timings}; fusing {size} at a time",
                flush=True,
            )
        if size == 1:
            plans.append((same, "a fused step is no faster per member on this machine"))
            continue
        plans += [(same[i : i + size], None) for i in range(0, len(same), size)]
    return sorted(plans, key=lambda plan: plan[0][0].idx)


def why_not_fused(task: DictConfig, size: int) -> str | None:
    """None when `size` copies of the job's model compute as one fused model, else why not."""
    import torch

    from fmnist.engine.fused_model import fusable
    from fmnist.models import ModelError, build_model, model_spec

    if task.runtime.compile:
        return "runtime.compile is on"
    if task.budget_min is not None:
        return "budget_min: each run times itself and chooses its own epochs"
    try:
        members = [build_model(model_spec(task.model)) for _ in range(min(size, 2))]
    except ModelError as exc:
        return str(exc)
    if task.runtime.channels_last:
        members = [m.to(memory_format=torch.channels_last) for m in members]
    return fusable(members, bool(task.runtime.channels_last))


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = []
    loader = launcher.hydra_context.config_loader
    configs = compose_jobs(loader, launcher.config, job_overrides)
    for i, (overrides, config) in enumerate(zip(job_overrides, configs, strict=True)):
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = initial_job_idx + i
        jobs.append(Job(initial_job_idx + i, overrides, config))
    plans = plan_groups(jobs, max(1, int(launcher.max_members)), bool(launcher.probe))
    print_plan(plans, len(jobs))
    returns: dict[int, JobReturn] = {}
    for group, reason in plans:
        if len(group) == 1 or reason:
            for job in group:
                returns[job.idx] = run_single(launcher, job)
        else:
            returns |= run_group(launcher, group)
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return [returns[job.idx] for job in jobs]


def print_plan(plans: list[tuple[list[Job], str | None]], total: int) -> None:
    fused = sum(len(g) for g, why in plans if len(g) > 1 and not why)
    groups = sum(1 for g, why in plans if len(g) > 1 and not why)
    print(f"fused launcher: {total} jobs, {fused} of them in {groups} fused group(s)", flush=True)
    for n, (group, why) in enumerate(plans, 1):
        batch = group[0].task.get("batch_size")
        if len(group) == 1 and why:
            head = f"  {n}. alone ({why})"
        elif len(group) == 1:
            head = f"  {n}. alone (batch_size={batch}; no other job shares its shape)"
        elif why:
            head = f"  {n}. {len(group)} jobs one after another (not fused: {why})"
        else:
            head = f"  {n}. {len(group)} jobs fused as one model (batch_size={batch})"
        print(head, flush=True)
        for job in group:
            print(f"       #{job.idx} {job.label}", flush=True)


def run_single(launcher: Any, job: Job) -> JobReturn:
    """As Hydra's basic launcher runs a job."""
    log.info("#%d : %s", job.idx, job.label)
    return run_job(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
        config=job.config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def run_group(launcher: Any, group: list[Job]) -> dict[int, JobReturn]:
    """What `run_job` does for each job (directory, logging, callbacks, JobReturn), around one
    fused training of them all."""
    from fmnist.sweeps.fused.group import Member, train_group

    callbacks = launcher.hydra_context.callbacks
    configure_log(group[0].config.hydra.job_logging, group[0].config.hydra.verbose)
    rets, members = {}, {}
    for job in group:
        with hydra_config(job.config):
            Path(job.config.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
            ret = JobReturn()
            ret.cfg, ret.overrides = job.task, list(job.overrides)
            ret.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
            ret.working_dir = os.getcwd()
            callbacks.on_job_start(config=job.config, task_function=launcher.task_function)
        rets[job.idx] = ret
        overrides = [str(o) for o in job.config.hydra.overrides.task]
        members[job.idx] = Member(job.task, overrides, job.name, job.config.hydra)
    log.info(
        "training %d jobs as one fused model: %s", len(group), ", ".join(j.name for j in group)
    )
    train_group(list(members.values()))
    for job in group:
        ret, member = rets[job.idx], members[job.idx]
        if member.error is None:
            ret.status = JobStatus.COMPLETED
            ret.return_value = objective(job.task.output_dir)
        else:
            ret.status, ret.return_value = JobStatus.FAILED, member.error
        ret.task_name = JobRuntime.instance().get("name")
        with hydra_config(job.config):
            callbacks.on_job_end(config=job.config, job_return=ret)
    return rets
