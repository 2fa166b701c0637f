"""Finding, checking and loading Fashion-MNIST."""

from fmnist.data.loaders import FashionMNISTData, build_data
from fmnist.data.sources import DataError, ensure_data
from fmnist.data.tensors import load_tensors

__all__ = ["DataError", "FashionMNISTData", "build_data", "ensure_data", "load_tensors"]
