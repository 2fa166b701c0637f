"""Where the package finds its configuration, the data set and its own source, installed or not.

An installed wheel carries `conf/` as `fmnist/conf/`; an editable checkout reads the repository's
`conf/`. The data set is looked for in one order by training, evaluate, export and lr-find:
`$FMNIST_DATA`, else the checkout's `data/` (where `make data` puts it), else a per-user cache
folder (`platformdirs`, e.g. ~/.cache/fmnist on Linux). `data.root=...` overrides all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

PACKAGE = Path(__file__).resolve().parent


def checkout() -> Path | None:
    """The source checkout this package runs from (editable install), or None when installed."""
    top = PACKAGE.parent
    return top if (top / "pyproject.toml").is_file() and (top / "conf").is_dir() else None


def conf_dir() -> Path:
    """The Hydra config folder: the wheel's fmnist/conf, else the checkout's conf/."""
    packaged = PACKAGE / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    top = checkout()
    if top is None:
        raise FileNotFoundError(f"no configuration in {packaged}: reinstall fmnist")
    return top / "conf"


def data_root() -> str:
    """$FMNIST_DATA, else the checkout's data/, else the per-user cache folder (absolute)."""
    if os.environ.get("FMNIST_DATA"):
        return os.environ["FMNIST_DATA"]
    top = checkout()
    if top is not None:
        return str(top / "data")
    return user_cache_dir("fmnist", appauthor=False)
