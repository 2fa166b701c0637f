"""Shared fixtures: composed configs (Hydra's compose API) and the real data set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import fmnist.resolvers  # noqa: F401  (registers the schema and the resolvers)
from fmnist.data import ensure_data

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
DATA = Path(os.environ.get("FMNIST_DATA", ROOT / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real Fashion-MNIST, prepared once (Debian files, torchvision or apt-get)."""
    ensure_data(DATA)
    return DATA


def compose_cfg(
    overrides: list[str] | None = None, data_root: Path = DATA, output_dir: Path | None = None
) -> DictConfig:
    """The config the command line would get, Hydra's own node included, as Lightning-Hydra-
    Template's tests do: `${hydra:...}` resolves, so `train(cfg)` runs the CLI's code path."""
    GlobalHydra.instance().clear()
    extra = [f"output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"data.root={data_root}", *extra, *(overrides or [])],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def cfg_quick(data_root: Path, tmp_path: Path) -> DictConfig:
    """A default config cut to a few batches, for in-process runs into `tmp_path`."""
    return compose_cfg(
        [
            "epochs=2",
            "limit_train_batches=3",
            "limit_test_batches=2",
            "callbacks.progress.bar=false",
        ],
        data_root,
        output_dir=tmp_path,
    )


def run_train(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python train.py ARGS` in a subprocess, as a user types it (from `cwd`)."""
    full_env = {**os.environ, "FMNIST_DATA": str(DATA), "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"train.py {args} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def run_importing(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`python -X importtime ARGS`: the process and the modules it imported (torch: `torch*`)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    return done, imported


def imported_torch(imported: list[str]) -> list[str]:
    return [m for m in imported if m == "torch" or m.startswith("torch.")]


def run_module(
    module: str, *args: object, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m fmnist.commands.MODULE ARGS` (evaluate, predict, export, compare...) or
    `python -m fmnist.MODULE` for a dotted one (data.prepare) in a subprocess."""
    name = f"fmnist.{module}" if "." in module else f"fmnist.commands.{module}"
    return subprocess.run(
        [sys.executable, "-m", name, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


SWEEP4 = ["-m", "lr=0.01,0.001", "batch_size=100,1000", "epochs=2", "limit_train_batches=4"]
SWEEP4 += ["limit_test_batches=2"]  # the README's sweep, cut to a few batches per epoch
TRAINED_RUN = ["epochs=2", "limit_train_batches=300", "callbacks.tensorboard=null"]


def run_command(module: str, *args: object, capsys: pytest.CaptureFixture) -> Any:
    """`fmnist-MODULE ARGS` in this process, through its own `main(argv)`: for tests of what a
    command computes and prints, not of its process (each start-up costs ~4 s: torch)."""
    from importlib import import_module

    main = import_module(f"fmnist.commands.{module}").main
    capsys.readouterr()
    try:
        code = main([str(a) for a in args]) or 0
    except SystemExit as exc:  # argparse's own exits
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([module, *map(str, args)], code, out, err)


@pytest.fixture(scope="session")
def sweep4(tmp_path_factory, data_root) -> Path:
    """A real 4-job sweep, as typed in the README, cut to a few batches per epoch."""
    cwd = tmp_path_factory.mktemp("sweep4")
    sweep_dir = cwd / "sweep"
    run_train([*SWEEP4, f"hydra.sweep.dir={sweep_dir}"], cwd=cwd)
    return sweep_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root) -> Path:
    """A short real run (2 epochs of 300 batches) with checkpoints and full test evaluation."""
    cwd = tmp_path_factory.mktemp("trained")
    run_dir = cwd / "run"
    run_train([*TRAINED_RUN, f"hydra.run.dir={run_dir}"], cwd=cwd)
    return run_dir


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """A real single-node Slurm cluster (scripts/slurm-local.sh: munge, MariaDB, slurmdbd,
    slurmctld, slurmd), started once for the tests that need it and stopped by pid at the end.
    Skips with the reason where it cannot start (not root, Slurm not installed)."""
    import shutil

    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    if shutil.which("slurmctld") is None:
        pytest.skip(
            "Slurm is not installed: scripts/slurm-local.sh install (.ci/run does, as root)"
        )
    import tempfile

    # not under pytest's own folder: munged runs as user munge and must reach its files
    folder = Path(tempfile.mkdtemp(prefix="fmnist-slurm-"))
    script = ROOT / "scripts" / "slurm-local.sh"
    done = subprocess.run(
        [str(script), "start", str(folder)], capture_output=True, text=True, timeout=180
    )
    if done.returncode != 0:
        subprocess.run([str(script), "stop", str(folder)], capture_output=True, timeout=120)
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the local Slurm cluster did not start: {reason}")
    yield folder
    subprocess.run([str(script), "stop", str(folder)], capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: Path, monkeypatch) -> list[str]:
    """The cluster's SLURM_CONF for this test's subprocesses, and the launcher overrides that fit
    a 2-core node (one CPU and 1 GB a job)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster / "etc" / "slurm.conf"))
    return [
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
    ]
