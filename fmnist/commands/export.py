"""Ship a trained model: ONNX (checked with onnxruntime), safetensors and a model card.

    fmnist-export RUN_DIR_OR_CHECKPOINT [--checkpoint best|last] [--out DIR]

writes into RUN_DIR/export/ (or beside a checkpoint file): model.onnx (dynamic batch axis,
torch's current exporter), model.safetensors + model.json (weights, and the config that rebuilds
the model: no pickle, no fmnist needed to read them), MODEL_CARD.md and confusion_matrix.png.
The ONNX model is run on the whole test set and must agree with PyTorch on >= 99.9 % of the
predicted classes with logits within 1e-3, or the command fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

AGREEMENT_MIN, LOGIT_TOLERANCE = 0.999, 1e-3


class ExportError(RuntimeError):
    """Export or its check failed; the message is one line."""


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime session on the CPU (imports no torch)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install -e '.[export]'") from None
    if not Path(path).is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for bad files
        raise ExportError(
            f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:120]})"
        ) from None


def export_onnx(model: Any, path: Path) -> None:
    import torch

    example = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,  # torch's current exporter (torch.export + onnxscript)
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    program.save(str(path))


def check_onnx(model: Any, path: Path, images: Any) -> dict[str, float]:
    """Run PyTorch and onnxruntime on `images` (N x 1 x 28 x 28 float): agreement and max diff."""
    import torch

    session = onnx_session(path)
    agree, worst, n = 0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            x = images[start : start + 1000]
            ours = model(x).float().numpy()
            theirs = session.run(None, {"images": x.numpy()})[0]
            agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
            worst = max(worst, float(np.abs(ours - theirs).max()))
            n += len(x)
    return {"agreement": agree / n, "max_abs_logit_diff": worst, "images": n}


def export_safetensors(trained: Any, out: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from fmnist.run.files import current_umask  # imports torch: not at module level (ONNX path)

    spec = trained.checkpoint["model_config"]
    meta = {
        "model_config": spec,
        "classes": trained.checkpoint.get("classes"),
        "input": trained.checkpoint.get("input"),
        "tta": bool(trained.checkpoint.get("tta")),  # its figures are the mean with the mirror
        "tta_translate": int(trained.checkpoint.get("tta_translate") or 0),  # and shifted copies
    }
    weights = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"fmnist": json.dumps(meta)})
    os.chmod(out / "model.safetensors", 0o666 & ~current_umask())  # safetensors writes 0600
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out / "model.safetensors", out / "model.json"


def load_safetensors(weights: str | Path, config: str | Path) -> Any:
    """A model from model.safetensors and model.json alone (this package's models only)."""
    from safetensors.torch import load_file

    from fmnist.models import build_model

    meta = json.loads(Path(config).read_text())
    model = build_model(meta["model_config"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def run_export(
    path: str, which: str = "best", out: str | None = None, data_root: str | None = None
) -> dict:
    import torch

    from fmnist.commands.evaluate import run_evaluation
    from fmnist.commands.evaluate import save as save_evaluation
    from fmnist.commands.model_card import model_card
    from fmnist.data.tensors import load_tensors
    from fmnist.paths import data_root as default_data_root
    from fmnist.run.checkpoint import load_trained

    trained = load_trained(path, which)
    out_dir = (
        Path(out) if out else (Path(path) if Path(path).is_dir() else Path(path).parent) / "export"
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ExportError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    root = data_root or default_data_root()
    tensors = load_tensors(root)
    images = tensors["test_images"].unsqueeze(1).float() / 255
    onnx_path = out_dir / "model.onnx"
    try:
        export_onnx(trained.model, onnx_path)
    except Exception as exc:
        raise ExportError(
            f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        ) from None
    check = check_onnx(trained.model, onnx_path, images)
    weights, config = export_safetensors(trained, out_dir)
    rebuilt = load_safetensors(weights, config)
    with torch.inference_mode():
        same = torch.equal(rebuilt(images[:256]), trained.model(images[:256]))
    evaluations = {"test": run_evaluation(trained.path, which, "test", data_root=root)}
    if (trained.checkpoint.get("split") or {}).get("val_size"):
        evaluations["val"] = run_evaluation(trained.path, which, "val", data_root=root)
    save_evaluation(evaluations["test"], out_dir)
    card = model_card(trained, evaluations, check)
    (out_dir / "MODEL_CARD.md").write_text(card)
    result = {
        "out": str(out_dir),
        "onnx": check,
        "safetensors_roundtrip_equal": same,
        **{f"{s}_accuracy": e["accuracy"] for s, e in evaluations.items()},
    }
    ok = check["agreement"] >= AGREEMENT_MIN and check["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    result["ok"] = ok and same
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmnist-export", description="Export a trained model.")
    parser.add_argument("run", help="a run directory, or a checkpoint file (.pt)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", default=None, help="default: RUN_DIR/export/")
    parser.add_argument(
        "--data-root",
        default=None,
        help="default: $FMNIST_DATA, else the checkout's data/, else ~/.cache/fmnist",
    )
    args = parser.parse_args(argv)
    from fmnist.data import DataError
    from fmnist.run.directory import RunDirError

    try:
        result = run_export(args.run, args.checkpoint, args.out, args.data_root)
    except (ExportError, RunDirError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check = result["onnx"]
    print(
        f"ONNX vs PyTorch on {check['images']:,} test images: same class for "
        f"{check['agreement']:.2%} (need >= {AGREEMENT_MIN:.1%}), max |logit difference| "
        f"{check['max_abs_logit_diff']:.2e} (need <= {LOGIT_TOLERANCE:g})"
    )
    print(
        f"safetensors round trip: {'identical outputs' if result['safetensors_roundtrip_equal'] else 'DIFFERENT outputs'}"
    )
    print(
        f"wrote model.onnx, model.safetensors, model.json, MODEL_CARD.md, confusion_matrix.png in {result['out']}"
    )
    if not result["ok"]:
        print(
            "error: the exported model does not match PyTorch within the limits above",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
