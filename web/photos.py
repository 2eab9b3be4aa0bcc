"""Photos of seniors and contacts: uploaded once, re-encoded small, served by an unguessable id.

An upload (JPEG, PNG or WebP) with at most `photo_max_pixels` pixels (read from its header,
`web/image_header.py`, before anything is decoded) is decoded with PyAV (already a dependency for media),
turned upright, scaled to fit `MAX_SIDE` and encoded again as JPEG. Re-encoding drops
every bit of metadata a phone puts in (location, device, time). The result is a directory
record in the "people" collection with `kind` "photo" (so it travels with the directory
to every node, SQLite or Redis; `Directory.list(Senior)` and `list(Account)` skip it).

`GET /photos/{id}.jpg` serves it. The id is 128 random bits: whoever has the URL (staff
pages, the family member's invite page, the senior's kiosk) can see the picture; nobody
can find it by guessing.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import io
import re
import secrets
from typing import Any

import av
from aiohttp import web

from server.appkeys import STORE_KEY
from server.store import Store

from .i18n import N_
from .image_header import dimensions

MAX_SIDE = 480
COLLECTION = "people"
_ID = re.compile(r"^photo-[A-Za-z0-9_-]{20,32}$")
# Sniffed from the first bytes; the decoder is never asked to guess.
_FORMATS = ((b"\xff\xd8\xff", "jpeg_pipe"), (b"\x89PNG\r\n\x1a\n", "png_pipe"))


class PhotoError(ValueError):
    """`message` is a msgid saying what is wrong with the upload."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _format_of(data: bytes) -> str:
    for magic, name in _FORMATS:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp_pipe"
    raise PhotoError(N_("This is not a photo we can use. Choose a JPEG, PNG or WebP picture."))


def reencode(data: bytes, max_pixels: int) -> bytes:
    """A small upright JPEG from an uploaded picture, without any metadata.

    The picture's size is read from its header first: one with more than `max_pixels`
    (a decompression bomb, or simply too large) is refused before it is decoded.
    """
    fmt = _format_of(data)
    size = dimensions(data)
    if size is None or 0 in size:
        raise PhotoError(N_("This photo could not be read. Try another picture."))
    if size[0] * size[1] > max_pixels:
        raise PhotoError(N_("This photo has too many pixels. Choose a smaller photo, or one taken at a lower resolution."))
    try:
        with av.open(io.BytesIO(data), format=fmt) as container:
            frame = next(container.decode(video=0))
    except (av.FFmpegError, StopIteration, ValueError):
        raise PhotoError(N_("This photo could not be read. Try another picture.")) from None
    frame = _upright(frame)
    scale = min(1.0, MAX_SIDE / max(frame.width, frame.height))
    width = max(2, int(frame.width * scale) // 2 * 2)
    height = max(2, int(frame.height * scale) // 2 * 2)
    small = frame.reformat(width=width, height=height, format="yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = fractions.Fraction(1, 1)
    codec.options = {"qmin": "2", "qmax": "6"}
    packets = codec.encode(small) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def _upright(frame: av.VideoFrame) -> av.VideoFrame:
    """Applies the rotation a phone records in its JPEG (EXIF orientation)."""
    rotation = round(getattr(frame, "rotation", 0) or 0) % 360
    if rotation == 0:
        return frame
    filters = {90: ["transpose=cclock"], 180: ["hflip", "vflip"], 270: ["transpose=clock"]}.get(rotation)
    if filters is None:
        return frame
    graph = av.filter.Graph()
    source = graph.add_buffer(template=None, width=frame.width, height=frame.height,
                              format=frame.format.name, time_base=fractions.Fraction(1, 1))
    node = source
    for spec in filters:
        name, _, args = spec.partition("=")
        nxt = graph.add(name, args or None)
        node.link_to(nxt)
        node = nxt
    sink = graph.add("buffersink")
    node.link_to(sink)
    graph.configure()
    frame.pts = 0
    graph.push(frame)
    return graph.pull()


async def save_photo(store: Store, upload: Any, max_bytes: int, max_pixels: int) -> str:
    """Stores an upload (filename, content type, bytes); returns its URL path."""
    if not isinstance(upload, tuple) or len(upload) != 3:
        raise PhotoError(N_("Choose a photo to upload."))
    data = upload[2]
    if not data:
        raise PhotoError(N_("Choose a photo to upload."))
    if len(data) > max_bytes:
        raise PhotoError(N_("The file is too large. Choose a smaller photo."))
    jpeg = await asyncio.to_thread(reencode, data, max_pixels)
    photo_id = f"photo-{secrets.token_urlsafe(16)}"
    await store.put_record(
        COLLECTION,
        photo_id,
        {"id": photo_id, "kind": "photo", "jpeg": base64.b64encode(jpeg).decode()},
    )
    return f"/photos/{photo_id}.jpg"


async def delete_photo(store: Store, url: str) -> None:
    match = re.fullmatch(r"/photos/(photo-[A-Za-z0-9_-]+)\.jpg", url or "")
    if match:
        await store.delete_record(COLLECTION, match.group(1))


async def photo(request: web.Request) -> web.Response:
    photo_id = request.match_info["photo_id"]
    if not _ID.match(photo_id):
        raise web.HTTPNotFound()
    record = await request.app[STORE_KEY].get_record(COLLECTION, photo_id)
    if record is None or record.get("kind") != "photo":
        raise web.HTTPNotFound()
    return web.Response(
        body=base64.b64decode(record["jpeg"]),
        content_type="image/jpeg",
        headers={
            # The id changes with every upload, so the bytes behind one never change.
            "Cache-Control": "private, max-age=86400, immutable",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/photos/{photo_id}.jpg", photo)
