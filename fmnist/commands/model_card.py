"""MODEL_CARD.md for an exported checkpoint: use, data, model, training, accuracy, limits, provenance."""

from __future__ import annotations

from typing import Any

from fmnist import CLASSES
from fmnist.models import count_parameters
from fmnist.run.provenance import as_markdown
from fmnist.tta import describe

LIMITS = (
    "Shirt is the weakest class: it is confused with T-shirt/top, Pullover and Coat (see the "
    "per-class recall and the confusion matrix); treat those four as one family when it matters.",
    "Trained on centred 28x28 grayscale product photos of a light object on a dark background. "
    "Photos of worn garments, several objects, busy backgrounds or other crops are out of "
    "distribution: `fmnist-predict` normalises a picture, but cannot make it look like the data.",
    "Ten classes only: anything else (a hat, a person) is still forced into one of them; the "
    "probabilities are not calibrated for rejecting unknown objects.",
    "Accuracy is measured on Fashion-MNIST's own test set, from the same source as the training data.",
)


def model_card(trained: Any, evaluations: dict[str, dict], onnx_check: dict[str, float]) -> str:
    ckpt = trained.checkpoint
    spec, hp = ckpt["model_config"], ckpt.get("hparams") or {}
    split = ckpt.get("split") or {}
    test = evaluations["test"]
    val = evaluations.get("val")
    monitor = ckpt.get("monitor")
    selected = (
        f"the epoch with the best {monitor} on the validation split (epoch {ckpt['epoch']})"
        if monitor
        else f"the last epoch ({ckpt['epoch']}); no validation split, so nothing was selected"
    )
    lines = [
        f"# Model card: {hp.get('model', spec['target'].rsplit('.', 1)[-1])} for Fashion-MNIST",
        "",
        "## Intended use",
        "Classifying 28x28 grayscale images of fashion products (a light object on a dark "
        f"background, as in Fashion-MNIST) into ten classes: {', '.join(CLASSES)}. For teaching, "
        "research baselines and demos. Not for decisions about people, and not for images unlike "
        "the data (see Limits).",
        "",
        "## Files",
        "- `model.onnx`: input `images` float32 N x 1 x 28 x 28 (pixel / 255, light object on dark "
        "background), output `logits` N x 10; dynamic batch axis. Checked with onnxruntime on "
        f"{onnx_check['images']:,} test images: same class for {onnx_check['agreement']:.2%}, max "
        f"|logit difference| {onnx_check['max_abs_logit_diff']:.1e}.",
        "- `model.safetensors` + `model.json`: the weights and the config that rebuilds the model "
        "(`fmnist.commands.export.load_safetensors`).",
        "- `confusion_matrix.png`: test set, rows true, columns predicted.",
        "",
        "## Data",
        "Fashion-MNIST (Zalando Research): 60,000 training and 10,000 test images, 10 balanced classes.",
        f"Training used {60000 - int(split.get('val_size') or 0):,} images; "
        + (
            f"{split['val_size']:,} were held out for validation (stratified, 500 per class at "
            f"5,000; split_seed {split.get('split_seed')})."
            if split.get("val_size")
            else "no validation split."
        ),
        "",
        "## Model",
        f"`{spec['target']}` with {', '.join(f'{k}={v}' for k, v in spec['kwargs'].items()) or 'defaults'}: "
        f"{count_parameters(trained.model):,} parameters. The checkpoint is {selected}.",
        "",
        "## Training configuration",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in hp.items()),
        "",
        "## Accuracy of this checkpoint",
        "",
        "| split | accuracy | loss | images |",
        "|---|---|---|---|",
    ]
    for name, ev in (("validation", val), ("test", test)):
        if ev is not None:
            tta = describe(bool(ev.get("tta")), ev.get("tta_translate") or 0)
            tta = f" ({tta})" if tta else ""
            lines.append(
                f"| {name}{tta} | {ev['accuracy']:.4f} | {ev['loss']:.4f} | {ev['num_samples']:,} |"
            )
    lines += [
        "",
        "Per class on the test set (recall = accuracy on the class):",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
        *(
            f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
            for r in test["per_class"]
        ),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## Limits",
        *(f"- {limit}" for limit in LIMITS),
        "",
        "## Provenance",
        as_markdown(ckpt.get("provenance") or {})
        if ckpt.get("provenance")
        else "- not recorded in this checkpoint",
        "",
    ]
    return "\n".join(lines)
