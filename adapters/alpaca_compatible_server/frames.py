"""Wire encoding: JSON or msgpack, and pre-encoded data frames with a patched send timestamp.

Every data message (quote, trade) is encoded once with its ``t`` key LAST and a fixed-width
placeholder in it. A frame of such messages is stored complete with its WebSocket frame header
(server frames are unmasked, and no extension is ever negotiated) as the byte segments around
the placeholders. At send time the wire bytes are ``stamp.join(segments)``: one C-level join,
with the server's wall-clock send time as ``t`` of every message in the frame. Widths are fixed,
so the stamp always fits and the header's length stays right:

- JSON: ``"2026-11-25T17:00:00.123456789Z"`` (30 characters, 9 fraction digits, always);
- msgpack: a Timestamp ext (type -1) always in the 10-byte timestamp64 form ``d7 ff`` + 8 bytes
  (``nanoseconds << 34 | seconds``), which every msgpack decoder reads as a Timestamp.

Control messages, bars and malformed frames are rare: they are encoded on demand and sent through
trio-websocket's ``send_message``.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Final, Generic, TypeVar

import msgpack
import orjson

from domain.timestamps import NS_PER_SECOND, format_ns

S = TypeVar("S", str, bytes)

JSON_STAMP_WIDTH: Final = 30
MSGPACK_STAMP_WIDTH: Final = 10
_JSON_PLACEHOLDER: Final = "~" * JSON_STAMP_WIDTH
# Seconds < 2**34 and non-zero nanoseconds: msgpack packs this as timestamp64 (d7 ff + 8 bytes).
_MSGPACK_PLACEHOLDER: Final = msgpack.Timestamp(0x3_DEAD_BEEF, 987_654_321)
_PACK_U64 = struct.Struct(">Q").pack
_OPCODE_TEXT: Final = 0x1
_OPCODE_BINARY: Final = 0x2

Message = Mapping[str, object]

MALFORMED_KINDS: Final = (
    "bad_encoding",
    "not_a_list",
    "missing_fields",
    "wrong_types",
    "unknown_type",
)


class WireFormat(StrEnum):
    """The session's encoding, chosen by the upgrade's ``Content-Type`` header."""

    JSON = "json"
    MSGPACK = "msgpack"


class WireTime:
    """A timestamp value inside a message given to :meth:`Codec.encode`: JSON renders it as
    RFC-3339 text, msgpack as a Timestamp ext."""

    __slots__ = ("ns", "whole_seconds")

    def __init__(self, ns: int, *, whole_seconds: bool = False) -> None:
        self.ns = ns
        self.whole_seconds = whole_seconds
        """Render without a fraction (``...:00Z``), as Alpaca stamps bars."""


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final WebSocket frame (RFC 6455 §5.2), as a server sends."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


class Codec(ABC, Generic[S]):
    """One wire format: ``S`` is what ``send_message`` takes for it, ``str`` for JSON (text
    frames), ``bytes`` for msgpack (binary frames)."""

    format: WireFormat
    opcode: int
    stamp_width: int

    @abstractmethod
    def stamp(self, ts_ns: int) -> bytes:
        """The fixed-width encoding of ``ts_ns`` that replaces every placeholder."""

    @abstractmethod
    def encode(self, value: object) -> S:
        """Encode any value (a frame is a list of message mappings); :class:`WireTime` values
        become timestamps."""

    @abstractmethod
    def decode(self, raw: str | bytes) -> object:
        """Decode a client message. Raises ``ValueError`` if it is not valid in this format."""

    @abstractmethod
    def broken(self, symbol: str) -> S:
        """A frame that does not decode in this format at all."""

    @abstractmethod
    def _message_prefix(self, message: Message) -> bytes:
        """``message`` plus ``t`` as its last key, encoded, cut just before the stamp."""

    @abstractmethod
    def _payload_segments(self, prefixes: Sequence[bytes]) -> list[bytes]:
        """The payload of a frame of messages, as the segments around their stamps."""

    @abstractmethod
    def _truncate_payload(self, segments: Sequence[bytes], count: int) -> list[bytes]:
        """The payload segments of the same frame holding only its first ``count`` messages."""

    def control(self, message: Message) -> S:
        """A control message, alone in an array of length 1, as Alpaca sends them."""
        return self.encode([message])

    def template(self, messages: Sequence[Message]) -> tuple[bytes, ...]:
        """A frame of ``messages`` (without ``t``: it is added as the last key), header
        included, as segments: ``stamp(ns).join(segments)`` is the frame on the wire."""
        if not messages:
            raise ValueError("a frame needs at least one message")
        segments = self._payload_segments([self._message_prefix(m) for m in messages])
        return self._framed(segments, len(messages))

    def truncate(self, segments: tuple[bytes, ...], count: int) -> tuple[bytes, ...]:
        """The segments of a :meth:`template` frame cut to its first ``count`` messages."""
        messages = len(segments) - 1
        if not 1 <= count <= messages:
            raise ValueError(f"count must be within 1..{messages}, got {count}")
        length_code = segments[0][1] & 0x7F  # unmasked server frame: 2, 4 or 10 header bytes
        header = 2 if length_code < 126 else 4 if length_code == 126 else 10
        payload = [segments[0][header:], *segments[1:]]
        return self._framed(self._truncate_payload(payload, count), count)

    def _framed(self, payload: list[bytes], messages: int) -> tuple[bytes, ...]:
        length = sum(map(len, payload)) + self.stamp_width * messages
        return (frame_header(self.opcode, length) + payload[0], *payload[1:])

    def pool(self, frames: Sequence[Sequence[Message]]) -> FramePool:
        """Pre-encode frames of messages (see :meth:`template`) into a :class:`FramePool`."""
        assert isinstance(self, JsonCodec | MsgpackCodec)
        return FramePool(self, [self.template(messages) for messages in frames])

    def malformed(self, kind: str, symbol: str, ts_ns: int) -> S:
        """A deliberately broken data frame of the given kind (one of
        :data:`MALFORMED_KINDS`), about ``symbol`` so that a client filtering by its
        subscriptions still sees it."""
        t = WireTime(ts_ns)
        if kind == "bad_encoding":
            return self.broken(symbol)
        if kind == "not_a_list":
            quote = {"T": "q", "S": symbol, "bx": "V", "bp": 100.0, "bs": 1, "ax": "V",
                     "ap": 100.02, "as": 1, "c": ["R"], "z": "C", "t": t}  # fmt: skip
            return self.encode(quote)
        if kind == "missing_fields":
            return self.encode([{"T": "q", "S": symbol, "t": t}])
        if kind == "wrong_types":
            wrong = {"T": "q", "S": symbol, "bx": 1, "bp": "abc", "bs": "x", "ax": None,
                     "ap": [1], "as": -1.5, "c": "R", "z": 3, "t": 12345}  # fmt: skip
            return self.encode([wrong])
        if kind == "unknown_type":
            return self.encode([{"T": "zz", "S": symbol, "t": t}])
        raise ValueError(f"unknown malformed kind {kind!r}")


class JsonCodec(Codec[str]):
    """JSON in text frames (orjson). Client messages may be text or binary JSON."""

    format = WireFormat.JSON
    opcode = _OPCODE_TEXT
    stamp_width = JSON_STAMP_WIDTH

    def stamp(self, ts_ns: int) -> bytes:
        return format_ns(ts_ns).encode()

    def encode(self, value: object) -> str:
        return orjson.dumps(value, default=_json_default).decode()

    def decode(self, raw: str | bytes) -> object:
        return orjson.loads(raw)

    def broken(self, symbol: str) -> str:
        return self.encode([{"T": "q", "S": symbol}])[:-4]  # cut off mid-object

    def _message_prefix(self, message: Message) -> bytes:
        encoded = orjson.dumps({**message, "t": _JSON_PLACEHOLDER}, default=_json_default)
        tail = _JSON_PLACEHOLDER.encode() + b'"}'
        if not encoded.endswith(tail):
            raise ValueError(f"'t' must be absent or the last key: {message!r}")
        return encoded[: -len(tail)]

    def _payload_segments(self, prefixes: Sequence[bytes]) -> list[bytes]:
        return [b"[" + prefixes[0], *(b'"},' + p for p in prefixes[1:]), b'"}]']

    def _truncate_payload(self, segments: Sequence[bytes], count: int) -> list[bytes]:
        return [*segments[:count], b'"}]']


class MsgpackCodec(Codec[bytes]):
    """msgpack in binary frames; ``t`` is a Timestamp ext. JSON text from the client is accepted
    too."""

    format = WireFormat.MSGPACK
    opcode = _OPCODE_BINARY
    stamp_width = MSGPACK_STAMP_WIDTH

    def stamp(self, ts_ns: int) -> bytes:
        seconds, nanos = divmod(ts_ns, NS_PER_SECOND)
        return b"\xd7\xff" + _PACK_U64(nanos << 34 | seconds)

    def encode(self, value: object) -> bytes:
        packed: bytes = msgpack.packb(value, default=_msgpack_default)
        return packed

    def decode(self, raw: str | bytes) -> object:
        if isinstance(raw, str):
            return orjson.loads(raw)
        try:
            return msgpack.unpackb(raw)
        except (msgpack.UnpackException, TypeError) as exc:
            raise ValueError(f"bad msgpack: {exc}") from exc

    def broken(self, symbol: str) -> bytes:
        # 0xc1 is the one byte msgpack never uses: every decoder rejects it.
        return self.encode([{"T": "q", "S": symbol}])[:-1] + b"\xc1"

    def _message_prefix(self, message: Message) -> bytes:
        encoded = self.encode({**message, "t": _MSGPACK_PLACEHOLDER})
        tail = self.encode(_MSGPACK_PLACEHOLDER)
        if not encoded.endswith(tail):
            raise ValueError(f"'t' must be absent or the last key: {message!r}")
        return encoded[: -len(tail)]

    def _payload_segments(self, prefixes: Sequence[bytes]) -> list[bytes]:
        return [_array_header(len(prefixes)) + prefixes[0], *prefixes[1:], b""]

    def _truncate_payload(self, segments: Sequence[bytes], count: int) -> list[bytes]:
        first = segments[0][len(_array_header(len(segments) - 1)) :]
        return [_array_header(count) + first, *segments[1:count], b""]


def codec_for(fmt: WireFormat) -> JsonCodec | MsgpackCodec:
    return JsonCodec() if fmt is WireFormat.JSON else MsgpackCodec()


class FramePool:
    """A cyclic pool of pre-encoded data frames (WebSocket header included) for one
    subscription set. Rendering costs one ``join``; nothing is encoded at send time."""

    __slots__ = ("_codec", "_frames", "counts", "sizes")

    def __init__(self, codec: JsonCodec | MsgpackCodec, frames: Sequence[tuple[bytes, ...]]):
        if not frames:
            raise ValueError("a pool needs at least one frame")
        self._codec = codec
        self._frames = tuple(frames)
        self.counts = tuple(len(segments) - 1 for segments in self._frames)
        """Messages per frame."""
        self.sizes = tuple(
            sum(map(len, f)) + codec.stamp_width * n
            for f, n in zip(self._frames, self.counts, strict=True)
        )
        """Bytes per frame on the wire."""

    def __len__(self) -> int:
        return len(self._frames)

    def render(self, index: int, stamp: bytes) -> bytes:
        """Frame ``index`` on the wire, every message's ``t`` set to ``stamp``."""
        return stamp.join(self._frames[index])

    def render_first(self, index: int, count: int, stamp: bytes) -> bytes:
        """Frame ``index`` cut to its first ``count`` messages (1 <= count <= its size)."""
        return stamp.join(self._codec.truncate(self._frames[index], count))


def _array_header(count: int) -> bytes:
    packed: bytes = msgpack.Packer().pack_array_header(count)
    return packed


def _json_default(value: object) -> object:
    if isinstance(value, WireTime):
        text = format_ns(value.ns)
        return text[:19] + "Z" if value.whole_seconds else text
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _msgpack_default(value: object) -> object:
    if isinstance(value, WireTime):
        return msgpack.Timestamp.from_unix_nano(value.ns)
    raise TypeError(f"cannot encode {type(value).__name__} as msgpack")
