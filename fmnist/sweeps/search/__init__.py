"""Hyperparameter search on Optuna: the study on disk, the search space from YAML, the pruner,
and what a finished trial's run directory says about it.

The sweeper (`hydra_plugins/fmnist_plugins/optuna_sweeper.py`) asks trials and launches them as
ordinary sweep jobs; each job reports its objective after every epoch to the same study
(`fmnist.sweeps.search.report`, added as a callback) and stops when the pruner says so. Both sides meet only through the
storage, so trials may run in the sweep's process, in joblib workers or on Slurm nodes.
"""

from fmnist.sweeps.search.loop import Search, Settings, trial_dir
from fmnist.sweeps.search.space import SearchError, SearchSpace, override, search_space
from fmnist.sweeps.search.study import (
    JOURNAL,
    PRUNERS,
    load_trial,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
)

__all__ = [
    "JOURNAL",
    "PRUNERS",
    "Search",
    "SearchError",
    "SearchSpace",
    "Settings",
    "load_trial",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "open_study",
    "override",
    "search_space",
    "trial_dir",
]
