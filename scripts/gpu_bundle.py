"""Write what a GPU machine without internet needs for scripts/gpu-check: the wheels of the
project's pure-Python dependencies and the data set, compressed.

    make gpu-bundle                   # or: python scripts/gpu_bundle.py [--out gpu-bundle]

Run it here, on a machine with internet and `make install` done; copy the checkout with the
folder to the GPU machine (its own Python brings PyTorch and the compiled packages), and there:
`scripts/gpu-check --bundle gpu-bundle`. The wheels are the versions installed here, the ones the
tests passed with: every pure-Python distribution that the project's requirements (and pytest,
for tests/test_cuda.py) need, found through the installed packages' metadata. Compiled ones
(torch, numpy, pandas...) are listed in the bundle's manifest, not bundled: they must match the
GPU machine's Python and CUDA.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
ROOTS = ("fmnist", "pytest")  # the project's own requirements, and the test runner
MACHINE = ("torch", "torchvision")  # the GPU machine's own build, with all it needs


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, metadata.Distribution]:
    """Every installed distribution the roots need (their extras left out), by canonical name."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        seen[name] = dist
        for text in [] if name in MACHINE else dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def is_pure(dist: metadata.Distribution) -> bool:
    """Installed from a wheel for any platform and Python 3 (no compiled code)."""
    tags = [
        line for line in (dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag:")
    ]
    return bool(tags) and all(t.endswith("-none-any") for t in tags)


def write(out: Path, pure: dict, compiled: dict, raw: Path, files: tuple) -> bool:
    """The wheels, the gzipped IDX files and the manifest into `out`; False (said why) when pip
    fails or gives a wheel for this platform only."""
    wheels, data = out / "wheels", out / "data"
    # pip takes a project's wheel where one is published, and builds one from its sources where
    # none is (antlr4-python3-runtime 4.9.3, which Hydra pins, publishes only sources)
    pins = [f"{name}=={version}" for name, version in pure.items()]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), *pins]
    if subprocess.run(cmd).returncode != 0:
        print("gpu-bundle: pip could not fetch the wheels (no internet here?)", file=sys.stderr)
        return False
    platform_only = [w.name for w in wheels.glob("*.whl") if not w.stem.endswith("-none-any")]
    if platform_only:
        print(f"gpu-bundle: wheels for this platform only: {platform_only}", file=sys.stderr)
        return False
    data.mkdir()
    for spec in files:  # the GPU machine decompresses them (FMNIST_DEBIAN_DIR)
        source, dest = raw / spec.name, data / f"{spec.name}.gz"
        with source.open("rb") as fin, gzip.open(dest, "wb", compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    manifest = {"python": sys.version.split()[0], "wheels": pure, "from_the_machine": compiled}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "gpu-bundle"), help="the bundle's folder")
    args = parser.parse_args(argv)
    from fmnist.data.sources import FILES, DataError, raw_dir, verify_raw
    from fmnist.paths import data_root

    out = Path(args.out)
    try:
        verify_raw(data_root())  # every byte, first: a damaged file never travels
    except DataError as exc:
        print(f"gpu-bundle: {exc}", file=sys.stderr)
        return 1
    dists = closure()
    dists.pop("fmnist", None)  # the checkout itself travels as source
    pure = {n: d.version for n, d in sorted(dists.items()) if is_pure(d)}
    compiled = {n: d.version for n, d in sorted(dists.items()) if not is_pure(d)}
    out.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # the old one stays
    try:  # ...until the new one is whole
        if not write(new, pure, compiled, raw_dir(data_root()), FILES):
            return 1
        shutil.rmtree(out, ignore_errors=True)
        new.rename(out)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"gpu-bundle: {len(pure)} wheels and the data set in {out} ({size / 2**20:.1f} MiB); "
        f"the GPU machine's Python must have: {', '.join(compiled)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
