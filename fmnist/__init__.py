"""fmnist: Hydra-configured PyTorch CNNs on Fashion-MNIST."""

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The Python API (fmnist/api.py), imported on first use: `import fmnist` stays light.
API = ("compose", "train", "sweep", "load", "compare", "FmnistError", "Run", "SweepResult")


def __getattr__(name: str) -> object:
    if name in API:
        from fmnist import api

        return getattr(api, name)
    raise AttributeError(f"module 'fmnist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
