"""The training engine: build a run from its config, restore it, and run the loop."""

from fmnist.engine.run import train

__all__ = ["train"]
