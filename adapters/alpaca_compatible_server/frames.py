"""Wire encoding: JSON or msgpack, and pre-encoded data frames with a patched send timestamp.

Every data message (quote, trade) is encoded once with its ``t`` key LAST and a fixed-width
placeholder in it. A frame of such messages is stored complete with its WebSocket frame header
(server frames are unmasked, and no extension is ever negotiated) as the byte segments around
the placeholders. At send time the wire bytes are one C-level join (plus one ``replace`` for
msgpack) with a per-frame :class:`FrameStamp`; widths are fixed, so the header's length stays
right. **Every message gets its own** ``t``: the stamp fills the time down to a step (JSON:
100 ns, msgpack: 256 ns) and each message's last digits are baked into its template by its
position in the frame, so the messages of a frame carry distinct, increasing times, and a
session's frames get stamps one step apart at least (see :meth:`Codec.stamps`):

- JSON: ``"2026-11-25T17:00:00.1234567NNZ"`` (30 characters, 9 fraction digits, always; the
  stamp is the first 27, ``NN`` the message's baked nanoseconds): distinct for up to 100
  messages per frame;
- msgpack: a Timestamp ext (type -1) in the 15-byte timestamp96 form ``c7 0c ff`` + nanoseconds
  (uint32) + seconds (int64), which every msgpack decoder reads as a Timestamp; the stamp fills
  the nanoseconds' three high bytes and the seconds, the low byte is baked: distinct for up to
  256 messages per frame.

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
"""Characters of ``t`` in JSON (the stamp fills the first 27, the message the rest)."""
MSGPACK_STAMP_WIDTH: Final = 15
"""Bytes of the timestamp96 ext in msgpack."""
JSON_STEP_NS: Final = 100
MSGPACK_STEP_NS: Final = 256
_JSON_FILLED: Final = 27  # "YYYY-MM-DDTHH:MM:SS." + 7 fraction digits
_JSON_PLACEHOLDER: Final = "~" * _JSON_FILLED
_MSGPACK_HEAD: Final = b"\xc7\x0c\xff"  # ext 8, 12 bytes, type -1: timestamp96
_MSGPACK_NS_MARK: Final = b"\x3f\xfe\xfd"  # the three high nanosecond bytes, until stamped
_MSGPACK_SEC_MARK: Final = b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"
"""Stands for the seconds until stamped (``replace``): 8 distinct decreasing bytes, so it has
no border and cannot occur across the stamp; a template where it occurs elsewhere is refused."""
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


FrameStamp = bytes | tuple[bytes, bytes]
"""What :meth:`FramePool.render` fills in: JSON the 27 leading characters of ``t``; msgpack the
nanoseconds' high bytes (with the ext header) and the seconds."""


class Codec(ABC, Generic[S]):
    """One wire format: ``S`` is what ``send_message`` takes for it, ``str`` for JSON (text
    frames), ``bytes`` for msgpack (binary frames)."""

    format: WireFormat
    opcode: int
    stamp_width: int

    step_ns: int

    @abstractmethod
    def stamp(self, ts_ns: int) -> FrameStamp:
        """The frame stamp for ``ts_ns`` (rounded down to :attr:`step_ns`); a message at
        position ``i`` of the frame then carries ``ts_ns - ts_ns % step + baked(i)``."""

    def stamps(self, now_ns: int, frames: int, last_ns: int) -> tuple[list[FrameStamp], int]:
        """Stamps for ``frames`` frames written together at ``now_ns``: one step apart, ending
        at the last step not after ``now_ns`` unless that would not follow ``last_ns`` (the
        session's previous frame: per-symbol order across writes). Returns them and the last
        frame's time."""
        step = self.step_ns
        start = now_ns - now_ns % step - frames * step  # the last message not after now
        start = max(start, last_ns + step)
        last = start + (frames - 1) * step
        seconds, nanos = divmod(start, NS_PER_SECOND)
        if last // NS_PER_SECOND == seconds:  # the common case: all in one second
            return self._stamps_within(seconds, nanos, frames), last
        return [self.stamp(start + j * step) for j in range(frames)], last

    def _stamps_within(self, seconds: int, nanos: int, frames: int) -> list[FrameStamp]:
        step = self.step_ns
        return [self.stamp(seconds * NS_PER_SECOND + nanos + j * step) for j in range(frames)]

    @abstractmethod
    def render(self, segments: tuple[bytes, ...], stamp: FrameStamp) -> bytes:
        """The frame on the wire."""

    @abstractmethod
    def baked(self, index: int, count: int) -> bytes:
        """What message ``index`` of a frame of ``count`` carries after the stamp."""

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
    def _payload_segments(self, prefixes: Sequence[bytes], baked: Sequence[bytes]) -> list[bytes]:
        """The payload of a frame of messages, as the segments around their stamps."""

    @abstractmethod
    def _truncate_payload(self, segments: Sequence[bytes], count: int, total: int) -> list[bytes]:
        """The payload segments of the same frame (of ``total`` messages) holding only its
        first ``count`` messages."""

    def control(self, message: Message) -> S:
        """A control message, alone in an array of length 1, as Alpaca sends them."""
        return self.encode([message])

    def template(self, messages: Sequence[Message]) -> tuple[bytes, ...]:
        """A frame of ``messages`` (without ``t``: it is added as the last key), header
        included, as segments: ``stamp(ns).join(segments)`` is the frame on the wire."""
        if not messages:
            raise ValueError("a frame needs at least one message")
        n = len(messages)
        prefixes = [self._message_prefix(m) for m in messages]
        segments = self._payload_segments(prefixes, [self.baked(i, n) for i in range(n)])
        framed = self._framed(segments, n)
        self._check_template(framed, n)
        return framed

    def _check_template(self, segments: tuple[bytes, ...], messages: int) -> None:
        """Raises ``ValueError`` when the template cannot be stamped safely."""

    def truncate(self, segments: tuple[bytes, ...], count: int) -> tuple[bytes, ...]:
        """The segments of a :meth:`template` frame cut to its first ``count`` messages."""
        messages = len(segments) - 1
        if not 1 <= count <= messages:
            raise ValueError(f"count must be within 1..{messages}, got {count}")
        length_code = segments[0][1] & 0x7F  # unmasked server frame: 2, 4 or 10 header bytes
        header = 2 if length_code < 126 else 4 if length_code == 126 else 10
        payload = [segments[0][header:], *segments[1:]]
        return self._framed(self._truncate_payload(payload, count, messages), count)

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
    stamp_width = _JSON_FILLED
    step_ns = JSON_STEP_NS

    def stamp(self, ts_ns: int) -> bytes:
        return format_ns(ts_ns)[:_JSON_FILLED].encode()

    def _stamps_within(self, seconds: int, nanos: int, frames: int) -> list[FrameStamp]:
        prefix = format_ns(seconds * NS_PER_SECOND)[:20].encode()  # "YYYY-MM-DDTHH:MM:SS."
        first = nanos // JSON_STEP_NS
        return [b"%s%07d" % (prefix, x) for x in range(first, first + frames)]

    def render(self, segments: tuple[bytes, ...], stamp: FrameStamp) -> bytes:
        assert isinstance(stamp, bytes)
        return stamp.join(segments)

    def baked(self, index: int, count: int) -> bytes:
        return b"%02dZ" % (index * JSON_STEP_NS // count)

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

    def _payload_segments(self, prefixes: Sequence[bytes], baked: Sequence[bytes]) -> list[bytes]:
        middle = (baked[i - 1] + b'"},' + prefixes[i] for i in range(1, len(prefixes)))
        return [b"[" + prefixes[0], *middle, baked[-1] + b'"}]']

    def _truncate_payload(self, segments: Sequence[bytes], count: int, total: int) -> list[bytes]:
        return [*segments[:count], self.baked(count - 1, total) + b'"}]']


class MsgpackCodec(Codec[bytes]):
    """msgpack in binary frames; ``t`` is a Timestamp ext. JSON text from the client is accepted
    too."""

    format = WireFormat.MSGPACK
    opcode = _OPCODE_BINARY
    stamp_width = len(_MSGPACK_HEAD) + 3
    step_ns = MSGPACK_STEP_NS

    def stamp(self, ts_ns: int) -> tuple[bytes, bytes]:
        seconds, nanos = divmod(ts_ns, NS_PER_SECOND)
        return _MSGPACK_HEAD + (nanos >> 8).to_bytes(3, "big"), _PACK_U64(seconds)

    def _stamps_within(self, seconds: int, nanos: int, frames: int) -> list[FrameStamp]:
        packed = _PACK_U64(seconds)  # one object: the pool's per-second cache keys on it
        first = nanos >> 8
        return [
            (_MSGPACK_HEAD + x.to_bytes(3, "big"), packed) for x in range(first, first + frames)
        ]

    def render(self, segments: tuple[bytes, ...], stamp: FrameStamp) -> bytes:
        assert isinstance(stamp, tuple)
        head, seconds = stamp
        return head.join(segments).replace(_MSGPACK_SEC_MARK, seconds)

    def baked(self, index: int, count: int) -> bytes:
        return bytes((index * MSGPACK_STEP_NS // count,)) + _MSGPACK_SEC_MARK

    def _check_template(self, segments: tuple[bytes, ...], messages: int) -> None:
        probe = (_MSGPACK_HEAD + _MSGPACK_NS_MARK).join(segments)
        if probe.count(_MSGPACK_SEC_MARK) != messages:
            raise ValueError("the seconds mark occurs in the data: cannot stamp this frame")

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
        # The value of "t" is left out: an ext whose bytes the frame's segments provide.
        encoded = self.encode({**message, "t": None})
        if not encoded.endswith(b"\xa1t\xc0"):
            raise ValueError(f"'t' must be absent or the last key: {message!r}")
        return encoded[:-1]

    def _payload_segments(self, prefixes: Sequence[bytes], baked: Sequence[bytes]) -> list[bytes]:
        middle = (baked[i - 1] + prefixes[i] for i in range(1, len(prefixes)))
        return [_array_header(len(prefixes)) + prefixes[0], *middle, baked[-1]]

    def _truncate_payload(self, segments: Sequence[bytes], count: int, total: int) -> list[bytes]:
        first = segments[0][len(_array_header(total)) :]
        return [_array_header(count) + first, *segments[1:count], self.baked(count - 1, total)]


def codec_for(fmt: WireFormat) -> JsonCodec | MsgpackCodec:
    return JsonCodec() if fmt is WireFormat.JSON else MsgpackCodec()


class FramePool:
    """A cyclic pool of pre-encoded data frames (WebSocket header included) for one
    subscription set. Rendering costs one ``join``; nothing is encoded at send time."""

    __slots__ = ("_by_second", "_codec", "_frames", "_seconds", "counts", "sizes")

    def __init__(self, codec: JsonCodec | MsgpackCodec, frames: Sequence[tuple[bytes, ...]]):
        if not frames:
            raise ValueError("a pool needs at least one frame")
        self._codec = codec
        self._frames = tuple(frames)
        self._seconds: bytes | None = None
        self._by_second: dict[int, tuple[bytes, ...]] = {}
        """msgpack: the frames with this second's bytes in place of the mark, made on first use
        in each second, so that rendering is one join, as for JSON."""
        self.counts = tuple(len(segments) - 1 for segments in self._frames)
        """Messages per frame."""
        self.sizes = tuple(
            sum(map(len, f)) + codec.stamp_width * n
            for f, n in zip(self._frames, self.counts, strict=True)
        )
        """Bytes per frame on the wire."""

    def __len__(self) -> int:
        return len(self._frames)

    def render(self, index: int, stamp: FrameStamp) -> bytes:
        """Frame ``index`` on the wire, its messages' ``t`` from ``stamp``."""
        if isinstance(stamp, bytes):
            return stamp.join(self._frames[index])
        head, seconds = stamp
        if seconds is not self._seconds:
            if seconds != self._seconds:
                self._by_second = {}
            self._seconds = seconds
        segments = self._by_second.get(index)
        if segments is None:
            segments = tuple(s.replace(_MSGPACK_SEC_MARK, seconds) for s in self._frames[index])
            self._by_second[index] = segments
        return head.join(segments)

    def render_first(self, index: int, count: int, stamp: FrameStamp) -> bytes:
        """Frame ``index`` cut to its first ``count`` messages (1 <= count <= its size)."""
        return self._codec.render(self._codec.truncate(self._frames[index], count), stamp)


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
