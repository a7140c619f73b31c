"""Download mmcv's source release from the package index (checked against its sha256) and patch its
setup.py so it builds against torch >= 2.9: C++20 instead of the hard-coded C++14/17, and
importlib.metadata/packaging instead of pkg_resources (gone from setuptools 81)."""

from __future__ import annotations

import argparse
import hashlib
import re
import tarfile
import urllib.request
from pathlib import Path

INDEX = "https://pypi.org/simple/mmcv/"
PKG_RESOURCES = "from pkg_resources import DistributionNotFound, get_distribution, parse_version\n"
REPLACEMENT = (
    "from importlib.metadata import PackageNotFoundError as DistributionNotFound\n"
    "from importlib.metadata import version as get_distribution\n"
    "from packaging.version import parse as parse_version\n"
)


def fetch(version: str, dest: Path) -> Path:
    html = urllib.request.urlopen(INDEX, timeout=60).read().decode()
    match = re.search(rf'href="([^"]*/mmcv-{re.escape(version)}\.tar\.gz)#sha256=([0-9a-f]+)"', html)
    if match is None:
        raise SystemExit(f"mmcv {version} has no source release on {INDEX}")
    url, sha256 = match.groups()
    data = urllib.request.urlopen(url, timeout=300).read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SystemExit(f"sha256 mismatch for {url}")
    archive = dest / f"mmcv-{version}.tar.gz"
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / f"mmcv-{version}"


def patch(source: Path) -> None:
    setup = source / "setup.py"
    text = setup.read_text()
    if PKG_RESOURCES not in text:
        raise SystemExit(f"{setup}: the pkg_resources import to replace was not found (another mmcv version?)")
    text = text.replace(PKG_RESOURCES, REPLACEMENT)
    text = re.sub(r"([-/])std[=:]c\+\+1[47]", r"\1std=c++20", text).replace("/std=c++20", "/std:c++20")
    setup.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", default="2.1.0")
    parser.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    source = fetch(args.version, args.dest)
    patch(source)
    print(source)


if __name__ == "__main__":
    main()
