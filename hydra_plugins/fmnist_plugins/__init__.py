"""Hydra plugins of the fmnist package (Hydra finds launchers only under `hydra_plugins`)."""
