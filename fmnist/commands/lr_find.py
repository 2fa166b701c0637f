"""Learning-rate range test (Smith 2017): raise the learning rate exponentially over a few hundred
steps, record the loss, and suggest the rate where it falls fastest.

    fmnist-lr-find [HYDRA OVERRIDES...] [--steps 200] [--min 1e-6] [--max 1] [--out DIR]
    fmnist-lr-find experiment=fast --steps 300

It trains a throw-away copy of the configured model and writes lr_find.png and lr_find.json to
`--out` (default outputs/lr_find/<time>/): no status.json, results or checkpoints, so nothing
there can be mistaken for a trained run (fmnist-compare and resume ignore it).
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist.data import DataError
from fmnist.engine.build import build_run
from fmnist.engine.fit import make_step
from fmnist.errors import ConfigError
from fmnist.hparams import flat_hparams
from fmnist.main import CONF_DIR
from fmnist.models import ModelError
from fmnist.run.files import write_json
from fmnist.validation import validate


def compose_config(overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", [*overrides, f"output_dir={out}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def range_test(
    cfg: DictConfig, steps: int, lr_min: float, lr_max: float, diverge: float = 4.0
) -> dict:
    """Loss after each step while the learning rate grows from lr_min to lr_max (exponentially).
    The run is built by the engine (device, threads, data, model, optimizer, bf16) as training
    builds it, without callbacks; no CUDA graphs, since the learning rate changes every step."""
    with open_dict(cfg):
        cfg.callbacks = {}
        cfg.runtime.cuda_graphs = False
    run = build_run(cfg, Path(cfg.output_dir), flat_hparams(cfg))
    step = make_step([run])
    lrs: list[float] = []
    losses: list[float] = []
    smooth, best = 0.0, math.inf
    batches = (batch for epoch in range(1, 10_000) for batch in run.data.train.epoch(epoch))
    run.model.train()
    for i, (x, y) in zip(range(steps), batches, strict=False):
        lr = lr_min * (lr_max / lr_min) ** (i / max(1, steps - 1))
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # param_groups keep their ratios
        run.running_loss.zero_()
        step.train([(x, y)])
        value = run.running_loss.item() / len(y)
        smooth = 0.9 * smooth + 0.1 * value  # exponential moving average, from 0...
        debiased = smooth / (1 - 0.9 ** (i + 1))  # ...so divided by what the zero start took
        lrs.append(lr)
        losses.append(debiased)
        best = min(best, debiased)
        if not math.isfinite(value) or debiased > diverge * best:
            break  # diverged: the rest of the range says nothing
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggest(lrs, losses)}


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The rate where the smoothed loss falls fastest (steepest negative slope in log lr)."""
    if len(lrs) < 5:
        return lrs[len(lrs) // 2]
    skip = max(1, len(lrs) // 10)  # the first steps are noise
    slopes = [
        (losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        for i in range(skip, len(lrs) - 1)
    ]
    return lrs[skip + min(range(len(slopes)), key=slopes.__getitem__)]


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    from fmnist.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(
        result["suggested_lr"],
        color="tab:red",
        linestyle="--",
        label=f"suggested {result['suggested_lr']:.2e}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmnist-lr-find", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--min", type=float, default=1e-6, dest="lr_min")
    parser.add_argument("--max", type=float, default=1.0, dest="lr_max")
    parser.add_argument("--out", default=None, help="default: outputs/lr_find/<time>/")
    args = parser.parse_args(argv)
    if not (0 < args.lr_min < args.lr_max) or args.steps < 10:
        print("error: need 0 < --min < --max and --steps >= 10", file=sys.stderr)
        return 2
    out = Path(args.out or f"outputs/lr_find/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    try:
        cfg = compose_config(args.overrides, out)
        validate(cfg)
        result = range_test(cfg, args.steps, args.lr_min, args.lr_max)
    except (HydraException, ConfigError, DataError, ModelError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    title = f"LR range test: {cfg.choices.model}, {cfg.choices.optimizer}, batch {cfg.batch_size}"
    plot(result, out / "lr_find.png", title)
    write_json(
        out / "lr_find.json",
        {
            **result,
            "overrides": args.overrides,
            "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        },
    )
    print(
        f"suggested lr {result['suggested_lr']:.3g} (steepest loss descent over {len(result['lrs'])} "
        f"steps from {args.lr_min:g} to {result['lrs'][-1]:.3g}); wrote lr_find.png, lr_find.json in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
