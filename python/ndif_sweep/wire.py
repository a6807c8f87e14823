"""Framing of the messages between ndif-sweep's ranks and the encoder process.

One message is a frame: the magic ``NSE1``, a little-endian u32 length of a UTF-8 JSON object, a
little-endian u64 length of a binary attachment, the JSON, then the attachment. The C++ side
(``src/remote/encoder_wire.cpp``) reads and writes the same layout and bounds both lengths, because
either end may be broken or hostile.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO, Optional, Tuple

MAGIC = b"NSE1"
HEADER = struct.Struct("<4sIQ")
MAX_JSON = 16 << 20
MAX_ATTACHMENT = 1 << 31

#: Version of the operations below; the hello reply carries it and the C++ side checks it.
PROTOCOL = 1


class WireError(Exception):
    """A frame that does not parse: the peer is not speaking this protocol."""


def _read_exact(stream: BinaryIO, size: int) -> Optional[bytes]:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if remaining == size:
                return None
            raise WireError(f"the stream ended {remaining} bytes before the end of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> Optional[Tuple[dict, bytes]]:
    """The next message, or None at a clean end of the stream."""
    head = _read_exact(stream, HEADER.size)
    if head is None:
        return None
    magic, json_len, bin_len = HEADER.unpack(head)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}")
    if json_len > MAX_JSON or bin_len > MAX_ATTACHMENT:
        raise WireError(f"frame too large ({json_len} + {bin_len} bytes)")
    body = _read_exact(stream, json_len) if json_len else b""
    attachment = _read_exact(stream, bin_len) if bin_len else b""
    if body is None or attachment is None:
        raise WireError("the stream ended inside a frame")
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise WireError(f"the JSON part does not parse: {error}") from error
    if not isinstance(message, dict):
        raise WireError("the JSON part is not an object")
    return message, attachment


def write_message(stream: BinaryIO, message: dict, attachment: bytes = b"") -> None:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    stream.write(HEADER.pack(MAGIC, len(body), len(attachment)))
    stream.write(body)
    if attachment:
        stream.write(attachment)
    stream.flush()


def error_reply(kind: str, message: str, **extra: Any) -> dict:
    """The reply to a failed operation: ``kind`` is what the C++ side branches on."""
    return {"ok": False, "kind": kind, "message": message, **extra}
