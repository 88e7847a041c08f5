"""Image headers read without decoding pixels: size, depth and channels of a PNG, TIFF or JPEG.

A decoder allocates whatever the header claims (a 100 kB PNG can claim 50000x50000
px: a decompression bomb), so the size is read from the header first:
- PNG: the IHDR chunk (first chunk, fixed layout) gives width, height, bit depth, colour type;
- TIFF: the first IFD's ImageWidth / ImageLength / BitsPerSample / SamplesPerPixel /
  SampleFormat / PhotometricInterpretation tags (classic TIFF; BigTIFF is refused);
- JPEG: the first SOFn segment gives precision, height, width and components.
Anything else (BMP, WebP, GIF, text...) is `HeaderRejected` with status 415. Used by the API's
uploads (`semlayout.serving.uploads`) and by every image read from disk
(`semlayout.data.pairs.decode_gray8`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from semlayout.errors import SemlayoutError

PNG_SIG = b"\x89PNG\r\n\x1a\n"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_COLOUR = {0: "grayscale", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


class HeaderRejected(SemlayoutError):
    """An image refused by its header; `status` is the HTTP answer the API gives (413/415/422)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


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
        raise HeaderRejected(422, "truncated or invalid PNG: the IHDR header is missing")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None:
        raise HeaderRejected(422, f"invalid PNG colour type {colour}")
    return ImageHeader("png", width, height, depth, channels, _PNG_COLOUR[colour])


def _tiff_header(data: bytes) -> ImageHeader:
    e = "<" if data[:2] == b"II" else ">"
    if struct.unpack(e + "H", data[2:4])[0] == 43:
        raise HeaderRejected(415, "BigTIFF is not supported; send a classic TIFF or a PNG")
    try:
        (ifd,) = struct.unpack(e + "I", data[4:8])
        (n,) = struct.unpack(e + "H", data[ifd : ifd + 2])
        tags: dict[int, tuple[int, int, bytes]] = {}
        for i in range(n):
            off = ifd + 2 + 12 * i
            tag, typ, count = struct.unpack(e + "HHI", data[off : off + 8])
            tags[tag] = (typ, count, data[off + 8 : off + 12])
    except struct.error:
        raise HeaderRejected(422, "truncated or invalid TIFF header") from None

    def value(tag: int, default: int | None = None) -> int:
        if tag not in tags:
            if default is None:
                raise HeaderRejected(422, f"TIFF header lacks required tag {tag}")
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
            raise HeaderRejected(422, "invalid JPEG: marker expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 10 > len(data):
                break
            precision, height, width, comps = struct.unpack(">BHHB", data[i + 4 : i + 10])
            kind = (
                "grayscale"
                if comps == 1
                else {3: "colour (YCbCr/RGB)", 4: "CMYK"}.get(comps, f"{comps}-channel")
            )
            return ImageHeader("jpeg", width, height, precision, comps, kind)
        if marker in (0xDA, 0xD9):
            break
        i += 2 + length
    raise HeaderRejected(422, "truncated or invalid JPEG: no frame header (SOF) found")


def read_header(data: bytes) -> ImageHeader:
    """The image header of `data`, without decoding pixels; 415 for formats that cannot be
    checked."""
    if not data:
        raise HeaderRejected(422, "empty file: expected an 8-bit grayscale PNG, TIFF or JPEG")
    parsers = {"PNG": _png_header, "TIFF": _tiff_header, "JPEG": _jpeg_header}
    fmt = (
        "PNG"
        if data[:8] == PNG_SIG
        else "TIFF"
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        else "JPEG"
        if data[:3] == b"\xff\xd8\xff"
        else None
    )
    if fmt is not None:
        try:
            return parsers[fmt](data)
        except struct.error:
            raise HeaderRejected(422, f"truncated or invalid {fmt} header") from None
    return_kind = "text" if _looks_like_text(data[:512]) else "an unsupported format"
    raise HeaderRejected(
        415, f"upload is {return_kind}; expected an 8-bit grayscale PNG, TIFF or JPEG"
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_header(h: ImageHeader, max_pixels: int, min_side: int) -> None:
    if h.width == 0 or h.height == 0:
        raise HeaderRejected(422, f"{h.format.upper()} header claims {h.width}x{h.height} px")
    if h.width * h.height > max_pixels:
        raise HeaderRejected(
            413,
            f"image claims {h.width}x{h.height} = {h.width * h.height} px; "
            f"the limit is {max_pixels} px",
        )
    if h.width < min_side or h.height < min_side:
        raise HeaderRejected(
            422,
            f"image is {h.width}x{h.height} px; expected at least " f"{min_side} px on each side",
        )
    if h.kind != "grayscale":
        raise HeaderRejected(422, f"expected 8-bit grayscale, got {h.kind} {h.format.upper()}")
    if h.bit_depth != 8:
        raise HeaderRejected(
            422, f"expected 8-bit grayscale, got {h.bit_depth}-bit {h.format.upper()}"
        )
