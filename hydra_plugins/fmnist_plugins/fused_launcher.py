"""`hydra/launcher=fused` (conf/hydra/launcher/fused.yaml): the jobs of a sweep that share a
shape train as one fused model in this process; the work is in `fmnist.sweeps.fused`."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.fmnist_plugins.fused_launcher.FusedLauncher"
    max_members: int = 16  # most jobs in one fused model (memory grows with it)
    probe: bool = True  # time a step at 1, 2, 4... members first; fuse only as many as pay


ConfigStore.instance().store(group="hydra/launcher", name="fmnist_fused", node=FusedLauncherConf)


class FusedLauncher(Launcher):
    def __init__(self, max_members: int = 16, probe: bool = True) -> None:
        self.max_members, self.probe = max_members, probe
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from fmnist.sweeps.fused.launch import launch

        return launch(self, job_overrides, initial_job_idx)
