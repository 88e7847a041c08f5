"""Vendor the API docs' browser assets from their npm packages into the semlayout package.

    python tools/vendor_docs_assets.py            # `make docs-assets`

`/docs` (Swagger UI) and `/redoc` must work on an air-gapped network, so their JavaScript and
CSS are shipped inside the wheel (src/semlayout/serving/docs_assets/) instead of being loaded
from a CDN. This script is the only way those files change: it runs `npm pack` for the pinned
versions below, copies the files the pages need (and the licences), and records each file's
sha256 with the package's npm integrity in SOURCES.json, which tests/test_docs_offline.py
checks against the shipped files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "src" / "semlayout" / "serving" / "docs_assets"
PACKAGES = {
    "swagger-ui-dist@5.36.0": {
        "package/swagger-ui-bundle.js": "swagger-ui-bundle.js",
        "package/swagger-ui.css": "swagger-ui.css",
        "package/favicon-32x32.png": "favicon-32x32.png",
        "package/LICENSE": "LICENSE.swagger-ui",
        "package/NOTICE": "NOTICE.swagger-ui",
    },
    "redoc@2.5.4": {
        "package/bundles/redoc.standalone.js": "redoc.standalone.js",
        "package/LICENSE": "LICENSE.redoc",
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    DEST.mkdir(parents=True, exist_ok=True)
    sources: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec, files in PACKAGES.items():
            out = subprocess.run(
                ["npm", "pack", spec, "--json"], cwd=tmp, check=True, capture_output=True,
                text=True,
            )  # fmt: skip
            info = json.loads(out.stdout)[0]
            with tarfile.open(Path(tmp) / info["filename"]) as tar:
                for member, name in files.items():
                    src = tar.extractfile(member)
                    if src is None:
                        raise SystemExit(f"{spec}: {member} is missing")
                    with open(DEST / name, "wb") as fh:
                        shutil.copyfileobj(src, fh)
            sources[spec] = {
                "integrity": info["integrity"],
                "files": {name: sha256(DEST / name) for name in files.values()},
            }
    (DEST / "SOURCES.json").write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n")
    print(f"wrote {sum(len(f) for f in PACKAGES.values())} files to {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
