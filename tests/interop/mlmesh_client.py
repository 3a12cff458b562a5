"""A small, independent Python implementation of the mlmesh wire protocol, version 1.

Written from protocol/SPEC.md alone (section numbers below refer to it), with pyzmq
(libzmq) and msgpack, to prove that a third party can talk to an mlmesh node without
reading the Rust. It provides:

- the envelope: `encode_*` builders and a strict `decode_envelope` (SPEC 3);
- `sender_findings`: SHOULD-level checks of what a peer sent (key order, shortest
  MessagePack formats, no keys of another kind: SPEC 1.4, 3.1, 3.3);
- `request` / `Client`: instructions over a plain, strict libzmq REQ socket (SPEC 5.3);
- `Subscriber`: events over SUB, single envelopes and batch frames (SPEC 5.2);
- `PyNode`: a minimal node (ROUTER + PUB) that serves `sys.describe`, `sys.ping` and
  one echo topic, and publishes `sys.heartbeat` (SPEC 7, 9.5, 10).

No libzmq socket here enables ZMQ_HEARTBEAT_IVL, ZMQ_REQ_RELAXED or ZMQ_REQ_CORRELATE.
"""

import os
import re
import time
import uuid
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import zmq

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_SIZE = 1_048_576  # SPEC 11
ZERO_ID = bytes(16)
IMPLEMENTATION = "mlmesh-py-interop/0.1"

# SPEC 4: the closed table of status codes.
CODES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
    100: "TOO_LARGE",
    101: "NO_RESPONDERS",
    102: "VERSION_MISMATCH",
}
CODE = {name: number for number, name in CODES.items()}


def code_name(code: int) -> str:
    """SPEC 4: a number this version does not know is read as UNKNOWN."""
    return CODES.get(code, "UNKNOWN")


# ---------------------------------------------------------------------------------------
# Names (SPEC 2)

_SEGMENT = re.compile(r"[a-z0-9_]+")


def is_topic(s: Any) -> bool:
    """SPEC 2.1: 1..16 segments of [a-z0-9_], at most 128 bytes."""
    if not isinstance(s, str) or len(s.encode("utf-8")) > 128:
        return False
    segments = s.split(".")
    return len(segments) <= 16 and all(_SEGMENT.fullmatch(seg) for seg in segments)


def literal_prefix(pattern: str) -> str:
    """SPEC 2.2: the part before the first `*` (the ZeroMQ subscription prefix)."""
    star = pattern.find("*")
    return pattern if star < 0 else pattern[:star]


def pattern_matches(pattern: str, topic: str) -> bool:
    """SPEC 2.2: `*` is exactly one segment, a final `**` one or more."""
    p, t = pattern.split("."), topic.split(".")
    if p[-1] == "**":
        head = p[:-1]
        return len(t) > len(head) and all(a in ("*", b) for a, b in zip(head, t))
    return len(p) == len(t) and all(a in ("*", b) for a, b in zip(p, t))


# ---------------------------------------------------------------------------------------
# Ids and time (SPEC 3.2)


def new_id() -> bytes:
    """A UUIDv7 (RFC 9562) as its 16 bytes: 48-bit Unix ms, version, variant, random."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return value.to_bytes(16, "big")


def now_ns() -> int:
    """Unix time in nanoseconds (the envelope's `time`)."""
    return time.time_ns()


def uuid_text(b: bytes) -> str:
    """The hyphenated lowercase form of a 16-byte id (SPEC 3.2)."""
    return str(uuid.UUID(bytes=bytes(b)))


# ---------------------------------------------------------------------------------------
# Payloads (SPEC 3.3)


def pack(value: Any) -> bytes:
    """One MessagePack value; bytes as bin, str as str, dict order kept."""
    return msgpack.packb(value, use_bin_type=True)


class PayloadError(ValueError):
    """A payload that is not exactly one MessagePack value."""


def unpack(data: bytes) -> Any:
    """Exactly one MessagePack value, nothing after it; str keys stay str, bin stays bytes."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # ExtraData, incomplete input, bad UTF-8, ...
        raise PayloadError(f"not one MessagePack value: {e!r}") from e


# ---------------------------------------------------------------------------------------
# The envelope (SPEC 3)

# SPEC 3.1: every key of version 1 in the order senders SHOULD write them, with its type.
KEY_ORDER = ["v", "id", "type", "kind", "source", "time", "seq", "deadline", "re", "status", "data"]
KIND_KEYS = {"event": ["seq"], "request": ["deadline"], "reply": ["re", "status"]}
ALL_KIND_KEYS = {k for keys in KIND_KEYS.values() for k in keys}
UINT_MAX = {"v": 0xFFFF, "time": 2**64 - 1, "seq": 2**64 - 1, "deadline": 2**32 - 1}


def _is_uint(value: Any, maximum: int) -> bool:
    # bool is an int in Python but a different MessagePack type.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def _type_ok(key: str, value: Any) -> bool:
    if key in UINT_MAX:
        return _is_uint(value, UINT_MAX[key])
    if key in ("id", "source", "re", "data"):
        return isinstance(value, bytes)
    if key in ("type", "kind"):
        return isinstance(value, str)
    if key == "status":
        return isinstance(value, _Map)  # maps are read as ordered pairs
    return True


@dataclass
class Status:
    """SPEC 3.5."""

    code: int
    message: str = ""
    field: Optional[str] = None

    @property
    def name(self) -> str:
        return code_name(self.code)

    def to_wire(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"code": self.code}
        if self.message:
            out["message"] = self.message
        if self.field is not None:
            out["field"] = self.field
        return out

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message, "field": self.field}


OK = Status(0)


@dataclass
class Envelope:
    """A decoded envelope. Kind-specific attributes are None where they do not apply."""

    v: int
    id: bytes
    type: str
    kind: str
    source: bytes
    time: int
    data: bytes
    seq: Optional[int] = None
    deadline: Optional[int] = None
    re: Optional[bytes] = None
    status: Optional[Status] = None
    keys: List[str] = dc_field(default_factory=list)  # keys in wire order, for checks

    def payload(self) -> Any:
        return unpack(self.data)


class EnvelopeError(Exception):
    """A rejected envelope, with the status a server would answer (SPEC 3.4, 5.3)."""

    def __init__(
        self, code: str, message: str, field: Optional[str] = None, re_id: bytes = ZERO_ID
    ):
        super().__init__(f"{code}: {message}" + (f" (field {field})" if field else ""))
        self.status = Status(CODE[code], message, field)
        self.re = re_id  # the request's id if it can still be read, else 16 zero bytes


class _Map(list):
    """A MessagePack map as its list of (key, value) pairs, in wire order."""


def _read_pairs(frame: bytes) -> Tuple[Any, bool]:
    """Reads a frame keeping maps as ordered pairs (so repeated keys stay visible).

    Returns (value, clean): clean is False when bytes follow the value. Raises on data
    that is not MessagePack at all.
    """
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False, object_pairs_hook=_Map), True
    except msgpack.ExtraData as e:
        return e.unpacked, False


def peek_id(frame: bytes) -> bytes:
    """SPEC 5.3: the request's `id` if one can still be read, else 16 zero bytes."""
    try:
        value, _ = _read_pairs(frame)
    except Exception:
        return ZERO_ID
    if isinstance(value, _Map):
        for k, v in value:
            if k == "id" and isinstance(v, bytes) and len(v) == 16:
                return v
    return ZERO_ID


def _plain(value: Any) -> Any:
    """_Map pairs -> dict (recursively), for values inside a checked map."""
    if isinstance(value, _Map):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_envelope(frame: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Envelope:
    """Decodes one envelope following SPEC 3.4 step by step; raises EnvelopeError."""
    re_id = peek_id(frame)

    def fail(code: str, message: str, field: Optional[str] = None) -> EnvelopeError:
        return EnvelopeError(code, message, field, re_id)

    # 1. size
    if len(frame) > max_size:
        raise fail("TOO_LARGE", f"frame of {len(frame)} bytes, limit {max_size}")
    # 2. exactly one map with str keys, no repeated key, nothing after it
    try:
        value, clean = _read_pairs(frame)
    except Exception as e:
        raise fail("INVALID_ARGUMENT", f"not MessagePack: {e!r}") from None
    if not clean:
        raise fail("INVALID_ARGUMENT", "bytes after the envelope map")
    if not isinstance(value, _Map):
        raise fail("INVALID_ARGUMENT", f"envelope is a {type(value).__name__}, not a map")
    keys = [k for k, _ in value]
    if not all(isinstance(k, str) for k in keys):
        raise fail("INVALID_ARGUMENT", "envelope map has a key that is not a str")
    if len(set(keys)) != len(keys):
        raise fail("INVALID_ARGUMENT", "envelope map repeats a key")
    m = dict(value)
    # 3. `v` before anything else
    if "v" not in m:
        raise fail("INVALID_ARGUMENT", "no v", "v")
    if not _is_uint(m["v"], 0xFFFF):
        raise fail("INVALID_ARGUMENT", "v is not a uint16", "v")
    if m["v"] != PROTOCOL_VERSION:
        raise fail("VERSION_MISMATCH", f"v = {m['v']}, this node speaks {PROTOCOL_VERSION}")
    # 4. every known key present has its type, whatever the kind
    for key in KEY_ORDER:
        if key in m and not _type_ok(key, m[key]):
            raise fail("INVALID_ARGUMENT", f"{key} has the wrong type", key)
    # 5. required keys present and valid
    for key in ("id", "type", "kind", "source", "time"):
        if key not in m:
            raise fail("INVALID_ARGUMENT", f"no {key}", key)
    for key in ("id", "source"):
        if len(m[key]) != 16:
            raise fail("INVALID_ARGUMENT", f"{key} is not 16 bytes", key)
    if not is_topic(m["type"]):
        raise fail("INVALID_ARGUMENT", f"type {m['type']!r} is not a topic", "type")
    kind = m["kind"]
    if kind not in KIND_KEYS:
        raise fail("INVALID_ARGUMENT", f"kind {kind!r} is not event, request or reply", "kind")
    for key in KIND_KEYS[kind]:
        if key not in m:
            raise fail("INVALID_ARGUMENT", f"a {kind} needs {key}", key)
    if "data" not in m:
        raise fail("INVALID_ARGUMENT", "no data", "data")
    status = None
    if kind == "reply":
        if len(m["re"]) != 16:
            raise fail("INVALID_ARGUMENT", "re is not 16 bytes", "re")
        if not all(isinstance(k, str) for k, _ in m["status"]):
            raise fail("INVALID_ARGUMENT", "status has a key that is not a str", "status")
        s = _plain(m["status"])
        if not _is_uint(s.get("code"), 0xFFFF):
            raise fail("INVALID_ARGUMENT", "status.code missing or not a uint16", "status")
        message, fld = s.get("message", ""), s.get("field")
        if not isinstance(message, str) or (fld is not None and not isinstance(fld, str)):
            raise fail("INVALID_ARGUMENT", "status.message / status.field not str", "status")
        status = Status(s["code"], message, fld)
    return Envelope(
        v=m["v"],
        id=m["id"],
        type=m["type"],
        kind=kind,
        source=m["source"],
        time=m["time"],
        data=m["data"],
        seq=m.get("seq") if kind == "event" else None,
        deadline=m.get("deadline") if kind == "request" else None,
        re=m.get("re") if kind == "reply" else None,
        status=status,
        keys=keys,
    )


def _encode(env: Dict[str, Any]) -> bytes:
    ordered = {k: env[k] for k in KEY_ORDER if k in env}
    return pack(ordered)


def encode_event(
    source: bytes,
    topic: str,
    seq: int,
    data: bytes,
    msg_id: Optional[bytes] = None,
    t: Optional[int] = None,
) -> bytes:
    """An event envelope (the body frame; the topic frame is `topic` itself)."""
    return _encode(
        {
            "v": 1,
            "id": msg_id or new_id(),
            "type": topic,
            "kind": "event",
            "source": source,
            "time": now_ns() if t is None else t,
            "seq": seq,
            "data": data,
        }
    )


def encode_request(
    source: bytes,
    topic: str,
    deadline_ms: int,
    data: bytes,
    msg_id: Optional[bytes] = None,
    t: Optional[int] = None,
) -> bytes:
    return _encode(
        {
            "v": 1,
            "id": msg_id or new_id(),
            "type": topic,
            "kind": "request",
            "source": source,
            "time": now_ns() if t is None else t,
            "deadline": deadline_ms,
            "data": data,
        }
    )


def encode_reply(
    source: bytes,
    topic: str,
    re_id: bytes,
    status: Status,
    data: bytes = b"",
    msg_id: Optional[bytes] = None,
    t: Optional[int] = None,
) -> bytes:
    """A reply; a non-OK reply carries an empty `data` (SPEC 3.3)."""
    if status.code != 0:
        data = b""
    return _encode(
        {
            "v": 1,
            "id": msg_id or new_id(),
            "type": topic,
            "kind": "reply",
            "source": source,
            "time": now_ns() if t is None else t,
            "re": re_id,
            "status": status.to_wire(),
            "data": data,
        }
    )


def sender_findings(frame: bytes, env: Envelope) -> List[str]:
    """What a conforming *sender* does beyond what a receiver may check (SPEC 1.4, 3.1,
    3.3, 3.5): keys in table order, no keys of another kind, no `auth`, shortest
    MessagePack formats (re-encoding reproduces the frame), empty `data` in a non-OK
    reply, a `data` that is exactly one MessagePack value otherwise. Returns findings."""
    out = []
    known = [k for k in env.keys if k in KEY_ORDER]
    if known != [k for k in KEY_ORDER if k in known]:
        out.append(f"keys not in SPEC 3.1 order: {env.keys}")
    unknown = [k for k in env.keys if k not in KEY_ORDER]
    if unknown:
        out.append(f"keys unknown to version 1 sent: {unknown}")
    foreign = [k for k in env.keys if k in ALL_KIND_KEYS and k not in KIND_KEYS[env.kind]]
    if foreign:
        out.append(f"a {env.kind} carries keys of another kind: {foreign}")
    value, _ = _read_pairs(frame)
    if pack(_plain(value)) != frame:
        out.append("frame is not in the shortest MessagePack formats (re-encoding differs)")
    if env.kind == "reply" and env.status is not None and env.status.code != 0:
        if env.data != b"":
            out.append(f"non-OK reply carries data {env.data.hex()} (SHOULD be empty)")
    else:
        try:
            unpack(env.data)
        except PayloadError as e:
            out.append(f"data is not one MessagePack value: {e}")
    if env.kind == "reply" and env.status is not None:
        status_keys = [k for k, _ in dict(value)["status"]]
        if status_keys != [k for k in ("code", "message", "field") if k in status_keys]:
            out.append(f"status keys not in SPEC 3.5 order: {status_keys}")
        if env.status.code == 0 and "message" in status_keys:
            out.append("OK status carries a message (SHOULD be omitted)")
    return out


# ---------------------------------------------------------------------------------------
# Events (SPEC 5.2)


class EventFrameError(Exception):
    """An event message a receiver MUST drop."""


def decode_event_message(
    frames: List[bytes], max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> Tuple[str, List[Envelope], bool]:
    """[topic][body] -> (topic, envelopes, is_batch). Raises EventFrameError."""
    if len(frames) != 2:
        raise EventFrameError(f"{len(frames)} frames, not 2")
    topic_frame, body = frames
    try:
        topic = topic_frame.decode("utf-8")
    except UnicodeDecodeError:
        raise EventFrameError("topic frame is not UTF-8") from None
    if not is_topic(topic):
        raise EventFrameError(f"topic frame {topic!r} is not a topic")
    if len(body) > max_size:
        raise EventFrameError("body over the size limit")
    if not body:
        raise EventFrameError("empty body")
    first = body[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        parts, batch = [body], False
    elif 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        parts, batch = split_batch(body), True
        if not parts:
            raise EventFrameError("empty batch")
    else:
        raise EventFrameError(f"body starts with 0x{first:02x}: neither a map nor an array")
    envs = []
    for part in parts:
        try:
            env = decode_envelope(part, max_size)
        except EnvelopeError as e:
            raise EventFrameError(f"envelope rejected: {e}") from None
        if env.kind != "event":
            raise EventFrameError(f"a {env.kind} on the event path")
        if env.type != topic:
            raise EventFrameError(f"envelope type {env.type!r} differs from topic frame {topic!r}")
        envs.append(env)
    if len({e.source for e in envs}) != 1:
        raise EventFrameError("batch mixes sources")
    return topic, envs, batch


def split_batch(body: bytes) -> List[bytes]:
    """The raw bytes of each element of a MessagePack array, without re-encoding them."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(body) + 16)
    unpacker.feed(body)
    try:
        n = unpacker.read_array_header()
        parts = []
        start = unpacker.tell()
        for _ in range(n):
            unpacker.skip()
            end = unpacker.tell()
            parts.append(body[start:end])
            start = end
    except Exception as e:
        raise EventFrameError(f"batch does not decode: {e!r}") from None
    if start != len(body):
        raise EventFrameError("bytes after the batch array")
    return parts


class Subscriber:
    """A SUB socket on one or more PUB endpoints, subscribed to byte prefixes."""

    def __init__(self, ctx: Optional[zmq.Context] = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)

    def connect(self, endpoint: str) -> "Subscriber":
        self.sock.connect(endpoint)
        return self

    def subscribe(self, prefix: str) -> "Subscriber":
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("utf-8"))
        return self

    def recv(self, timeout_ms: int) -> Optional[Tuple[str, List[Envelope], bool]]:
        """The next event message (decoded; may raise EventFrameError), or None on timeout."""
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return decode_event_message(self.sock.recv_multipart())

    def recv_raw(self, timeout_ms: int) -> Optional[List[bytes]]:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(0)


def subscribe(
    pub_endpoint: str, prefixes: List[str], ctx: Optional[zmq.Context] = None
) -> Subscriber:
    """A SUB connected to `pub_endpoint` with each prefix subscribed (SPEC 5.2)."""
    sub = Subscriber(ctx).connect(pub_endpoint)
    for p in prefixes:
        sub.subscribe(p)
    return sub


# ---------------------------------------------------------------------------------------
# Instructions, client side (SPEC 5.3, 9.3)


class RequestTimeout(Exception):
    """No reply by the deadline; the REQ socket is now unusable (lazy pirate: close it)."""


@dataclass
class Reply:
    envelope: Envelope
    frame: bytes
    request_id: bytes

    @property
    def status(self) -> Status:
        assert self.envelope.status is not None
        return self.envelope.status

    @property
    def ok(self) -> bool:
        return self.status.code == 0

    def payload(self) -> Any:
        """The result of an OK reply (SPEC 3.3: never decode a non-OK reply's data)."""
        if not self.ok:
            raise ValueError(f"no payload in a {self.status.name} reply")
        return self.envelope.payload()


class Client:
    """One strict libzmq REQ socket connected to one rpc endpoint.

    REQ enforces send/recv alternation, so a server that answered a request twice or not
    at all shows here: a reply whose `re` is not the request's `id` raises, and a missing
    one times out.
    """

    def __init__(
        self, rpc_endpoint: str, source: Optional[bytes] = None, ctx: Optional[zmq.Context] = None
    ):
        self.ctx = ctx or zmq.Context.instance()
        self.source = source or new_id()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(rpc_endpoint)

    def send_frame(self, frame: bytes, timeout_ms: int) -> Tuple[bytes, Envelope]:
        """Sends one raw request frame; returns the reply frame and its envelope."""
        self.sock.send(frame)  # REQ puts the empty delimiter frame in front
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            raise RequestTimeout(f"no reply within {timeout_ms} ms")
        parts = self.sock.recv_multipart()  # REQ strips the delimiter
        if len(parts) != 1:
            raise EnvelopeError(
                "INVALID_ARGUMENT", f"reply of {len(parts)} frames after the delimiter"
            )
        env = decode_envelope(parts[0])
        if env.kind != "reply":
            raise EnvelopeError(
                "INVALID_ARGUMENT", f"a {env.kind} came back on the REQ socket", "kind"
            )
        return parts[0], env

    def request(self, topic: str, payload: Any, deadline_ms: int = 5000) -> Reply:
        data = payload if isinstance(payload, bytes) else pack(payload)
        msg_id = new_id()
        frame = encode_request(self.source, topic, deadline_ms, data, msg_id)
        reply_frame, env = self.send_frame(frame, deadline_ms)
        if env.re != msg_id:
            raise EnvelopeError(
                "INVALID_ARGUMENT",
                f"reply re {env.re.hex()} is not the request id {msg_id.hex()}",
                "re",
            )
        if env.type != topic:
            raise EnvelopeError(
                "INVALID_ARGUMENT",
                f"reply type {env.type!r} is not the request's {topic!r}",
                "type",
            )
        return Reply(env, reply_frame, msg_id)

    def close(self) -> None:
        self.sock.close(0)


def request(rpc_endpoint: str, topic: str, payload: Any, deadline_ms: int = 5000) -> Reply:
    """One instruction on a fresh REQ socket: `payload` is a Python value (or bytes, sent
    as already-encoded MessagePack). Raises RequestTimeout at the deadline."""
    client = Client(rpc_endpoint)
    try:
        return client.request(topic, payload, deadline_ms)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------
# A minimal node (SPEC 5.1, 7, 9.5, 10)


class PyNode:
    """Binds a ROUTER and a PUB on loopback, serves `sys.describe`, `sys.ping` and an echo
    topic, and publishes `sys.heartbeat` every interval (plus, optionally, a tick event
    and a batch frame of three events).

    It is deliberately minimal: it keeps no peer table, so it neither dials the nodes
    that describe it (SPEC 6.4 `caller`, a SHOULD) nor subscribes to anyone; its
    Describe omits the optional `roles` and `peers`.

    `log(dict)` is called for each request received, with what was checked about it.
    """

    def __init__(
        self,
        name: str,
        mesh: str,
        heartbeat_ms: int = 1000,
        echo_topic: str = "py.echo",
        tick_topic: Optional[str] = None,
        batch_topic: Optional[str] = None,
        host: str = "127.0.0.1",
        log=None,
    ):
        self.id = new_id()
        self.name, self.mesh = name, mesh
        self.heartbeat_ms = heartbeat_ms
        self.echo_topic = echo_topic
        self.tick_topic = tick_topic
        self.batch_topic = batch_topic
        self.started_ms = time.time_ns() // 1_000_000
        self.seqs: Dict[str, int] = {}
        self.log = log or (lambda record: None)
        self.ctx = zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(f"tcp://{host}:*")
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://{host}:*")
        self.rpc_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- events --------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any) -> int:
        """Publishes one event; returns its seq (SPEC 8.1: per topic, from 1)."""
        seq = self.seqs.get(topic, 0) + 1
        self.seqs[topic] = seq
        frame = encode_event(self.id, topic, seq, pack(payload))
        self.pub.send_multipart([topic.encode("utf-8"), frame])
        return seq

    def publish_batch(self, topic: str, payloads: List[Any]) -> List[int]:
        """Publishes several events of one topic as one batch frame (SPEC 5.2: a
        MessagePack array of envelopes, in order); returns their seqs."""
        seqs, parts = [], []
        for payload in payloads:
            seq = self.seqs.get(topic, 0) + 1
            self.seqs[topic] = seq
            seqs.append(seq)
            parts.append(encode_event(self.id, topic, seq, pack(payload)))
        header = msgpack.Packer().pack_array_header(len(parts))
        self.pub.send_multipart([topic.encode("utf-8"), header + b"".join(parts)])
        return seqs

    def heartbeat(self, leaving: bool = False) -> None:
        hb: Dict[str, Any] = {
            "interval_ms": self.heartbeat_ms,
            "name": self.name,
            "mesh": self.mesh,
        }
        if leaving:
            hb["leaving"] = True
        self.publish("sys.heartbeat", hb)

    # -- instructions --------------------------------------------------------------------

    def describe(self) -> Dict[str, Any]:
        """SPEC 10.3 Describe, fields in table order, optional ones with defaults omitted."""
        return {
            "id": self.id,
            "name": self.name,
            "mesh": self.mesh,
            "protocol": PROTOCOL_VERSION,
            "version": IMPLEMENTATION,
            "serves": [{"topic": self.echo_topic}],  # schema 1 is the default, omitted
            "endpoints": {"pub": self.pub_endpoint, "rpc": self.rpc_endpoint},
            "heartbeat_ms": self.heartbeat_ms,
            "started_ms": self.started_ms,
        }

    def answer(self, frame: bytes) -> Tuple[bytes, Dict[str, Any]]:
        """The reply frame to one request frame (SPEC 9.5 order), and a log record."""
        received = time.monotonic()
        record: Dict[str, Any] = {"request": None}
        try:
            env = decode_envelope(frame)
        except EnvelopeError as e:
            record.update(error=str(e), status=e.status.to_json())
            return encode_reply(self.id, "sys.error", e.re, e.status), record
        record.update(
            request=env.type,
            kind=env.kind,
            source=uuid_text(env.source),
            deadline=env.deadline,
            findings=sender_findings(frame, env),
        )

        def reply(status: Status, data: bytes = b"") -> bytes:
            record["status"] = status.to_json()
            return encode_reply(self.id, env.type, env.id, status, data)

        if env.kind != "request":
            return (
                reply(Status(CODE["INVALID_ARGUMENT"], f"a {env.kind} on the rpc socket", "kind")),
                record,
            )
        if env.type not in ("sys.describe", "sys.ping", self.echo_topic):
            return (
                reply(
                    Status(CODE["UNIMPLEMENTED"], f"{self.name} does not serve {env.type}", "type")
                ),
                record,
            )
        if env.deadline is not None and (time.monotonic() - received) * 1000 >= env.deadline:
            return (
                reply(Status(CODE["DEADLINE_EXCEEDED"], "deadline passed before the work started")),
                record,
            )
        try:
            payload = unpack(env.data)
        except PayloadError as e:
            return reply(Status(CODE["INVALID_ARGUMENT"], str(e), "data")), record
        if env.type.startswith("sys.") and not isinstance(payload, dict):
            # SPEC 10.1: "a request payload of {} means any map"
            return reply(Status(CODE["INVALID_ARGUMENT"], "the payload is not a map")), record
        if env.type == "sys.ping":
            return reply(OK, pack({"time": now_ns()})), record
        if env.type == "sys.describe":
            caller = payload.get("caller")
            if caller is not None:
                record["caller"] = {
                    "name": caller.get("name"),
                    "endpoints": caller.get("endpoints"),
                }
            return reply(OK, pack(self.describe())), record
        record["echo"] = payload if not isinstance(payload, bytes) else payload.hex()
        return reply(OK, env.data), record

    def serve(self, seconds: float, on_tick=None) -> None:
        """Runs for `seconds`: answers requests, heartbeats every interval (from start)."""
        end = time.monotonic() + seconds
        next_beat = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if now >= next_beat:
                self.heartbeat()
                if self.tick_topic:
                    self.publish(self.tick_topic, {"n": self.seqs.get(self.tick_topic, 0) + 1})
                if self.batch_topic:
                    n = self.seqs.get(self.batch_topic, 0)
                    self.publish_batch(self.batch_topic, [{"n": n + 1}, {"n": n + 2}, {"n": n + 3}])
                if on_tick:
                    on_tick()
                next_beat += self.heartbeat_ms / 1000
                continue
            timeout = max(0, min(next_beat, end) - now)
            if dict(poller.poll(int(timeout * 1000) + 1)).get(self.router):
                frames = self.router.recv_multipart()
                # [identity][empty][request]: the last frame is the request, every frame
                # before it goes back unchanged (SPEC 5.3).
                route, frame = frames[:-1], frames[-1]
                out, record = self.answer(frame)
                # SPEC 5.3: a DEALER client MUST send the empty delimiter frame itself.
                record["delimiter"] = len(route) >= 2 and route[-1] == b""
                self.router.send_multipart(route + [out])
                self.log(record)

    def close(self, leaving: bool = True) -> None:
        """Closes the sockets; with `leaving`, first says goodbye (SPEC 7) and gives the
        PUB up to a second to put it on the wire."""
        self.router.close(0)
        if leaving:
            self.heartbeat(leaving=True)
            self.pub.close(1000)
        else:
            self.pub.close(0)


# ---------------------------------------------------------------------------------------
# SPEC 14: test vectors in SPEC.md


def spec_vectors(spec_text: str) -> Dict[str, Dict[str, Any]]:
    """Every ```hex name=...``` block: {name: {"bytes": b, "attrs": {...}}}."""
    out = {}
    for m in re.finditer(r"^```hex ([^\n]*)\n(.*?)^```", spec_text, re.S | re.M):
        attrs = dict(a.split("=", 1) for a in m.group(1).split())
        out[attrs["name"]] = {"bytes": bytes.fromhex(m.group(2)), "attrs": attrs}
    return out
