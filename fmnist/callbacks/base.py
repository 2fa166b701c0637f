"""The tracker: the training loop calls these hooks and knows nothing of files or TensorBoard."""

from __future__ import annotations

from typing import Any

from fmnist.engine.state import RunState


class Callback:
    """Override the hooks you need. Order of calls for a run:

    on_run_start, then per epoch: on_epoch_start, on_batch_end (every batch), on_epoch_end;
    finally on_run_end, or on_exception if the run raised or was interrupted.
    A callback with state that must survive a resume returns it from `state_dict` (plain values
    and tensors) and takes it back in `load_state_dict`, as Lightning's callbacks do.
    """

    def on_run_start(self, state: RunState) -> None: ...

    def on_epoch_start(self, state: RunState) -> None: ...

    def on_batch_end(self, state: RunState, batch_idx: int) -> None: ...

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None: ...

    def on_run_end(self, state: RunState) -> None: ...

    def on_exception(self, state: RunState, exc: BaseException) -> None: ...

    def wants_outputs(self, state: RunState) -> bool:
        """Whether this epoch's evaluation should keep every probability and a few misclassified
        images (figures, PR curves). Off unless a callback asks: they cost time and memory."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Tracker(Callback):
    """Calls every callback in order; a callback failing in on_exception never hides the cause."""

    def __init__(self, callbacks: dict[str, Callback] | list[Callback]):
        if isinstance(callbacks, list):
            callbacks = {f"{type(cb).__name__}_{i}": cb for i, cb in enumerate(callbacks)}
        self.named = callbacks  # config name -> callback: the key of its state in checkpoints
        self.callbacks = list(callbacks.values())
        self._batch_callbacks = [
            cb for cb in self.callbacks if type(cb).on_batch_end is not Callback.on_batch_end
        ]  # skip no-op hooks in the hot loop

    def on_run_start(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_run_start(state)

    def on_epoch_start(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(state)

    def on_batch_end(self, state: RunState, batch_idx: int) -> None:
        for cb in self._batch_callbacks:
            cb.on_batch_end(state, batch_idx)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(state, row)

    def on_run_end(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_run_end(state)

    def wants_outputs(self, state: RunState) -> bool:
        return any(cb.wants_outputs(state) for cb in self.callbacks)

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        for cb in self.callbacks:
            try:
                cb.on_exception(state, exc)
            except Exception as also:  # e.g. the disk that failed the run fails this write too
                state.log.warning(
                    "callback %s could not record the failure: %s", type(cb).__name__, also
                )

    def state_dict(self) -> dict[str, Any]:
        return {name: s for name, cb in self.named.items() if (s := cb.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, cb in self.named.items():
            if name in state:
                cb.load_state_dict(state[name])
