"""Evaluate a trained model on the test (or validation) split: overall, per class, confusion matrix.

python -m fmnist.commands.evaluate outputs/runs/2026-11-27/10-00-00_123 [--checkpoint last] [--split val]
python -m fmnist.commands.evaluate somewhere/best.pt        # a checkpoint file alone works too
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fmnist import CLASSES
from fmnist.commands.console import closed_pipe_is_fine
from fmnist.config import DataConfig
from fmnist.data import DataError, build_data
from fmnist.evaluation import evaluate, per_class
from fmnist.paths import data_root as default_root
from fmnist.run.checkpoint import load_trained
from fmnist.run.directory import RunDirError
from fmnist.run.files import write_json
from fmnist.tta import describe


def render(result: dict[str, Any]) -> str:
    short = [c.split("/")[0][:7] for c in CLASSES]
    tta = describe(bool(result.get("tta")), result.get("tta_translate") or 0)
    tta = f", with {tta}" if tta else ""
    lines = [
        f"{result['run']} ({result['checkpoint']}, epoch {result['epoch']}) on {result['split']}{tta}: "
        f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
        f"{result['num_correct']}/{result['num_samples']} correct",
        "",
        f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}   (recall = accuracy on the class)",
    ]
    lines += [
        f"{r['class']:<12} {r['precision']:>9.4f} {r['recall']:>7.4f} {r['f1']:>6.4f} {r['support']:>7d}"
        for r in result["per_class"]
    ]
    lines += [
        "",
        "confusion matrix (rows: true, columns: predicted)",
        f"{'':<12}" + "".join(f"{s:>8}" for s in short),
    ]
    lines += [
        f"{CLASSES[i]:<12}" + "".join(f"{v:>8d}" for v in row)
        for i, row in enumerate(result["confusion"])
    ]
    return "\n".join(lines)


def run_evaluation(
    path: str | Path,
    checkpoint: str = "best",
    split: str = "test",
    tta: bool | None = None,
    data_root: str | None = None,
    translate: int | None = None,
) -> dict[str, Any]:
    """Evaluate; `tta=None` / `translate=None` use what the run was trained with. Writes nothing
    (see `save`)."""
    trained = load_trained(path, checkpoint)
    ckpt = trained.checkpoint
    split_cfg = ckpt.get("split") or {"val_size": 0, "split_seed": 0}
    if split == "val" and not split_cfg.get("val_size"):
        raise RunDirError(
            f"{trained.label} was trained without a validation split; use --split test"
        )
    data_cfg = OmegaConf.structured(DataConfig)
    data_cfg.root = data_root or default_root()
    data_cfg.val_size, data_cfg.split_seed = (
        int(split_cfg["val_size"]),
        int(split_cfg["split_seed"]),
    )
    data = build_data(data_cfg, 1000, False, 0, torch.device("cpu"), channels_last=False)
    loader = data.val if split == "val" else data.test
    tta = bool(ckpt.get("tta")) if tta is None else tta
    translate = int(ckpt.get("tta_translate") or 0) if translate is None else translate
    translate = translate if tta else 0
    metrics = evaluate(trained.model, loader, keep_wrong=0, tta=tta, translate=translate)
    return {
        "run": trained.label,
        "checkpoint": trained.path.name,
        "epoch": ckpt["epoch"],
        "split": split,
        "tta": tta,
        "tta_translate": translate,
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "num_correct": metrics["num_correct"],
        "num_samples": metrics["num_samples"],
        "per_class": per_class(metrics["confusion"]),
        "confusion": metrics["confusion"],
        "classes": list(CLASSES),
    }


def save(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """evaluation.json and confusion_matrix.png into `out_dir`."""
    from fmnist.plots import confusion_figure, pyplot

    paths = [out_dir / "evaluation.json", out_dir / "confusion_matrix.png"]
    write_json(paths[0], result)
    title = f"Confusion matrix ({result['split']}, {result['checkpoint']}, epoch {result['epoch']})"
    fig = confusion_figure(result["confusion"], title)
    fig.savefig(paths[1])
    pyplot().close(fig)
    return paths


@closed_pipe_is_fine
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmnist-evaluate", description="Evaluate a trained run.")
    parser.add_argument("run", help="a run directory, or a checkpoint file (.pt)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip TTA (default: as trained)",
    )
    parser.add_argument(
        "--tta-translate",
        type=int,
        choices=range(5),
        default=None,
        metavar="PIXELS",
        help="with TTA, also the views shifted by +-PIXELS (0-4; default: as trained)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="default: $FMNIST_DATA, else the checkout's data/, else ~/.cache/fmnist",
    )
    parser.add_argument(
        "--out", default=None, help="where to write the results (default: the run's directory)"
    )
    args = parser.parse_args(argv)
    try:
        result = run_evaluation(
            args.run, args.checkpoint, args.split, args.tta, args.data_root, args.tta_translate
        )
    except (RunDirError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    out_dir = Path(args.out) if args.out else run_dir
    try:  # saved first: a reader that stops early (`| head`) does not cost the files
        out_dir.mkdir(parents=True, exist_ok=True)
        save(result, out_dir)
        unsaved = None
    except OSError as exc:  # a read-only or full disk: the result stands; say where to go
        unsaved = exc
    print(render(result))
    if unsaved is not None:
        print(
            f"error: could not write evaluation.json in {out_dir}: {unsaved.strerror or unsaved} "
            "(the result is printed above; choose another folder with --out DIR)",
            file=sys.stderr,
        )
        return 1
    print(f"\nwrote evaluation.json and confusion_matrix.png in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
