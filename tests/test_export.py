"""fmnist-export on a trained run: ONNX checked with onnxruntime, safetensors, model card."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_command
from tests.conftest import run_module as cli

pytestmark = pytest.mark.slow
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.*"))


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    done = cli("export", trained_run, "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    return trained_run, out, done.stdout


def test_onnx_agrees_with_pytorch_on_the_whole_test_set(exported):
    run, out, stdout = exported
    assert "on 10,000 test images" in stdout
    import onnxruntime

    from fmnist.data.tensors import load_tensors
    from fmnist.run.checkpoint import load_trained

    model = load_trained(run).model
    x = (
        load_tensors(os.environ.get("FMNIST_DATA", ROOT / "data"))["test_images"]
        .unsqueeze(1)
        .float()
        / 255
    )
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    theirs = np.concatenate(
        [session.run(None, {"images": x[i : i + 2500].numpy()})[0] for i in range(0, 10000, 2500)]
    )
    with torch.inference_mode():
        ours = model(x).numpy()
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.999
    assert np.abs(ours - theirs).max() <= 1e-3
    assert session.get_inputs()[0].shape[0] not in (1, 2500)  # a dynamic batch axis


def test_safetensors_round_trip_into_a_fresh_model(exported):
    run, out, _ = exported
    from safetensors.torch import load_file

    from fmnist.commands.export import load_safetensors
    from fmnist.run.checkpoint import load_trained

    assert set(load_file(str(out / "model.safetensors"))) == set(
        load_trained(run).model.state_dict()
    )
    fresh = load_safetensors(out / "model.safetensors", out / "model.json")
    x = torch.rand(64, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(fresh(x), load_trained(run).model(x))
    assert json.loads((out / "model.json").read_text())["model_config"]["target"].startswith(
        "fmnist.models."
    )


def test_model_card_holds_what_evaluate_reports(exported):
    from fmnist.commands.evaluate import run_evaluation

    run, out, _ = exported
    card = (out / "MODEL_CARD.md").read_text()
    for split in ("test", "val"):
        # what fmnist-evaluate RUN --split SPLIT computes and prints (its defaults: best.pt,
        # $FMNIST_DATA), in-process: two CLI start-ups (~3 s each) bought nothing here
        accuracy = run_evaluation(run, split=split)["accuracy"]
        assert f"{accuracy:.4f}" in card
    for needle in (
        "Intended use",
        "Shirt",
        "parameters",
        "Provenance",
        "confusion_matrix.png",
        "split_seed",
    ):
        assert needle in card
    assert (out / "confusion_matrix.png").stat().st_size > 10_000


def test_predict_with_onnx_only_matches_pytorch_and_imports_no_torch(exported, tmp_path, capsys):
    run, out, _ = exported
    torch_answers = json.loads(
        run_command("predict", run, *EXAMPLES, "--json", capsys=capsys).stdout
    )
    # a torch that cannot be imported proves the ONNX path never needs it
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not allowed here')\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = cli("predict", "--onnx", out / "model.onnx", *EXAMPLES, "--json", env=env)
    assert done.returncode == 0, done.stderr
    onnx_answers = json.loads(done.stdout)
    assert len(onnx_answers) == len(EXAMPLES) >= 3
    for a, b in zip(torch_answers, onnx_answers, strict=True):
        assert a["top"][0]["class"] == b["top"][0]["class"]
        assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 1e-4


def test_onnx_predictions_use_tta_as_the_model_was_evaluated(exported, tmp_path):
    """model.json beside model.onnx says whether the reported figures used flip TTA; predict
    --onnx follows it unless told otherwise, as the PyTorch path follows the checkpoint."""
    from fmnist.commands.predict import load_image, onnx_logits

    _, out, _ = exported
    assert json.loads((out / "model.json").read_text())["tta"] is False  # trained without
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "model.onnx", alone / "model.onnx")
    x = load_image(EXAMPLES[0])[None]
    plain, used = onnx_logits(str(alone / "model.onnx"), None)
    assert used is False  # no model.json: no TTA
    meta = json.loads((out / "model.json").read_text()) | {"tta": True}
    (alone / "model.json").write_text(json.dumps(meta))
    mirrored, used = onnx_logits(str(alone / "model.onnx"), None)
    assert used is True
    expected = (plain(x) + plain(np.ascontiguousarray(x[..., ::-1]))) / 2
    assert np.allclose(mirrored(x), expected, atol=1e-6)
    assert onnx_logits(str(alone / "model.onnx"), False)[1] is False  # --no-tta wins


def test_bad_input_is_one_line(trained_run, tmp_path):
    not_run = cli("export", tmp_path)
    assert not_run.returncode == 2 and "is not a run directory" in not_run.stderr
    no_ckpt = tmp_path / "run"
    no_ckpt.mkdir()
    (no_ckpt / "status.json").write_text(json.dumps({"status": "failed"}))
    done = cli("export", no_ckpt)
    assert done.returncode == 2 and "has no best checkpoint" in done.stderr
    blocker = tmp_path / "a-file"  # a file where a directory must go: unwritable, even for root
    blocker.write_text("")
    unwritable = cli("export", trained_run, "--out", blocker / "export")
    assert unwritable.returncode == 2 and "cannot write to" in unwritable.stderr
    for result in (not_run, done, unwritable):
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
