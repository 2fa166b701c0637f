"""`fmnist-data` / `python -m fmnist.data.prepare`: fetch and check the data set (used by make)."""

from __future__ import annotations

import argparse
import sys

from fmnist.data.sources import DataError, ensure_data, verify_raw
from fmnist.data.tensors import load_tensors
from fmnist.paths import data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--root",
        default=None,
        help="default: $FMNIST_DATA, else the checkout's data/, else ~/.cache/fmnist",
    )
    parser.add_argument("--no-download", action="store_true")
    args = parser.parse_args(argv)
    args.root = args.root or data_root()
    try:
        ensure_data(args.root, download=not args.no_download, say=print, system_packages=True)
        verify_raw(args.root)  # every byte, not only sizes and headers
        tensors = load_tensors(args.root)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"Fashion-MNIST ready in {args.root}: {len(tensors['train_labels']):,} train and "
        f"{len(tensors['test_labels']):,} test images, SHA-256 checked"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
