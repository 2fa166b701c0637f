"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's Slurm
launcher with fmnist's reporting and `wait`; the work is in `fmnist.sweeps.slurm`."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


@dataclass
class FmnistSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.fmnist_plugins.slurm_launcher.FmnistSlurmLauncher"
    wait: bool = True  # false: submit, print the job ids and return (fmnist-compare reports later)


ConfigStore.instance().store(group="hydra/launcher", name="fmnist_slurm", node=FmnistSlurmConf)


class FmnistSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from fmnist.sweeps.slurm import launch

        return launch(self, job_overrides, initial_job_idx)
