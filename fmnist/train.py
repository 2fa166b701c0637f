"""The Hydra task: `train(cfg)` builds a run from the config and runs the loop.

`python train.py` (or `fmnist-train`) trains once; `-m` sweeps, one output directory a job.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fmnist import sweep
from fmnist.callbacks.base import RunState, Tracker
from fmnist.callbacks.status import RunInterrupted, StatusCallback, read_status
from fmnist.checkpoint import checkpoint_path, load_checkpoint, set_rng_state
from fmnist.config import ConfigError, validate
from fmnist.data import DataError, build_data
from fmnist.graphs import GraphedStep, optimizer_options, want_graphs
from fmnist.hparams import flat_hparams, identity
from fmnist.models import count_parameters
from fmnist.runtime import configure, pick_device, seed_everything

log = logging.getLogger("fmnist")
CONF_DIR = str(
    Path(__file__).resolve().parent.parent / "conf"
)  # editable install: the repo's conf/


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training cannot recover, so the run fails."""


class StopOnSignal:
    """SIGINT/SIGTERM set a flag the loop checks after each batch; a second one exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers: leave signals alone
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nsignal {signum}: stopping after this batch (again to quit now)", file=sys.stderr)

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, loader: Any, limit: int | None = None, keep_wrong: int = 32
) -> dict[str, Any]:
    """Mean loss, accuracy, confusion matrix and a few misclassified images of one split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=next(model.parameters()).device)
    confusion = torch.zeros(100, dtype=torch.long, device=loss_sum.device)
    wrong_x, wrong_p, wrong_y, n = [], [], [], 0
    for i, (x, y) in enumerate(loader.epoch(0)):
        if limit and i >= limit:
            break
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        pred = logits.argmax(1)
        confusion += torch.bincount(y * 10 + pred, minlength=100)
        n += len(y)
        if sum(len(w) for w in wrong_p) < keep_wrong:
            miss = pred != y
            wrong_x.append(x[miss][:keep_wrong].float().cpu())
            wrong_p.append(pred[miss][:keep_wrong].cpu())
            wrong_y.append(y[miss][:keep_wrong].cpu())
    model.train(was_training)
    confusion = confusion.view(10, 10).cpu()
    correct = int(confusion.trace())
    return {
        "loss": loss_sum.item() / n,
        "accuracy": correct / n,
        "num_correct": correct,
        "confusion": confusion.tolist(),
        "wrong_images": torch.cat(wrong_x)[:keep_wrong] if wrong_x else torch.zeros(0, 1, 28, 28),
        "wrong_preds": torch.cat(wrong_p)[:keep_wrong]
        if wrong_p
        else torch.zeros(0, dtype=torch.long),
        "wrong_targets": torch.cat(wrong_y)[:keep_wrong]
        if wrong_y
        else torch.zeros(0, dtype=torch.long),
    }


def prepare_run_dir(
    run_dir: Path, hparams: dict[str, Any], epochs: int
) -> dict[str, Any] | str | None:
    """What to do with this directory: a checkpoint to resume, "skip" (done), or None (fresh).

    Never overwrites a different run; reruns failed runs from scratch.
    """
    status = read_status(run_dir)
    if status is None:
        if (run_dir / "results.csv").exists() or (run_dir / "checkpoints").exists():
            raise ConfigError(
                f"hydra.run.dir={run_dir} holds results of an unknown run; choose another directory"
            )
        return None
    if identity(status.get("hparams", {})) != identity(hparams):
        old, new = identity(status.get("hparams", {})), identity(hparams)
        diff = ", ".join(
            f"{k}: {old.get(k)} -> {new.get(k)}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        )
        raise ConfigError(
            f"output dir {run_dir} already holds a different run ({diff}); use another directory"
        )
    alive = status.get("status") == "running" and status.get("host") == socket.gethostname()
    if alive and status.get("pid") not in (None, os.getpid()) and _pid_alive(status["pid"]):
        raise ConfigError(f"output dir {run_dir} is in use by running process {status['pid']}")
    if status.get("status") == "completed" and status.get("last_epoch", 0) >= epochs:
        return "skip"
    last = checkpoint_path(run_dir, "last")
    if status.get("status") != "failed" and last.exists():
        return load_checkpoint(last)
    for stale in ("checkpoints", "results.csv", "results.json", "confusion_matrix.csv"):
        path = run_dir / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def output_dir() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called outside Hydra (tests, notebooks): use the working directory
        return Path.cwd()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run as configured; returns the final epoch's results row."""
    validate(cfg)
    run_dir = output_dir()
    hparams = flat_hparams(cfg)
    resume = prepare_run_dir(run_dir, hparams, cfg.epochs)
    if resume == "skip":
        status = read_status(run_dir)
        log.info(
            "%s already completed %d epochs (test accuracy %s): nothing to do",
            run_dir,
            status["last_epoch"],
            status.get("test_accuracy"),
        )
        return {"test_accuracy": status.get("test_accuracy"), "skipped": True}
    state, tracker = build_run(cfg, run_dir, hparams)
    if isinstance(resume, dict):
        restore(state, resume)
    return fit(state, tracker)


def build_run(cfg: DictConfig, run_dir: Path, hparams: dict[str, Any]) -> tuple[RunState, Tracker]:
    """Threads, device, data, model, optimizer, schedule and callbacks, all from the config."""
    threads = configure(cfg.runtime)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    data = build_data(
        cfg.data, cfg.batch_size, cfg.shuffle, cfg.seed, device, cfg.runtime.channels_last
    )
    model = instantiate(cfg.model).to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    graphs = want_graphs(cfg, device)
    optimizer = instantiate(cfg.optimizer)(model.parameters(), **optimizer_options(cfg, graphs))
    steps = cfg.epochs * min(len(data.train), cfg.limit_train_batches or len(data.train))
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=steps) if cfg.scheduler else None
    # status.json last: it records an epoch only once that epoch's results and checkpoint exist
    tracker = Tracker([*(instantiate(c) for c in cfg.callbacks.values() if c), StatusCallback()])
    hparams["params"] = count_parameters(model)
    log.info(
        "%s: %s, %d parameters, %s%s, %d threads, %d train images",
        run_dir,
        hparams["model"],
        hparams["params"],
        device,
        " (CUDA graphs)" if graphs else "",
        threads,
        data.train.num_samples,
    )
    state = RunState(
        cfg=cfg,
        run_dir=run_dir,
        name=run_dir.name,
        hparams=hparams,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data=data,
        device=device,
        graphs=graphs,
    )
    return state, tracker


def restore(state: RunState, checkpoint: dict[str, Any]) -> None:
    """Continue exactly where the last finished epoch left off (RNG states included)."""
    state.model.load_state_dict(checkpoint["model"])
    capturable = [g.get("capturable") for g in state.optimizer.param_groups]
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    for group, flag in zip(state.optimizer.param_groups, capturable, strict=True):
        if flag is not None:  # this run's device decides, not the one the checkpoint came from
            group["capturable"] = flag
    if state.scheduler is not None and checkpoint["scheduler"] is not None:
        state.scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    state.start_epoch = state.epoch = checkpoint["epoch"]
    state.step, state.history, state.best = (
        checkpoint["step"],
        checkpoint["history"],
        checkpoint["best"],
    )
    state.extra, state.previous_duration = checkpoint["extra"], checkpoint["duration"]
    log.info("resuming %s after epoch %d", state.run_dir, state.start_epoch)


def fit(state: RunState, tracker: Tracker) -> dict[str, Any]:
    """The training loop: it calls the tracker's hooks and knows nothing of files."""
    cfg, model, optimizer, scheduler, data = (
        state.cfg,
        state.model,
        state.optimizer,
        state.scheduler,
        state.data,
    )
    device, rt = state.device, cfg.runtime
    step_model = torch.compile(model) if rt.compile else model
    nan_every = rt.nan_check_interval or (1 if device.type == "cpu" else 50)  # a check syncs a GPU
    # plain locals in the batch loop: a DictConfig lookup costs microseconds, 600 times an epoch
    limit, smoothing = cfg.limit_train_batches or 0, cfg.label_smoothing
    autocast = nullcontext
    if rt.bf16:  # the weight-cast cache would hold tensors from outside a CUDA graph
        autocast = partial(
            torch.autocast, device.type, torch.bfloat16, cache_enabled=not state.graphs
        )
    select = "val_accuracy" if data.val is not None else "test_accuracy"  # what best.pt follows
    # the epoch's sums stay on the device (no sync per batch) and keep their address (CUDA graphs)
    running_loss = state.running_loss = torch.zeros((), device=device)
    running_correct = state.running_correct = torch.zeros((), dtype=torch.long, device=device)

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast():
            preds = step_model(images)
            loss = F.cross_entropy(preds.float(), labels, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running_loss.add_(loss.detach() * len(labels))  # per sample: exact for a short batch
        running_correct.add_((preds.argmax(1) == labels).sum())

    if state.graphs:
        train_step = GraphedStep(train_step, model, optimizer, (running_loss, running_correct))
    state.run_start = time.perf_counter()
    with StopOnSignal() as stop:
        try:
            tracker.on_run_start(state)
            for epoch in range(state.start_epoch + 1, cfg.epochs + 1):
                state.epoch, state.epoch_start = epoch, time.perf_counter()
                running_loss.zero_()
                running_correct.zero_()
                state.running_seen = 0
                tracker.on_epoch_start(state)
                model.train()
                for batch_idx, (images, labels) in enumerate(data.train.epoch(epoch)):
                    if limit and batch_idx >= limit:
                        break
                    train_step(images, labels)
                    if scheduler is not None:
                        scheduler.step()  # per batch: cosine and one-cycle need it
                    state.step += 1
                    state.running_seen += len(labels)
                    if state.step % nan_every == 0 and not torch.isfinite(running_loss):
                        raise NonFiniteLossError(
                            f"loss became {running_loss.item()} at epoch {epoch}, "
                            f"batch {batch_idx + 1} (lr={cfg.lr}): lower the learning rate"
                        )
                    tracker.on_batch_end(state, batch_idx)
                    stop.check()
                tracker.on_epoch_end(state, epoch_row(state, select))
                stop.check()
            tracker.on_run_end(state)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                # Hydra 1.3 leaves a failed job's log empty: the traceback goes there, not to the console
                log_file = write_traceback(state.run_dir)
                log.error("run failed: %s: %s (traceback in %s)", type(exc).__name__, exc, log_file)
            tracker.on_exception(state, exc)
            raise
    return state.history[-1]


def write_traceback(run_dir: Path) -> Path:
    """Append the current exception's traceback to the job's log file (not to the console)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    path = Path(handlers[0].baseFilename) if handlers else run_dir / "train.log"
    with path.open("a") as handle:
        handle.write(traceback.format_exc())
    return path


def epoch_row(state: RunState, select: str) -> dict[str, Any]:
    """Evaluate, update the best-so-far, and build this epoch's results row."""
    cfg, data = state.cfg, state.data
    if not torch.isfinite(state.running_loss):
        raise NonFiniteLossError(
            f"loss became {state.running_loss.item()} in epoch {state.epoch} (lr={cfg.lr})"
        )
    seen = state.running_seen
    train_correct = int(state.running_correct.item())
    state.evals["test"] = evaluate(state.model, data.test, cfg.limit_test_batches)
    row: dict[str, Any] = {
        "run": state.name,
        "epoch": state.epoch,
        "loss": state.running_loss.item() / seen,
        "accuracy": train_correct / seen,
        "num_correct": train_correct,
        "test_loss": state.evals["test"]["loss"],
        "test_accuracy": state.evals["test"]["accuracy"],
        "test_num_correct": state.evals["test"]["num_correct"],
    }
    if data.val is not None:
        state.evals["val"] = evaluate(state.model, data.val, keep_wrong=0)
        row |= {
            "val_loss": state.evals["val"]["loss"],
            "val_accuracy": state.evals["val"]["accuracy"],
        }
    row["lr_current"] = state.optimizer.param_groups[0]["lr"]
    now = time.perf_counter()
    row["epoch_duration"] = now - state.epoch_start
    row["run_duration"] = state.previous_duration + now - state.run_start
    row |= {k: v for k, v in state.hparams.items() if k not in row}
    state.history.append(row)
    if row[select] > state.best.get("value", -1.0):
        state.best = {"metric": select, "value": row[select], "epoch": state.epoch}
    return row


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        row = train(cfg)
    except (ConfigError, DataError, NonFiniteLossError) as exc:
        if HydraConfig.get().mode != RunMode.RUN:
            raise  # a sweep records the failure and goes on with the other jobs
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1 if isinstance(exc, NonFiniteLossError) else 2)
    metric = "val_accuracy" if cfg.data.val_size else "test_accuracy"
    return row.get(metric)  # what an optimizing sweeper maximizes


def main() -> None:
    """Console entry: resume=DIR re-applies DIR's overrides; sweeps end with a report."""
    sys.argv = [sys.argv[0], *resume_overrides(sys.argv[1:])]
    try:
        hydra_main()
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        sweep.finish(failed_exit=False)
        print(
            "interrupted: rerun the same command to resume (see README, 'When things go wrong')",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
    except SystemExit:
        sweep.finish()
        raise
    sweep.finish()


def resume_overrides(argv: list[str]) -> list[str]:
    """`resume=DIR`: the overrides DIR was started with, then the user's, into DIR itself."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    run_dir = Path(given[-1])
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        print(f"error: resume={run_dir} is not a run directory (no {saved})", file=sys.stderr)
        sys.exit(2)
    previous = [o for o in OmegaConf.load(saved) if not o.startswith(("resume=", "hydra."))]
    return [*previous, *argv, f"hydra.run.dir={run_dir}"]


if __name__ == "__main__":
    main()
