"""Upload validation: refuse what is too big or not an 8-bit grayscale image BEFORE decoding it.

A decoder allocates whatever the header claims (a 100 kB PNG can claim 50000x50000
px: a decompression bomb), so the size is read from the header first:
- PNG: the IHDR chunk (first chunk, fixed layout) gives width, height, bit depth, colour type;
- TIFF: the first IFD's ImageWidth / ImageLength / BitsPerSample / SamplesPerPixel /
  SampleFormat / PhotometricInterpretation tags (classic TIFF; BigTIFF is refused);
- JPEG: the first SOFn segment gives precision, height, width and components.
Anything else (BMP, WebP, GIF, text...) is refused with 415. Only then does
`cv2.imdecode` run, and its result is checked again (`semlayout.data.pairs.decode_gray8`).

The request body itself is limited by `BodyLimitMiddleware`: a Content-Length above the
limit is answered 413 at once, and a chunked body is counted while it streams in and
cut off with 413 when it passes the limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

from semlayout.data.pairs import ImageRejected, decode_gray8

PNG_SIG = b"\x89PNG\r\n\x1a\n"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_COLOUR = {0: "grayscale", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


class UploadRejected(HTTPException):
    """An upload refused before or while decoding; status 413, 415 or 422 with a reason."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(status_code=status_code, detail=detail)


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    bit_depth: int
    channels: int
    kind: str  # "grayscale", "RGB", "palette", "float", ...


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UploadRejected(422, "truncated or invalid PNG: the IHDR header is missing")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None:
        raise UploadRejected(422, f"invalid PNG colour type {colour}")
    return ImageHeader("png", width, height, depth, channels, _PNG_COLOUR[colour])


def _tiff_header(data: bytes) -> ImageHeader:
    e = "<" if data[:2] == b"II" else ">"
    if struct.unpack(e + "H", data[2:4])[0] == 43:
        raise UploadRejected(415, "BigTIFF is not supported; send a classic TIFF or a PNG")
    try:
        (ifd,) = struct.unpack(e + "I", data[4:8])
        (n,) = struct.unpack(e + "H", data[ifd:ifd + 2])
        tags: dict[int, tuple[int, int, bytes]] = {}
        for i in range(n):
            off = ifd + 2 + 12 * i
            tag, typ, count = struct.unpack(e + "HHI", data[off:off + 8])
            tags[tag] = (typ, count, data[off + 8:off + 12])
    except struct.error:
        raise UploadRejected(422, "truncated or invalid TIFF header") from None

    def value(tag: int, default: int | None = None) -> int:
        if tag not in tags:
            if default is None:
                raise UploadRejected(422, f"TIFF header lacks required tag {tag}")
            return default
        typ, _count, raw = tags[tag]
        # SHORT (3) values sit left-justified in the 4-byte field in both byte orders
        return struct.unpack(e + "H", raw[:2])[0] if typ == 3 else struct.unpack(e + "I", raw)[0]

    width, height = value(256), value(257)
    samples = value(277, 1)
    bits = value(258, 1) if tags.get(258, (0, 1, b""))[1] == 1 else -1
    if samples > 1 and bits == -1:
        bits = 8  # several samples: refused below as colour whatever their depth
    fmt = value(339, 1)
    photometric = value(262, 1)
    kind = {1: "grayscale", 2: "signed", 3: "float"}.get(fmt, f"sample format {fmt}")
    if photometric == 3:
        kind = "palette"
    elif samples > 1:
        kind = {2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(samples, f"{samples}-channel")
    return ImageHeader("tiff", width, height, bits, samples, kind)


def _jpeg_header(data: bytes) -> ImageHeader:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise UploadRejected(422, "invalid JPEG: marker expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF:
            if i + 10 > len(data):
                break
            precision, height, width, comps = struct.unpack(">BHHB", data[i + 4:i + 10])
            kind = "grayscale" if comps == 1 else {3: "colour (YCbCr/RGB)", 4: "CMYK"}.get(comps, f"{comps}-channel")
            return ImageHeader("jpeg", width, height, precision, comps, kind)
        if marker in (0xDA, 0xD9):
            break
        i += 2 + length
    raise UploadRejected(422, "truncated or invalid JPEG: no frame header (SOF) found")


def read_header(data: bytes) -> ImageHeader:
    """The image header of `data`, without decoding pixels; 415 for formats that cannot be checked."""
    if not data:
        raise UploadRejected(422, "empty file: expected an 8-bit grayscale PNG, TIFF or JPEG")
    parsers = {"PNG": _png_header, "TIFF": _tiff_header, "JPEG": _jpeg_header}
    fmt = ("PNG" if data[:8] == PNG_SIG
           else "TIFF" if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
           else "JPEG" if data[:3] == b"\xff\xd8\xff" else None)
    if fmt is not None:
        try:
            return parsers[fmt](data)
        except struct.error:
            raise UploadRejected(422, f"truncated or invalid {fmt} header") from None
    return_kind = "text" if _looks_like_text(data[:512]) else "an unsupported format"
    raise UploadRejected(415, f"upload is {return_kind}; expected an 8-bit grayscale PNG, TIFF or JPEG")


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_header(h: ImageHeader, max_pixels: int, min_side: int) -> None:
    if h.width == 0 or h.height == 0:
        raise UploadRejected(422, f"{h.format.upper()} header claims {h.width}x{h.height} px")
    if h.width * h.height > max_pixels:
        raise UploadRejected(413, f"image claims {h.width}x{h.height} = {h.width * h.height} px; "
                                  f"the limit is {max_pixels} px")
    if h.width < min_side or h.height < min_side:
        raise UploadRejected(422, f"image is {h.width}x{h.height} px; expected at least "
                                  f"{min_side} px on each side")
    if h.kind != "grayscale":
        raise UploadRejected(422, f"expected 8-bit grayscale, got {h.kind} {h.format.upper()}")
    if h.bit_depth != 8:
        raise UploadRejected(422, f"expected 8-bit grayscale, got {h.bit_depth}-bit {h.format.upper()}")


def decode_upload(data: bytes, name: str, max_pixels: int, min_side: int = 1) -> np.ndarray:
    """Header checks, then decode: an (H, W) uint8 array, or UploadRejected with a reason."""
    try:
        header = read_header(data)
        check_header(header, max_pixels, min_side)
    except UploadRejected as err:  # name the field: a batch or a pair has several uploads
        raise UploadRejected(err.status_code, f"{name}: {err.detail}") from None
    try:
        img = decode_gray8(data, name)
    except ImageRejected as err:
        detail = err.detail
        if err.reason == "unreadable":
            detail = f"cannot decode the {header.format.upper()} data (truncated or corrupt?)"
        raise UploadRejected(422, f"{name}: {detail}") from None
    if img.shape != (header.height, header.width):
        raise UploadRejected(422, f"{name}: decoded size {img.shape[1]}x{img.shape[0]} differs "
                                  f"from the header's {header.width}x{header.height}")
    return img


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
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _drain_nothing_and_reply(send, limit: int) -> None:  # type: ignore[no-untyped-def]
    # reply without reading the body; "connection: close" tells the client not to reuse it
    await _send_json(send, 413, f"request body exceeds the {limit} byte limit")
