"""Small hostile files, built byte by byte: WAVs whose RIFF header lies, PNGs whose header or text chunks do.

Each is tiny on disk and declares far more than it holds (or holds damaged metadata), so a reader that trusts the
header before checking it does a great deal of work; the tests assert that it is refused first. Shared by the
reader, classify and serve tests.
"""

from __future__ import annotations

import functools
import json
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def wav_bytes(*, sr: int = 16000, channels: int = 1, bits: int = 16, frames: int = 16, data_size: int | None = None,
              format_tag: int = 1, block_align: int | None = None, byte_rate: int | None = None,
              payload: bytes | None = None) -> bytes:
    """A RIFF/WAVE file: a ``fmt `` chunk with these fields, then a ``data`` chunk declaring ``data_size`` bytes
    (default: ``frames`` frames) and holding ``payload`` (default: that many zero bytes)."""
    block_align = channels * ((bits + 7) // 8) if block_align is None else block_align
    byte_rate = sr * block_align if byte_rate is None else byte_rate
    payload = bytes(frames * block_align) if payload is None else payload
    data_size = len(payload) if data_size is None else data_size
    fmt = struct.pack("<HHIIHH", format_tag & 0xFFFF, channels & 0xFFFF, sr & 0xFFFFFFFF, byte_rate & 0xFFFFFFFF,
                      block_align & 0xFFFF, bits & 0xFFFF)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size & 0xFFFFFFFF)
    body += payload + (b"\0" if len(payload) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


def one_hz_wav(size: int = 80_000) -> bytes:
    """The measured case: an 80 KB 16-bit mono WAV declaring 1 Hz (40,000 s; resampled to 16 kHz: 5 GB)."""
    return wav_bytes(sr=1, frames=size // 2)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(*, width: int, height: int, text: dict[str, str] | None = None, idat: bytes | None = None,
              bit_depth: int = 8, color_type: int = 0, interlace: int = 0) -> bytes:
    """A PNG with this IHDR (valid CRCs), ``tEXt`` chunks before the image data, and ``idat`` as its image data
    (default: zlib of all-zero rows, compressed in pieces so a huge declared image costs little to build)."""
    header = struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, bit_depth, color_type, 0, 0, interlace)
    chunks = [PNG_SIGNATURE, png_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    chunks.append(png_chunk(b"IDAT", _zero_rows(width, height) if idat is None else idat))
    chunks.append(png_chunk(b"IEND", b""))
    return b"".join(chunks)


@functools.lru_cache(maxsize=4)
def _zero_rows(width: int, height: int) -> bytes:
    """zlib of ``height`` 8-bit grayscale rows of ``width`` zeros, each with filter byte 0."""
    squeeze = zlib.compressobj(9)
    total, piece = height * (width + 1), bytes(1 << 20)
    parts = []
    while total > 0:
        parts.append(squeeze.compress(piece[:min(total, len(piece))]))
        total -= len(piece)
    parts.append(squeeze.flush())
    return b"".join(parts)


def spectro_text(features=None, /, **overrides) -> dict[str, str]:
    """The text chunks spectro writes, for the FeatureSettings ``features`` (default: without a modulation
    spectrum); ``overrides`` replace or add chunks by key (``settings="..."`` replaces the settings JSON)."""
    from spectro.features.settings import FeatureSettings

    features = FeatureSettings(modulation_hz=None) if features is None else features
    text = {"spectro:settings": features.to_json(), "spectro:hash": features.hash(), "spectro:source": "",
            "spectro:segment": "0"}
    if features.modulation_hz is not None:
        text["spectro:modulation"] = " ".join(["0"] * features.modulation_hz)
    for key, value in overrides.items():
        text["spectro:" + key] = value if isinstance(value, str) else json.dumps(value)
    return text


def wide_png(*, bands: int = 64, frames: int = 2_000_000, settings=None) -> bytes:
    """The measured case: about 125 KB holding ``bands`` x 2,000,000 pixels (46 s and 950 MB to score)."""
    from spectro.features.settings import FeatureSettings

    return png_bytes(width=frames, height=bands,
                     text=spectro_text(FeatureSettings(n_mels=bands, modulation_hz=None) if settings is None
                                       else settings))


# a decompression bomb for Pillow: 20,000 x 20,000 pixels, more than twice Image.MAX_IMAGE_PIXELS
BOMB_SIDE = 20_000
