"""Photos are refused by their pixel count before they are decoded: the header parser on
real encoder output, hostile headers, and an upload through the coordinator's page."""

from __future__ import annotations

import fractions
import struct
import zlib
from pathlib import Path
from typing import Any

import av
import pytest

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, STORE_KEY
from server.directory import Senior
from web.image_header import dimensions
from web.photos import PhotoError, reencode

from tests.conftest import make_settings
from tests.web_helpers import Web, jpeg, seed, text_of


def _encoded(codec_name: str, width: int, height: int, pix_fmt: str, options: dict[str, str] | None = None) -> bytes:
    """One picture from FFmpeg's own encoder, in its image container (pipe) format."""
    frame = av.VideoFrame(width, height, "rgb24").reformat(format=pix_fmt)
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    codec.time_base = fractions.Fraction(1, 1)
    codec.options = options or {}
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))


def _webp(width: int, height: int, lossless: bool) -> bytes:
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webp") as container:
        stream = container.add_stream("libwebp", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgra" if lossless else "yuv420p"
        stream.options = {"lossless": "1" if lossless else "0"}
        frame = av.VideoFrame(width, height, "rgb24").reformat(format=stream.pix_fmt)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A one-colour 1-bit greyscale PNG: tiny on disk, width × height pixels decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" + b"\0" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(640, 480), (33, 4001), (1, 1)])
def test_dimensions_of_real_jpeg_png_and_webp(width: int, height: int) -> None:
    assert dimensions(_encoded("mjpeg", width + width % 2, height + height % 2, "yuvj420p")) == (
        width + width % 2, height + height % 2)
    assert dimensions(_encoded("png", width, height, "rgb24")) == (width, height)
    assert dimensions(png_bomb(width, height)) == (width, height)
    assert dimensions(_webp(width + width % 2, height + height % 2, lossless=False)) == (
        width + width % 2, height + height % 2)
    assert dimensions(_webp(width, height, lossless=True)) == (width, height)


def test_a_jpeg_with_metadata_before_its_frame_header() -> None:
    plain = jpeg(320, 240)
    # An APP1 (EXIF-like) segment and fill bytes before the frame header, as phones write.
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 20) + b"Exif\0\0" + b"\0" * 14 + b"\xff"
    assert dimensions(plain[:2] + exif + plain[2:]) == (320, 240)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDX" + b"\0" * 8,
     b"\x89PNG\r\n\x1a\n\x00", b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8X\0\0", b"GIF89a", b"\xff\xd8\xff\xe0\x00\x01"],
)
def test_unreadable_headers_are_none(data: bytes) -> None:
    assert dimensions(data) is None


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(8000, 8000)
    assert len(bomb) < 100_000
    with pytest.raises(PhotoError, match="too many pixels"):
        reencode(bomb, max_pixels=25_000_000)
    # A JPEG whose frame header claims 9000×9000 and has no picture at all: refused for its
    # size, which shows the decoder never ran (it would find nothing to read).
    claim = b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 9000, 9000) + b"\x03" + b"\0" * 9 + b"\xff\xd9"
    with pytest.raises(PhotoError, match="too many pixels"):
        reencode(claim, max_pixels=25_000_000)
    # Within the limit, the same kind of picture is re-encoded as usual.
    small = reencode(png_bomb(1000, 800), max_pixels=25_000_000)
    assert dimensions(small) == (480, 384)


async def test_an_8000_by_8000_png_upload_is_refused_and_nothing_is_stored(tmp_path: Path, aiohttp_client: Any) -> None:
    app = create_app(make_settings(tmp_path))
    client = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("carla")).status == 303
    await web.get("/admin/seniors/new")
    people_before = len(await app[STORE_KEY].list_records("people"))
    response = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"},
                              files={"photo": ("bom.png", png_bomb(8000, 8000), "image/png")})
    assert response.status == 400
    assert "Deze foto heeft te veel pixels." in text_of(await response.text())
    assert [s.name for s in await app[DIRECTORY_KEY].list(Senior)] == [data.senior.name]
    assert len(await app[STORE_KEY].list_records("people")) == people_before
    # A photo within the limit still goes through.
    ok = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"},
                        files={"photo": ("portret.png", png_bomb(1200, 900), "image/png")})
    assert ok.status == 303
