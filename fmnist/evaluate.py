"""Evaluate a trained run on the test (or validation) split: overall, per class, confusion matrix.

python -m fmnist.evaluate outputs/runs/2026-11-27/10-00-00_123 [--checkpoint last] [--split val]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from fmnist import CLASSES
from fmnist.data import DataError, build_data
from fmnist.io import write_json
from fmnist.train import evaluate
from fmnist.trained import RunError, load_trained


def per_class(confusion: list[list[int]]) -> list[dict[str, Any]]:
    """Precision, recall (the accuracy on that class) and F1 from a true x predicted matrix."""
    m = torch.tensor(confusion, dtype=torch.float64)
    tp, predicted, actual = m.diag(), m.sum(0), m.sum(1)
    rows = []
    for i, name in enumerate(CLASSES):
        precision = (tp[i] / predicted[i]).item() if predicted[i] else 0.0
        recall = (tp[i] / actual[i]).item() if actual[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": name,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": int(actual[i]),
            }
        )
    return rows


def render(result: dict[str, Any]) -> str:
    short = [c.split("/")[0][:7] for c in CLASSES]
    lines = [
        f"{result['run']} ({result['checkpoint']}.pt, epoch {result['epoch']}) on {result['split']}: "
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
    run_dir: str | Path, checkpoint: str = "best", split: str = "test"
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cfg, model, ckpt = load_trained(run_dir, checkpoint)
    if split == "val" and not cfg.data.val_size:
        raise RunError(
            f"{run_dir} was trained without a validation split (data.val_size=0); use --split test"
        )
    device = torch.device("cpu")
    data = build_data(cfg.data, cfg.batch_size, False, cfg.seed, device, channels_last=False)
    loader = data.val if split == "val" else data.test
    metrics = evaluate(model.to(device), loader, keep_wrong=0)
    from fmnist.plots import confusion_figure, pyplot

    result = {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "epoch": ckpt["epoch"],
        "split": split,
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "num_correct": metrics["num_correct"],
        "num_samples": loader.num_samples,
        "per_class": per_class(metrics["confusion"]),
        "confusion": metrics["confusion"],
        "classes": list(CLASSES),
    }
    write_json(run_dir / "evaluation.json", result)
    fig = confusion_figure(
        metrics["confusion"], f"Confusion matrix ({split}, {checkpoint}.pt, epoch {ckpt['epoch']})"
    )
    fig.savefig(run_dir / "confusion_matrix.png")
    pyplot().close(fig)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmnist-evaluate", description="Evaluate a trained run.")
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    args = parser.parse_args(argv)
    try:
        result = run_evaluation(args.run_dir, args.checkpoint, args.split)
    except (RunError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    print(f"\nwrote evaluation.json and confusion_matrix.png in {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
