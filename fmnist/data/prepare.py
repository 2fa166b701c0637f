"""`fmnist-data` / `python -m fmnist.data.prepare`: fetch and check the data set (used by make)."""

from __future__ import annotations

import argparse
import os
import sys

from fmnist.data.files import DataError, ensure_data, verify_raw
from fmnist.data.tensors import load_tensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=os.environ.get("FMNIST_DATA", "data"))
    parser.add_argument("--no-download", action="store_true")
    args = parser.parse_args(argv)
    try:
        ensure_data(args.root, download=not args.no_download, say=print)
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
