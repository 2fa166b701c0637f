"""fmnist from Python and Jupyter: the same engine as the command line, without a shell.

    import fmnist
    cfg = fmnist.compose(["lr=0.001", "epochs=2"])   # exactly what `python train.py ...` gets
    run = fmnist.train(cfg)                          # or fmnist.train(["lr=0.001"])
    run.results                                      # one row per epoch, as results.csv
    grid = fmnist.sweep(["lr=0.01,0.001", "batch_size=100,1000"])   # a real Hydra multirun
    grid.table, grid.across_seeds
    fmnist.load(run.dir).predict(images)

Each call can be repeated in one process with other overrides: Hydra's global state is set up
and cleared inside every call. Errors are the command line's one-line errors, raised as
`FmnistError`; interrupting (Ctrl-C, Jupyter's stop button) stops a run at its next batch after
saving, as on the command line (status `interrupted`; the same call resumes it).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist.main import one_line
from fmnist.paths import conf_dir


class FmnistError(Exception):
    """What went wrong, in the one line the command line prints."""


@contextmanager
def _hydra(config: DictConfig | None = None) -> Iterator[None]:
    """Hydra's global state for one call, cleared after it: a second call starts afresh."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(
            config_dir=str(conf_dir()), version_base="1.3", job_name="train"
        ):
            if config is not None:
                HydraConfig.instance().set_config(config)
            yield
    finally:
        HydraConfig.instance().cfg = saved
        GlobalHydra.instance().clear()


def compose(overrides: Sequence[str] | None = None, config_dir: str | Path | None = None) -> Any:
    """The config `python train.py OVERRIDES` gets (with `--config-dir CONFIG_DIR`: a folder of
    your own presets, in conf/'s group layout), resolved (`eval_every: ${epochs}` kept as that
    link: `fmnist.config.resolve`), with its run directory chosen; the
    Hydra node (`cfg.hydra`) rides along for the run's .hydra/ files."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import fmnist.resolvers  # noqa: F401  (the resolvers conf/ uses)
    from fmnist.config import resolve

    given = [str(o) for o in overrides or []]
    if not any(o.startswith("hydra.run.dir=") for o in given):  # calls within one second apart
        given.append("hydra.run.dir=outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}_${fmnist.pid:}")
    if config_dir is not None:
        given.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    try:
        with _hydra():
            cfg = hydra.compose("train", overrides=given, return_hydra_config=True)
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(Path(str(cfg.hydra.run.dir)).absolute())
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        with _hydra(cfg):
            resolve(task)  # `${hydra:...}` and the clock, as in this call
        with read_write(task), open_dict(task):
            task.hydra = cfg.hydra
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise FmnistError(one_line(exc)) from None
    return task


def train(cfg_or_overrides: Any = None, config_dir: str | Path | None = None) -> Run:
    """Train one run into its own directory (the config's `output_dir`) and return it. A run
    that completed before is returned as it is; one cut short is resumed."""
    from fmnist.engine.runner import train as train_run
    from fmnist.errors import EXPECTED

    cfg = cfg_or_overrides
    if not isinstance(cfg, DictConfig):
        cfg = compose(cfg, config_dir)
    hydra_cfg = cfg.get("hydra")
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    overrides = [str(o) for o in hydra_cfg.overrides.task] if hydra_cfg else []
    with _own_signals(), _console():
        try:
            train_run(task, overrides, hydra_cfg)
        except (*EXPECTED, OSError) as exc:
            raise FmnistError(one_line(exc)) from None
    return Run(Path(task.output_dir))


def sweep(
    overrides: Sequence[str],
    launcher: str | None = None,
    config_dir: str | Path | None = None,
    quiet: bool = False,
) -> SweepResult:
    """A real Hydra multirun (`python train.py -m OVERRIDES`, one directory per job, any
    launcher: basic, joblib, fused, slurm...) in a child process, its output shown as it comes;
    returns the sweep summary. Interrupting stops every started job after it saved."""
    args = ["-m", *map(str, overrides)]
    if launcher:
        args.append(f"hydra/launcher={launcher}")
    if config_dir is not None:
        args += ["--config-dir", str(Path(config_dir).resolve())]
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")]
    if given:
        sweep_dir = Path(given[-1])
    else:
        now = datetime.now()
        sweep_dir = Path("outputs/sweeps", f"{now:%Y-%m-%d}", f"{now:%H-%M-%S-%f}_{os.getpid()}")
        args.append(f"hydra.sweep.dir={sweep_dir}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "fmnist.main", *args]
    child = subprocess.Popen(  # its own session: a terminal's or Jupyter's stop reaches it once
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        for line in child.stdout:
            lines.append(line.rstrip("\n"))
            if not quiet:
                print(line, end="", flush=True)
        code = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)  # the sweep stops its jobs at their next batch
        child.wait()
        raise
    errors = [line for line in lines if line.startswith("error: ")]
    if code == 2 or not sweep_dir.is_dir():
        raise FmnistError(errors[-1][len("error: ") :] if errors else f"the sweep exited {code}")
    result = SweepResult(sweep_dir.absolute(), code)
    if code != 0 and result.table.empty:
        raise FmnistError(errors[-1][len("error: ") :] if errors else f"the sweep exited {code}")
    return result


def load(run_dir: str | Path) -> Run:
    """A run directory (finished, or cut short): its config, results and best model."""
    path = Path(run_dir)
    if not (path / "status.json").is_file() and not (path / "checkpoints").is_dir():
        raise FmnistError(f"{path} is not a run directory (no status.json, no checkpoints)")
    return Run(path)


def compare(path: str | Path) -> pd.DataFrame:
    """`fmnist-compare PATH` as a DataFrame: one row per run, ranked by the objective."""
    return _summary(Path(path)).table


def _summary(path: Path) -> Any:
    from fmnist.commands.compare.table import summarize

    try:
        return summarize(path)
    except (OSError, ValueError) as exc:
        raise FmnistError(one_line(exc)) from None


@dataclass
class Run:
    """One run directory."""

    dir: Path

    @property
    def status(self) -> str:
        """running, completed, pruned, failed or interrupted (`crashed` for a dead 'running')."""
        from fmnist.run.status import liveness, read_status

        return liveness(read_status(self.dir))

    @property
    def results(self) -> pd.DataFrame:
        """One row per finished epoch, the columns of results.csv."""
        path = self.dir / "results.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    @property
    def best(self) -> Path:
        """The checkpoint the objective selected (checkpoints/best.pt)."""
        from fmnist.run.checkpoint import checkpoint_path

        return checkpoint_path(self.dir, "best")

    @property
    def config(self) -> DictConfig:
        return OmegaConf.load(self.dir / ".hydra" / "config.yaml")

    @cached_property
    def _logits(self) -> Any:
        from fmnist.commands.predict import torch_logits
        from fmnist.run.directory import RunDirError

        try:
            return torch_logits(str(self.dir), "best", None)[0]
        except RunDirError as exc:
            raise FmnistError(str(exc)) from None

    def predict(self, images: Any) -> pd.DataFrame:
        """Class probabilities of images shaped like Fashion-MNIST's ([N, 28, 28] or
        [N, 1, 28, 28]; uint8 pixels, or floats scaled to 0..1), and the predicted class; with
        the test-time augmentation the run was trained with."""
        import numpy as np

        from fmnist import CLASSES
        from fmnist.commands.predict import softmax

        x = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255
        x = x.astype(np.float32).reshape(-1, 1, 28, 28)
        probs = softmax(self._logits(x))
        table = pd.DataFrame(probs, columns=list(CLASSES))
        table.insert(0, "predicted", [CLASSES[i] for i in probs.argmax(1)])
        return table

    def _repr_html_(self) -> str:
        return f"<b>{self.dir}</b> ({self.status})" + self.results.to_html(max_rows=20)


@dataclass
class SweepResult:
    """A finished (or partly failed) sweep: its directory and summary tables."""

    dir: Path
    returncode: int = 0
    summary: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.summary = _summary(self.dir)

    @property
    def table(self) -> pd.DataFrame:
        """The article's table: one row per job, ranked by the objective."""
        return self.summary.table

    @property
    def across_seeds(self) -> pd.DataFrame | None:
        """Mean and spread over seeds where seed varies; None otherwise."""
        return self.summary.seeds

    def _repr_html_(self) -> str:
        return f"<b>{self.dir}</b>" + self.table.to_html(max_rows=40)


@contextmanager
def _own_signals() -> Iterator[None]:
    """A run leaves its stop handler installed once stopped (a command-line process is on its
    way out); in a kernel that lives on, the handlers from before the call come back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def _console() -> Iterator[None]:
    """The run's lines (progress table, decisions) shown in a notebook or script that set up no
    logging of its own."""
    root, package = logging.getLogger(), logging.getLogger("fmnist")
    handler = None
    if not root.handlers and not package.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            package.removeHandler(handler)
