"""The command line: `python train.py` (or `fmnist-train`) trains once; `-m` sweeps.

Hydra composes the config and makes the run directory; `fmnist.engine.train` does the work. This
module turns what can go wrong into exit codes and one-line messages.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import fmnist.resolvers  # noqa: F401  (registers the resolvers conf/ uses)
from fmnist.errors import EXPECTED, NonFiniteLossError
from fmnist.paths import conf_dir
from fmnist.run.status import objective
from fmnist.validation import settle_models, validate

CONF_DIR = str(conf_dir())  # the wheel's fmnist/conf, or the checkout's conf/


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns the objective (what an optimizing sweeper maximizes or minimizes)."""
    hydra_cfg = HydraConfig.get()
    try:
        settle_models(cfg, list(hydra_cfg.overrides.task), logging.getLogger("fmnist"))
        validate(cfg)  # before torch is imported (~3 s): a value out of range is one line at once
        from fmnist.engine.runner import train

        train(cfg, overrides=list(hydra_cfg.overrides.task), hydra_cfg=hydra_cfg)
    except (*EXPECTED, OSError) as exc:
        if hydra_cfg.mode != RunMode.RUN:
            raise  # a sweep records the failure and goes on with the other jobs
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, EXPECTED) and not isinstance(exc, NonFiniteLossError) else 1)
    return objective(cfg.output_dir)


def one_line(exc: BaseException) -> str:
    """An OSError (disk full, read-only, vanished file) as its reason and path, else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """A background thread (TensorBoard's event writer) failing: one line, not a traceback."""
    print(
        f"warning: background thread {args.thread.name if args.thread else ''} stopped: "
        f"{one_line(args.exc_value)}",
        file=sys.stderr,
    )


def main() -> None:
    """Console entry: resume=DIR re-applies DIR's overrides; Ctrl-C and SIGTERM exit 130/143."""
    # runs after the exit handlers registered later (trackers, the sweep report): the collector
    # then skips the objects of torch's modules at interpreter shutdown (~1 s of every run's exit;
    # docs/performance.md). Runs and their writers are closed before; logging flushes its own.
    atexit.register(gc.freeze)
    sys.argv = [sys.argv[0], *resume_overrides(sys.argv[1:])]
    check_yaml([Path(CONF_DIR), *extra_config_dirs(sys.argv[1:])])
    check_writable(sys.argv[1:])
    for sig in (signal.SIGINT, signal.SIGTERM):  # the run's own handler replaces these in training
        signal.signal(sig, _terminate)
    threading.excepthook = _thread_failed
    try:
        hydra_main()
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(
            "interrupted: rerun the same command to resume (see README, 'When things go wrong')",
            file=sys.stderr,
        )
        sys.exit(128 + signum)


def _terminate(signum: int, frame: object) -> None:
    """SIGINT or SIGTERM outside a training loop (a sweep's parent installs its own handler,
    `fmnist.sweeps.report.SweepReport.on_signal`, which stops its workers first)."""
    from fmnist.engine.signals import RunInterrupted

    raise RunInterrupted(signum)


def extra_config_dirs(argv: list[str]) -> list[Path]:
    """Folders given with --config-dir / -cd (Hydra searches them too)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
    return dirs


def check_writable(argv: list[str]) -> None:
    """Hydra creates the run directory before the task starts and shows a traceback when it
    cannot: look first where it will write (hydra.run.dir / hydra.sweep.dir, else ./outputs)."""
    given = [
        a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
    ]
    target = Path(given[-1] if given else "outputs").absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(existing) else "permission denied"
        print(
            f"error: cannot create run directories in {existing} ({reason}); choose another hydra.run.dir",
            file=sys.stderr,
        )
        sys.exit(2)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_yaml(folders: list[Path]) -> None:
    """A syntax error in any config file is one line naming file and place, not a traceback.

    Hydra would show the YAML parser's stack trace; parsing the ~40 small files first costs ~20 ms.
    """
    import yaml

    for folder in folders:
        for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                print(f"error: {path}{where}: YAML syntax error ({problem})", file=sys.stderr)
                sys.exit(2)
            except (OSError, UnicodeDecodeError) as exc:
                print(f"error: cannot read config file {path}: {exc}", file=sys.stderr)
                sys.exit(2)


def resume_overrides(argv: list[str]) -> list[str]:
    """`resume=DIR`: the overrides DIR was started with, then the user's, into DIR itself."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    run_dir = Path(given[-1])
    saved = run_dir / ".hydra" / "overrides.yaml"
    try:
        previous = [str(o) for o in OmegaConf.load(saved)]
    except Exception:  # missing, unreadable or not a list: not a run we can resume
        print(
            f"error: resume={run_dir} is not a run directory (no readable {saved})", file=sys.stderr
        )
        sys.exit(2)
    previous = [o for o in previous if not o.startswith(("resume=", "hydra.", "output_dir="))]
    return [*previous, *argv, f"hydra.run.dir={run_dir}"]


if __name__ == "__main__":
    main()
