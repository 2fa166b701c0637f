"""TensorBoard, in the run's own directory: scalars, images, graph, histograms, HParams, figures."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from fmnist.callbacks.base import Callback, RunState
from fmnist.plots import confusion_image, image_grid, misclassified_image

log = logging.getLogger(__name__)

HPARAM_METRICS = ("Accuracy/test", "Loss/test", "Accuracy/train", "Loss/train")
SCALARS = {  # tag -> results column
    "Loss/train": "loss",
    "Accuracy/train": "accuracy",
    "Loss/test": "test_loss",
    "Accuracy/test": "test_accuracy",
    "Number Correct/train": "num_correct",
    "Number Correct/test": "test_num_correct",
    "Loss/val": "val_loss",
    "Accuracy/val": "val_accuracy",
    "LearningRate": "lr_current",
    "Time/epoch_seconds": "epoch_duration",
}


def hparam_value(value: Any) -> int | float | str | bool:
    return value if isinstance(value, int | float | str | bool) else str(value)


class TensorBoardCallback(Callback):
    def __init__(
        self,
        log_graph: bool = True,
        log_images: bool = True,
        histogram_interval: int = 1,  # epochs between weight/gradient histograms; 0 = never
        figure_interval: int = 1,  # epochs between confusion-matrix/misclassified figures; 0 = never
        hparams: bool = True,
    ):
        self.log_graph, self.log_images, self.hparams = log_graph, log_images, hparams
        self.histogram_interval, self.figure_interval = histogram_interval, figure_interval
        self.writer: SummaryWriter | None = None

    def on_run_start(self, state: RunState) -> None:
        # purge_step drops events a crashed attempt wrote after its last checkpoint
        purge = state.start_epoch + 1 if state.resumed else None
        self.writer = SummaryWriter(log_dir=str(state.run_dir), purge_step=purge, flush_secs=30)
        if self.hparams:
            values = {k: hparam_value(v) for k, v in state.hparams.items()}
            metrics = HPARAM_METRICS + (
                ("Accuracy/val", "Loss/val") if state.data.val is not None else ()
            )
            exp, ssi, _ = hparams_summaries(values, dict.fromkeys(metrics, 0.0))
            file_writer = self.writer._get_file_writer()  # same run dir, not a timestamped one
            file_writer.add_summary(exp)
            file_writer.add_summary(ssi)
        if state.resumed:
            return  # graph and sample images are already in this run
        images, _ = next(iter(state.data.train.epoch(0)))
        images = images[:64].float().cpu().contiguous()
        if self.log_images:
            self.writer.add_image("images", image_grid(images, nrow=8), 0)
        if self.log_graph:
            try:
                model = state.model
                was_training = model.training
                model.eval()
                with warnings.catch_warnings():  # add_graph uses jit.trace, deprecated in 2.9+
                    warnings.simplefilter("ignore", FutureWarning)
                    self.writer.add_graph(model, images.to(state.device)[:8])
                model.train(was_training)
            except Exception as exc:  # tracing is best effort: some models don't trace
                log.warning("could not log the network graph: %s", exc)
        self.writer.flush()

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        w, epoch = self.writer, state.epoch
        for tag, column in SCALARS.items():
            if (
                column in row
                and isinstance(row[column], int | float)
                and math.isfinite(row[column])
            ):
                w.add_scalar(tag, row[column], epoch)
        if self.histogram_interval and epoch % self.histogram_interval == 0:
            for name, param in state.model.named_parameters():
                w.add_histogram(name, param.detach().float().cpu(), epoch)
                if param.grad is not None:
                    w.add_histogram(f"{name}.grad", param.grad.detach().float().cpu(), epoch)
        test = state.evals.get("test")
        if test is not None and self.figure_interval and epoch % self.figure_interval == 0:
            w.add_image(
                "ConfusionMatrix/test", confusion_image(test["confusion"]), epoch, dataformats="HWC"
            )
            if len(test["wrong_images"]):
                grid = misclassified_image(
                    test["wrong_images"], test["wrong_preds"], test["wrong_targets"]
                )
                w.add_image("Misclassified/test", grid, epoch, dataformats="HWC")
        w.flush()

    def _close(self, status: str) -> None:
        if self.writer is None:
            return
        if self.hparams:
            self.writer._get_file_writer().add_summary(session_end(status))
        self.writer.close()
        self.writer = None

    def on_run_end(self, state: RunState) -> None:
        self._close("STATUS_SUCCESS")

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        self._close("STATUS_RUNNING" if isinstance(exc, KeyboardInterrupt) else "STATUS_FAILURE")


def session_end(status: str) -> Summary:
    """HParams session-end summary with a real status (torch's always says success)."""
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status)),
        version=metadata.PLUGIN_DATA_VERSION,
    ).SerializeToString()
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content)
    value = Summary.Value(
        tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin)
    )
    return Summary(value=[value])
