"""Debian packages the tests need (chromium, prometheus), installed with apt when missing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure_binaries(binaries: tuple[str, ...], packages: tuple[str, ...]) -> tuple[str, ...]:
    """The paths of `binaries`, `apt-get install --no-install-recommends packages` first when
    one is missing (as root: CI and the developers' machines are); without root, skip."""
    found = tuple(shutil.which(b) for b in binaries)
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(binaries)} missing and no root to apt-get install {packages}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    r = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    found = tuple(shutil.which(b) for b in binaries)
    assert all(found), f"apt-get install {' '.join(packages)} failed: {r.stderr[-2000:]}"
    return found  # type: ignore[return-value]
