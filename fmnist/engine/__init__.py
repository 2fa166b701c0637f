"""The training engine: build a run from its config, restore it, and run the loop.

`train` is imported on first use, so callbacks can import `fmnist.engine.state` without
pulling in the whole engine (which imports the callbacks).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "train":
        from fmnist.engine.run import train

        return train
    raise AttributeError(name)


__all__ = ["train"]
