"""The container image every component runs in.

Read once, when the component modules are imported (i.e. at compile time):
`SEMLAYOUT_IMAGE` if set, else the release image tagged with the package version.
Locally the SubprocessRunner ignores the image; on the cluster each step pulls it.
"""

from __future__ import annotations

import os

from semlayout import __version__

DEFAULT_REPOSITORY = "ghcr.io/semlayout/semlayout"


def project_image() -> str:
    return os.environ.get("SEMLAYOUT_IMAGE") or f"{DEFAULT_REPOSITORY}:{__version__}"


BASE_IMAGE = project_image()
