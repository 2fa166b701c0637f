"""`hydra/sweeper=fmnist_optuna` (conf/hparams_search/optuna.yaml): Optuna's ask-and-tell over
any Hydra launcher, the study on disk, pruning; the work is in `fmnist.sweeps.search`.

Optuna is imported only when a search runs: Hydra imports every plugin module on each start."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class FmnistOptunaConf:
    _target_: str = "hydra_plugins.fmnist_plugins.optuna_sweeper.FmnistOptunaSweeper"
    _recursive_: bool = False  # sampler and pruner are built by fmnist.sweeps.search, not by Hydra
    direction: str = "maximize"  # maximize or minimize the job's objective
    study_name: str = "fmnist"
    storage: str | None = None  # null: optuna.journal in the sweep directory; or a DB URL
    n_trials: int = 20  # finished trials (completed, pruned, failed) the study ends with
    n_jobs: int | None = None  # trials at once; null: the pool launcher's slots, else 1
    sampler: Any = None  # {_target_: optuna.samplers...}; null: Optuna's default (TPE)
    pruner: Any = "median"  # median, successive_halving, hyperband, none, or {_target_: ...}
    params: dict[str, str] | None = None  # the search space, in Hydra's sweep syntax


ConfigStore.instance().store(group="hydra/sweeper", name="fmnist_optuna", node=FmnistOptunaConf)


class FmnistOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from fmnist.sweeps.search import Search, Settings

        plain = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in self.settings.items()
        }
        search = Search(Settings(**plain), self.launcher, self.config, self.validate_batch_is_legal)
        return search.run(arguments)
