"""A sweep's job configs, composed once for jobs that differ only in values.

Hydra composes every job from its YAML files (defaults list, schema, merges): about 0.15 s a job
on 2 CPU cores, which a sweep of 16 short fused jobs pays 16 times. Two jobs whose overrides have
the same shape share one composition: each override either sets a plain value of a key (no config
group, no `hydra.` key, no `+` or `~`, no dict or list value), or is the same choice of a config
group or `hydra.` value in both jobs (`experiment=fast`, which the sweeper repeats in every job). The next job is then a copy of the
last one composed with its own values set by Hydra's own code, and its `hydra.overrides.task` and
`hydra.job.override_dirname` as Hydra writes them. Anything else is composed by Hydra as usual, as
is every job when the primary config adds search paths (`hydra.searchpath`: groups the loader's
repository does not see) or when this Hydra release lacks the internals used here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict


def is_plain(o: Override, loader: Any, groups: set[str]) -> bool:
    """Whether `o` sets a value of an existing key, as opposed to choosing a config."""
    return not (
        o.is_hydra_override()
        or o.is_add()
        or o.is_force_add()
        or o.is_delete()
        or o.is_sweep_override()
        or o.package is not None
        or isinstance(o.value(), (dict, list))
        or o.key_or_group in groups
        or loader.repository.group_exists(o.key_or_group)
    )


def shape(overrides: list[Override], loader: Any, groups: set[str]) -> tuple[str, ...] | None:
    """What must be equal for one job's config to be copied from another's; None: never copied
    (a value set another way, `+`, `++`, `~` or a dict, could come after a plain value of its key,
    and Hydra applies them in order)."""
    out = []
    for o in overrides:
        if is_plain(o, loader, groups):
            out.append(f"{o.key_or_group}=")
        elif o.is_hydra_override() or (
            not isinstance(o.value(), (dict, list))
            and (o.key_or_group in groups or loader.repository.group_exists(o.key_or_group))
        ):
            out.append(f"same:{o.input_line}")  # a config chosen, or Hydra's own node
        else:
            return None
    return tuple(out)


def compose_jobs(
    loader: Any, master: DictConfig, job_overrides: Sequence[Sequence[str]]
) -> list[DictConfig]:
    """Each job's config, equal to `loader.load_sweep_config(master, overrides)`."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        apply = ConfigLoaderImpl._apply_overrides_to_config
        usable = hasattr(loader, "repository") and not OmegaConf.select(master, "hydra.searchpath")
    except (ImportError, AttributeError):
        usable = False
    if not usable:
        return [loader.load_sweep_config(master, list(o)) for o in job_overrides]
    parser = OverridesParser.create()
    configs: list[DictConfig] = []
    base: DictConfig | None = None
    base_shape: tuple[str, ...] | None = None
    for overrides in job_overrides:
        parsed = parser.parse_overrides(list(overrides))
        groups = set(base.hydra.runtime.choices) if base is not None else set()
        this = shape(parsed, loader, groups)
        if base is None or this is None or this != base_shape:
            config = loader.load_sweep_config(master, list(overrides))
            base, base_shape = (
                copy.deepcopy(config),
                shape(parsed, loader, set(config.hydra.runtime.choices)),
            )
        else:
            config = copy.deepcopy(base)
            apply([o for o in parsed if is_plain(o, loader, groups)], config)
            task = [o for o in parsed if not o.is_hydra_override()]
            dirname = config.hydra.job.config.override_dirname
            with open_dict(config.hydra):
                config.hydra.overrides.task = [o.input_line for o in task]
                config.hydra.job.override_dirname = get_overrides_dirname(
                    overrides=task,
                    kv_sep=dirname.kv_sep,
                    item_sep=dirname.item_sep,
                    exclude_keys=dirname.exclude_keys,
                )
        configs.append(config)
    return configs
