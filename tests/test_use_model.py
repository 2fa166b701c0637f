"""evaluate and predict on a short real run."""

import json

import pytest
import torch
from PIL import Image

from fmnist.commands.predict import load_image
from fmnist.data.tensors import load_tensors
from fmnist.run.checkpoint import load_trained
from tests.conftest import DATA, run_command
from tests.conftest import run_module as cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("which", ["best", "last"])
def test_evaluate_reproduces_the_recorded_accuracy(trained_run, which):
    done = cli("evaluate", trained_run, "--checkpoint", which)
    assert done.returncode == 0, done.stderr
    result = json.loads((trained_run / "evaluation.json").read_text())
    rows = json.loads((trained_run / "results.json").read_text())
    recorded = next(r for r in rows if r["epoch"] == result["epoch"])
    assert result["accuracy"] == recorded["test_accuracy"]
    assert result["loss"] == pytest.approx(recorded["test_loss"], rel=1e-5)
    assert sum(r["support"] for r in result["per_class"]) == 10000
    assert (
        "Ankle boot" in done.stdout
        and "precision" in done.stdout
        and "confusion matrix" in done.stdout
    )
    with Image.open(trained_run / "confusion_matrix.png") as image:
        assert image.width > 300


def confident_examples(model, n=8):
    tensors = load_tensors(DATA)
    x = tensors["test_images"][:500].unsqueeze(1).float() / 255
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    keep = (probs.max(1).values > 0.95).nonzero().flatten()[:n]
    return tensors["test_images"][keep], probs[keep].argmax(1)


def test_predict_matches_the_model_on_stored_inverted_and_scaled_pngs(
    trained_run, tmp_path, capsys
):
    model = load_trained(trained_run).model
    images, expected = confident_examples(model)
    assert len(images) == 8
    paths = []
    for k, img in enumerate(images):
        stored = Image.fromarray(img.numpy())
        stored.save(tmp_path / f"stored{k}.png")
        Image.fromarray(255 - img.numpy()).convert("RGB").save(
            tmp_path / f"inverted{k}.jpg", quality=95
        )
        # scaled up 200/28 and placed on a 200x300 canvas: a big picture of another shape
        canvas = Image.new("L", (200, 300), 0)
        canvas.paste(stored.resize((200, 200), Image.Resampling.BICUBIC), (0, 50))
        canvas.save(tmp_path / f"scaled{k}.png")
        paths += [
            tmp_path / f"{kind}{k}.{'jpg' if kind == 'inverted' else 'png'}"
            for kind in ("stored", "inverted", "scaled")
        ]
    stored0 = torch.from_numpy(load_image(tmp_path / "stored0.png")).squeeze(0)
    assert torch.equal(stored0, images[0].float() / 255)
    done = run_command("predict", trained_run, *paths, "--json", capsys=capsys)  # in-process
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    from fmnist import CLASSES

    for k in range(len(images)):
        got = [a["top"][0]["class"] for a in answers[3 * k : 3 * k + 3]]
        assert got == [CLASSES[expected[k]]] * 3, (k, got)
    assert (
        len(answers[0]["top"]) == 3
        and abs(sum(g["probability"] for g in answers[0]["top"]) - 1) < 0.2
    )


def test_predict_bad_inputs_answer_for_the_good_ones(trained_run, tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (40, 60), 255).save(good)
    (tmp_path / "fake.png").write_text("not an image")
    done = cli("predict", trained_run, good, tmp_path / "missing.png", tmp_path / "fake.png")
    assert done.returncode == 1
    assert "good.png:" in done.stdout
    assert (
        "missing.png: no such file" in done.stderr
        and "fake.png: not a readable image" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_run_errors_are_one_line(trained_run, tmp_path):
    not_run = cli("evaluate", tmp_path)
    assert not_run.returncode == 2 and "is not a run directory" in not_run.stderr
    no_ckpt = tmp_path / "run"
    (no_ckpt / ".hydra").mkdir(parents=True)
    (no_ckpt / ".hydra" / "config.yaml").write_text(
        (trained_run / ".hydra" / "config.yaml").read_text()
    )
    for module, extra in (("evaluate", []), ("predict", [tmp_path / "x.png"])):
        done = cli(module, no_ckpt, *extra)
        assert done.returncode == 2 and "has no best checkpoint" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    ckpt = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["split"] = {"val_size": 0, "split_seed": 0}  # as experiment=article trains
    torch.save(ckpt, tmp_path / "no_val.pt")
    no_val = cli("evaluate", tmp_path / "no_val.pt", "--split", "val")
    assert no_val.returncode == 2 and "without a validation split" in no_val.stderr
