#!/usr/bin/env python3
"""A second reader of FEDL frames and messages, written from Protocol.md sections 1, 2 and 5 alone.

It checks the frame vectors: every valid one parses into a message that it writes back to the
same bytes (so every field is accounted for), each MODEL_SHARD's SHA-256 is its decoded shard's
(with decode_shard.py), and every invalid one is refused with its ERROR code.
Usage: read_frames.py vectors.json  (exit status 0 when every vector agrees)
"""
import hashlib
import json
import struct
import sys
import zlib

sys.dont_write_bytecode = True  # no __pycache__ inside the Swift test target
import decode_shard  # noqa: E402

MAX_FRAME, MAX_MESSAGE = 1 << 20, 64 << 20
NAMES = {1: "HELLO", 2: "CHALLENGE", 3: "AUTHENTICATE", 4: "WELCOME", 5: "MODEL_SHARD", 6: "TRAINING_TASK",
         7: "UPDATE", 8: "ACKNOWLEDGEMENT", 9: "ERROR", 10: "HEARTBEAT", 11: "GOODBYE", 12: "DECLINE"}


class Refused(Exception):
    def __init__(self, code, why):
        super().__init__(f"{code}: {why}")
        self.code = code


class Reader:
    """Reads the primitives of section 2 from a payload; running short is malformed (6)."""

    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise Refused(6, "payload ends early")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def u8(self): return self.take(1)[0]
    def u16(self): return struct.unpack("<H", self.take(2))[0]
    def u32(self): return struct.unpack("<I", self.take(4))[0]
    def u64(self): return struct.unpack("<Q", self.take(8))[0]
    def f32(self): return struct.unpack("<f", self.take(4))[0]
    def bytes_(self): return self.take(self.u32())

    def str_(self):
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(6, "invalid UTF-8")


def parse(kind, payload, version):
    """The message's fields, in order, as (layout letter, value) pairs; see write()."""
    r = Reader(payload)
    f = []
    if kind == 1:
        f += [("s", r.str_())]
        n = r.u16(); f += [("H", n)] + [("B", r.u8()) for _ in range(n)]
        m = r.u16(); f += [("H", m)] + [("s", r.str_()) for _ in range(m)]
        f += [("Q", r.u64()), ("I", r.u32())]
    elif kind == 2:
        f += [("raw", r.take(32)), ("B", r.u8())]
    elif kind == 3:
        f += [("raw", r.take(64))]
    elif kind == 4:
        f += [("Q", r.u64()), ("I", r.u32()), ("s", r.str_())]
        if version >= 2:
            f += [("I", r.u32()), ("I", r.u32())]
    elif kind == 5:
        f += [("I", r.u32()), ("I", r.u32()), ("H", r.u16()), ("raw", r.take(32)), ("bytes", r.bytes_())]
    elif kind == 6:
        f += [("I", r.u32()), ("I", r.u32())]
        k = r.u16(); f += [("H", k)] + [("H", r.u16()) for _ in range(k)]
        f += [("H", r.u16()), ("H", r.u16()), ("raw", r.take(4)), ("s", r.str_()), ("I", r.u32())]
        if version >= 4:
            # Warm starts (section 8.6): shard, rank, columns, then columns x rank binary32.
            m = r.u16(); f += [("H", m)]
            for _ in range(m):
                shard, rank, columns = r.u16(), r.u16(), r.u32()
                if columns * rank * 4 > len(payload) - r.at:
                    raise Refused(6, "warm start declares more values than follow")
                f += [("H", shard), ("H", rank), ("I", columns), ("raw", r.take(columns * rank * 4))]
    elif kind == 7:
        f += [("I", r.u32()), ("I", r.u32()), ("I", r.u32()), ("raw", r.take(4))]
        k = r.u16(); f += [("H", k)]
        for _ in range(k):
            f += [("H", r.u16()), ("bytes", r.bytes_())]
    elif kind == 8:
        f += [("B", r.u8()), ("I", r.u32())]
    elif kind == 9:
        f += [("H", r.u16()), ("s", r.str_())]
    elif kind == 10:
        f += [("Q", r.u64())]
    elif kind == 11:
        if version >= 2:
            f += [("B", r.u8())]
        f += [("s", r.str_())]
    elif kind == 12 and version >= 3:
        f += [("I", r.u32()), ("H", r.u16()), ("s", r.str_())]
    else:
        raise Refused(5, f"message type {kind}")
    if r.at != len(payload):
        raise Refused(6, f"{len(payload) - r.at} bytes after the layout")
    return f


def write(fields):
    out = b""
    for kind, value in fields:
        if kind == "s":
            raw = value.encode("utf-8"); out += struct.pack("<H", len(raw)) + raw
        elif kind == "bytes":
            out += struct.pack("<I", len(value)) + value
        elif kind == "raw":
            out += value
        else:
            out += struct.pack("<" + kind, value)
    return out


def frame(version, kind, flags, payload):
    return b"FEDL" + struct.pack("<BBHII", version, kind, flags, len(payload), zlib.crc32(payload)) + payload


def read(data, version, frame_limit=MAX_FRAME):
    """Splits `data` into messages on a connection speaking `version`: a list of
    (type, payload, frames) or Refused with the ERROR code of section 5."""
    messages, at, pending = [], 0, None
    while at < len(data):
        head = data[at:at + 4]
        if head != b"FEDL"[:len(head)]:
            raise Refused(1, "magic")  # told from the first bytes, before a whole header
        if len(data) - at < 16:
            raise Refused(6, "frame cut short")
        v, kind, flags, length, crc = struct.unpack_from("<BBHII", data, at + 4)
        if v not in (1, 2, 3, 4) or v != version:
            raise Refused(2, f"frame version {v}")
        if flags & ~1:
            raise Refused(16 if version >= 2 else 6, "unknown flag bits")
        if length > MAX_FRAME:
            raise Refused(3, "frame too large")
        payload = data[at + 16:at + 16 + length]
        if len(payload) < length:
            raise Refused(6, "payload cut short")
        if zlib.crc32(payload) != crc:
            raise Refused(4, "CRC-32")
        at += 16 + length
        if pending is not None:
            if pending[0] != kind:
                raise Refused(17 if version >= 2 else 6, "frame of another type inside a continued message")
            pending = (kind, pending[1] + payload, pending[2] + 1)
        else:
            pending = (kind, payload, 1)
        if len(pending[1]) > MAX_MESSAGE:
            raise Refused(7, "message too large")
        if not flags & 1:
            messages.append(pending)
            pending = None
    return messages


def main(path):
    with open(path) as file:
        vectors = json.load(file)
    failures = []
    for vector in vectors["frames"]:
        data, version = bytes.fromhex(vector["bytes"]), vector["version"]
        try:
            messages = read(data, version)
            if len(messages) != 1:
                raise Refused(0, f"{len(messages)} messages")
            kind, payload, count = messages[0]
            fields = parse(kind, payload, version)
        except Refused as error:
            failures.append(f"{vector['name']}: refused: {error}")
            continue
        limit = vector.get("frame_limit") or MAX_FRAME
        rewritten = write(fields)
        chunks = [rewritten[i:i + limit] for i in range(0, len(rewritten), limit)] or [b""]
        again = b"".join(frame(version, kind, 1 if i < len(chunks) - 1 else 0, c) for i, c in enumerate(chunks))
        if again != data:
            failures.append(f"{vector['name']}: written back differently")
        if kind == 5:
            digest, encoded = fields[3][1], fields[4][1]
            count = struct.unpack_from("<I", encoded, 12)[0]
            values = decode_shard.decode(encoded, count)
            if hashlib.sha256(values.astype("<f4").tobytes()).digest() != digest:
                failures.append(f"{vector['name']}: SHA-256 is not the decoded shard's")
    for vector in vectors["invalid_frames"]:
        try:
            for kind, payload, _ in read(bytes.fromhex(vector["bytes"]), vector["version"]):
                parse(kind, payload, vector["version"])
            failures.append(f"{vector['name']}: accepted, expected code {vector['code']}")
        except Refused as error:
            if error.code != vector["code"]:
                failures.append(f"{vector['name']}: refused with {error.code}, expected {vector['code']}")
    for line in failures:
        print("MISMATCH", line)
    if failures:
        return 1
    print(f"all frame vectors agree: {len(vectors['frames'])} frames read and written back, "
          f"{len(vectors['invalid_frames'])} invalid ones refused with their codes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "vectors.json"))
