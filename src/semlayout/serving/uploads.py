"""Upload validation: refuse what is too big or not an 8-bit grayscale image BEFORE decoding it.

A decoder allocates whatever the header claims (a decompression bomb), so each upload's
header is read first (`semlayout.data.image_header`: PNG, TIFF, JPEG; anything else is 415),
its size and depth checked, and only then does `cv2.imdecode` run; its result is checked
again (`semlayout.data.pairs.decode_gray8`). Errors name the upload field.
`read_image` is a request's whole decode step: read the part, then check and decode it in
a worker thread (never on the event loop); the translate path reads the part on the event
loop (`read_encoded`) and decodes it in its first worker-thread hop (`decode_all`).

The request body itself is limited by `BodyLimitMiddleware`: a Content-Length above the
limit is answered 413 at once, and a chunked body is counted while it streams in and
cut off with 413 when it passes the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from semlayout.data.image_header import HeaderRejected, ImageHeader, check_header, read_header
from semlayout.data.pairs import ImageRejected, decode_gray8
from semlayout.serving import server_timing
from semlayout.serving.settings import ServeSettings

__all__ = [
    "Encoded",
    "ImageHeader",
    "UploadRejected",
    "check_header",
    "decode_all",
    "decode_upload",
    "read_encoded",
    "read_header",
    "read_image",
    "read_upload",
]


class UploadRejected(HTTPException):
    """An upload refused before or while decoding; status 413, 415 or 422 with a reason."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(status_code=status_code, detail=detail)


def decode_upload(data: bytes, name: str, max_pixels: int, min_side: int = 1) -> np.ndarray:
    """Header checks, then decode: an (H, W) uint8 array, or UploadRejected with a reason."""
    try:
        header = read_header(data)
        check_header(header, max_pixels, min_side)
    except HeaderRejected as err:  # name the field: a batch or a pair has several uploads
        raise UploadRejected(err.status, f"{name}: {err.detail}") from None
    try:
        img = decode_gray8(data, name)
    except ImageRejected as err:
        detail = err.detail
        if err.reason == "unreadable":
            detail = f"cannot decode the {header.format.upper()} data (truncated or corrupt?)"
        raise UploadRejected(422, f"{name}: {detail}") from None
    if img.shape != (header.height, header.width):
        raise UploadRejected(
            422,
            f"{name}: decoded size {img.shape[1]}x{img.shape[0]} differs "
            f"from the header's {header.width}x{header.height}",
        )
    return img


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The part's bytes, or 413 when it holds more than `max_bytes`."""
    # Starlette has already spooled the part; the body limit middleware bounded its size.
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadRejected(413, f"'{upload.filename}' exceeds the {max_bytes} byte limit")
    return data


@dataclass(frozen=True)
class Encoded:
    """An upload's bytes, read on the event loop and decoded in the request's first
    worker-thread hop (`decode_all`): one hop fewer than `read_image`."""

    data: bytes
    name: str  # the form field, for the error messages


async def read_encoded(upload: UploadFile, name: str, settings: ServeSettings) -> Encoded:
    """Read one upload field within the byte limit; decoded later (`decode_all`)."""
    return Encoded(await read_upload(upload, settings.max_upload_bytes), name)


def decode_all(images: Sequence[np.ndarray | Encoded], settings: ServeSettings) -> list[np.ndarray]:
    """Worker thread: the uploads decoded within the server's limits (4xx with the field's
    name for the first that is refused); decoded arrays pass through."""
    with server_timing.span("decode"):
        return [
            decode_upload(x.data, x.name, settings.max_pixels, settings.min_side)
            if isinstance(x, Encoded)
            else x
            for x in images
        ]


async def read_image(upload: UploadFile, name: str, settings: ServeSettings) -> np.ndarray:
    """Read one upload field and decode it (in a worker thread) within the server's limits."""
    data = await read_upload(upload, settings.max_upload_bytes)
    return await run_in_threadpool(
        decode_upload, data, name, settings.max_pixels, settings.min_side
    )


# --------------------------------------------------------------------------- body limit
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, detail=f"request body exceeds the {limit} byte limit")


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies over `max_bytes`, checked before and while reading."""

    def __init__(self, app, max_bytes: int):  # type: ignore[no-untyped-def]
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await _drain_nothing_and_reply(send, self.max_bytes)
                    return
        seen = 0

        async def limited_receive():  # type: ignore[no-untyped-def]
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the route's body parsing; FastAPI re-raises HTTPExceptions
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, detail: str) -> None:  # type: ignore[no-untyped-def]
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drain_nothing_and_reply(send, limit: int) -> None:  # type: ignore[no-untyped-def]
    # reply without reading the body; "connection: close" tells the client not to reuse it
    await _send_json(send, 413, f"request body exceeds the {limit} byte limit")
