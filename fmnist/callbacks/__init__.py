"""The tracker's parts; each is switched on or off in conf/callbacks/*.yaml."""

from fmnist.callbacks.base import Callback, RunState, Tracker

__all__ = ["Callback", "RunState", "Tracker"]
