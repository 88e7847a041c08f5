"""Write outputs so that a failed run leaves nothing that looks finished.

Everything is built in a hidden temporary sibling of the destination and moved
into place with one rename when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from semlayout.errors import SemlayoutError
from semlayout.model_uri import ModelUri


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that replaces `dest` only if the block succeeds.

    An existing `dest` is replaced only after the new content is complete;
    on error the temporary folder is removed and `dest` is untouched.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():  # before any work: a file is not replaced by a folder
        raise SemlayoutError(
            f"output {dest} exists and is not a folder; remove it or choose another path"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    # mkdtemp makes a private 0700 folder; the finished output gets normal permissions
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(dest)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def check_not_over_inputs(
    out: str | os.PathLike[str], **inputs: str | os.PathLike[str] | None
) -> None:
    """Refuse an output folder that is, or contains, one of the inputs: replacing it would delete
    that input (`predict --out MODEL`, `intake download STORE --out STORE`). Keyword = option name;
    None or non-local inputs (s3://, models:/) are skipped."""
    dst = Path(out).resolve()
    for name, value in inputs.items():
        text = str(value).removeprefix("file://") if value is not None else ""
        if not text or "://" in text or ModelUri.is_model_uri(text):
            continue
        src = Path(text).resolve()
        if dst == src or dst in src.parents:
            raise SemlayoutError(
                f"--out {out} would replace the {name.replace('_', ' ')} {value}; "
                "choose another folder"
            )


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `dest` through a temporary file and a rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_symlink(link: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Point `link` at `target` with a relative symlink (the tree can move) swapped in by one
    rename, so a reader sees the old target or the new one, never none. A real folder at `link`
    (an older copy-style pointer) is removed first. Returns `link`."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    return link
