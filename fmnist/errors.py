"""What can go wrong in a way the user can fix: each error's message is one line that says what
to do, and the command line prints it without a traceback. No torch here: a config mistake is
reported before the engine (and torch, ~3 s) is imported."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that composes but cannot be used; the message names key and allowed values."""


class DataError(RuntimeError):
    """Data missing or damaged; the message says what to do."""


class ModelError(ValueError):
    """A model config this package will not build; the message is one line."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training cannot recover, so the run fails."""


class RunDirError(ValueError):
    """This directory cannot be used as asked; the message is one line and says what to do."""


EXPECTED = (ConfigError, DataError, ModelError, NonFiniteLossError, RunDirError)
