"""`hydra/launcher=pool` (conf/hydra/launcher/pool.yaml): a sweep's jobs in parallel on this
machine, one per slot (a GPU, or a set of cores), the next the moment a slot frees; the work is
in `fmnist.sweeps.pool`. A search (hparams_search=optuna) hands it one trial at a time."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.fmnist_plugins.pool_launcher.PoolLauncher"
    slots: Any = None  # jobs at once; null: from the hardware (logged)
    jobs_per_device: int = 1  # jobs sharing one GPU
    cores_per_slot: Any = None  # without a GPU: cores per job; null: 1 up to 8 cores, then cores/8
    devices: Any = None  # how many GPUs (the first visible); null: all; 0: cores only


ConfigStore.instance().store(group="hydra/launcher", name="fmnist_pool", node=PoolLauncherConf)


class PoolLauncher(Launcher):
    def __init__(
        self,
        slots: int | None = None,
        jobs_per_device: int = 1,
        cores_per_slot: int | None = None,
        devices: int | None = None,
    ) -> None:
        self.slots, self.jobs_per_device = slots, jobs_per_device
        self.cores_per_slot, self.devices = cores_per_slot, devices
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self._pool: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def pool(self) -> Any:
        """The slots and their workers, made on first use and kept for the sweep."""
        if self._pool is None:
            from fmnist.sweeps.pool import Pool

            self._pool = Pool(self)
        return self._pool

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from fmnist.sweeps.pool import launch

        return launch(self, job_overrides, initial_job_idx)
