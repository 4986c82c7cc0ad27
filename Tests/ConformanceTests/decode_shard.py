#!/usr/bin/env python3
"""A second decoder of the encoded-shard format, written from Protocol.md section 8 alone.

It is the suite's check that the text suffices: it shares no code with the Swift decoder.
Usage: decode_shard.py vectors.json  (exit status 0 when every vector agrees)
"""
import hashlib
import json
import struct
import sys
import zlib

import numpy as np

CODECS = {0: "fp32", 1: "fp16", 2: "q8", 3: "q4", 4: "q2", 5: "sign"}
BITS = {"q8": 8, "q4": 4, "q2": 2, "sign": 1}


class ShardError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def value_section_length(codec, k, g):
    if codec == "fp32":
        return 4 * k
    if codec == "fp16":
        return 2 * k
    bits = BITS[codec]
    per_group = 4 if codec == "sign" else 8
    full, last = divmod(k, g)
    groups = full + (1 if last else 0)
    return groups * per_group + full * ((g * bits + 7) // 8) + (last * bits + 7) // 8


def varint_length(indices):
    total, previous = 0, -1
    for index in indices:
        delta = index - previous
        previous = index
        total += 1 if delta < 1 << 7 else 2 if delta < 1 << 14 else 3 if delta < 1 << 21 else 4 if delta < 1 << 28 else 5
    return total


def decode(data, n_expected, mask=None, columns=None):
    """Returns the n decoded values as a float32 array, or raises ShardError. `mask` is the
    pruning mask the receiver holds (ascending kept positions), if any; `columns` the columns
    of the matrix when the receiver accepts low-rank factors for this shard (section 8.6)."""
    if len(data) < 32:
        raise ShardError("truncated", "shorter than the header")
    if data[0:2] != b"FC":
        raise ShardError("badMagic", "magic")
    if data[2] != 1:
        raise ShardError("unsupportedVersion", "format version")
    if data[3] not in CODECS:
        raise ShardError("unknownCodec", "codec byte")
    codec = CODECS[data[3]]
    flags, index_encoding = data[4], data[5]
    if flags & ~0b111:
        raise ShardError("badHeader", "unknown flag bits")
    if index_encoding not in (0, 1, 2, 3, 4):
        raise ShardError("badHeader", "index encoding")
    rank = data[6] | data[7] << 8
    if rank and index_encoding != 4:
        raise ShardError("badHeader", "reserved bytes")
    g, n, k, body_length, stored_length, crc = struct.unpack_from("<6I", data, 8)
    if n != n_expected:
        raise ShardError("wrongElementCount", f"{n} values, expected {n_expected}")
    if not 1 <= g <= 65536:
        raise ShardError("badHeader", "group size")
    sparse = bool(flags & 2)
    if sparse != (index_encoding in (1, 2, 3)):
        raise ShardError("badHeader", "sparse flag and index encoding disagree")
    if index_encoding == 4:
        if columns is None or columns <= 0 or n % columns:
            raise ShardError("badHeader", "low-rank factors where the receiver expects a whole shard")
        rows = n // columns
        if not 1 <= rank <= min(rows, columns):
            raise ShardError("badHeader", "rank")
        if k != rank * (rows + columns) or k >= n:
            raise ShardError("badHeader", "kept count of the factors")
    elif sparse and not 1 <= k <= n:
        raise ShardError("badHeader", "kept count")
    if not sparse and index_encoding != 4 and k != n:
        raise ShardError("badHeader", "dense kept count")
    index_bound = {0: 0, 1: 5 * k, 2: (n + 7) // 8, 3: 0, 4: 0}[index_encoding]
    if body_length > index_bound + value_section_length(codec, k, g):
        raise ShardError("bodyTooLarge", "body length")
    present = len(data) - 32
    if present < stored_length:
        raise ShardError("truncated", "stored body")
    if present > stored_length:
        raise ShardError("trailingBytes", "after the stored body")
    stored = data[32:]
    if flags & 1:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(stored, body_length)
            if len(body) == body_length and not inflater.eof and inflater.decompress(inflater.unconsumed_tail, 1):
                raise ShardError("bodyTooLarge", "inflates to more than the body length")
        except zlib.error as error:
            raise ShardError("decompressionFailed", str(error))
        if not inflater.eof:
            raise ShardError("truncated", "zlib stream ends early")
        if len(body) != body_length:
            raise ShardError("truncated", "inflates to fewer bytes than the body length")
        if inflater.unused_data:
            raise ShardError("trailingBytes", "bytes after the zlib stream")
    else:
        if stored_length != body_length:
            raise ShardError("badHeader", "uncompressed stored length differs from the body length")
        body = stored
    if zlib.crc32(body) != crc:
        raise ShardError("badChecksum", "body CRC-32")

    cursor, indices = 0, None
    if index_encoding == 1:
        indices, previous = [], -1
        for _ in range(k):
            delta, shift, length = 0, 0, 0
            while True:
                if cursor >= len(body):
                    raise ShardError("truncated", "inside a varint")
                byte = body[cursor]
                cursor += 1
                length += 1
                if length > 5:
                    raise ShardError("badIndex", "varint longer than 5 bytes")
                delta |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if delta == 0:
                raise ShardError("repeatedIndex", "delta 0")
            previous += delta
            if previous >= n:
                raise ShardError("badIndex", "index beyond n")
            indices.append(previous)
    elif index_encoding == 2:
        length = (n + 7) // 8
        if len(body) < length:
            raise ShardError("truncated", "bitmap")
        bits = np.unpackbits(np.frombuffer(body[:length], dtype=np.uint8), bitorder="little")
        if bits[n:].any():
            raise ShardError("badIndex", "bit beyond n")
        indices = np.flatnonzero(bits[:n]).tolist()
        if len(indices) != k:
            raise ShardError("badIndex", "bitmap population")
        cursor = length
    elif index_encoding == 3:
        if mask is None:
            raise ShardError("badIndex", "coded over a pruning mask the receiver does not hold")
        if len(mask) != k:
            raise ShardError("badIndex", "coded over a mask of another size")
        if mask and mask[-1] >= n:
            raise ShardError("badIndex", "the receiver's mask reaches beyond the shard")
        indices = list(mask)
    if sparse and index_encoding != 3:
        bitmap_length = (n + 7) // 8
        varints = cursor if index_encoding == 1 else varint_length(indices)
        if (index_encoding == 1) != (varints <= bitmap_length):
            raise ShardError("badIndex", "not the canonical index encoding")

    values_bytes = body[cursor:]
    expected = value_section_length(codec, k, g)
    if len(values_bytes) < expected:
        raise ShardError("truncated", "value section")
    if len(values_bytes) > expected:
        raise ShardError("trailingBytes", "after the value section")
    kept = decode_values(codec, values_bytes, k, g)
    if index_encoding == 4:
        # P (rows x r) then Q (columns x r), row-major; each product is exact in binary64 and
        # the sum over t runs in binary64 from +0, in order, before one rounding to binary32.
        p = kept[:rows * rank].astype(np.float64).reshape(rows, rank)
        q = kept[rows * rank:].astype(np.float64).reshape(columns, rank)
        total = np.zeros((rows, columns), dtype=np.float64)
        for t in range(rank):
            total = total + p[:, t:t + 1] * q[:, t][None, :]
        with np.errstate(over="ignore"):
            narrow = total.astype(np.float32).reshape(n)
        if not np.isfinite(narrow).all():
            raise ShardError("nonFinite", "the factors' product overflows binary32")
        return narrow
    if not sparse:
        return kept
    out = np.zeros(n, dtype=np.float32)
    out[np.array(indices, dtype=np.int64)] = kept
    return out


def decode_values(codec, raw, k, g):
    if codec == "fp32":
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise ShardError("nonFinite", "fp32 value")
        return values
    if codec == "fp16":
        values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if not np.isfinite(values).all():
            raise ShardError("nonFinite", "fp16 value")
        return values
    bits = BITS[codec]
    out = np.empty(k, dtype=np.float32)
    offset = 0
    for start in range(0, k, g):
        count = min(g, k - start)
        if codec == "sign":
            (scale,) = struct.unpack_from("<f", raw, offset)
            offset += 4
            if not np.isfinite(scale) or scale < 0:
                raise ShardError("nonFinite", "sign scale")
            packed = np.frombuffer(raw[offset:offset + (count + 7) // 8], dtype=np.uint8)
            signs = np.unpackbits(packed, bitorder="little")[:count]
            out[start:start + count] = np.where(signs == 1, np.float32(scale), np.float32(-scale))
            offset += (count + 7) // 8
            continue
        minimum, step = struct.unpack_from("<ff", raw, offset)   # exact: binary32 widened to binary64
        offset += 8
        if not (np.isfinite(minimum) and np.isfinite(step)) or step < 0:
            raise ShardError("nonFinite", "group minimum or step")
        length = (count * bits + 7) // 8
        packed = np.frombuffer(raw[offset:offset + length], dtype=np.uint8)
        offset += length
        # Levels, least significant bits first: unpack to bits, regroup b at a time.
        level_bits = np.unpackbits(packed, bitorder="little")[:count * bits].reshape(count, bits)
        levels = (level_bits.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(axis=1)
        # m + q·s: q·s is exact in binary64, the sum rounds to binary64, then once to binary32.
        wide = np.float64(minimum) + levels.astype(np.float64) * np.float64(step)
        with np.errstate(over="ignore"):
            narrow = wide.astype(np.float32)
        if not np.isfinite(narrow).all():
            raise ShardError("nonFinite", "decoded value overflows binary32")
        out[start:start + count] = narrow
    return out


def main(path):
    with open(path) as file:
        vectors = json.load(file)
    failures = []
    for vector in vectors["shards"]:
        try:
            holds = vector.get("receiver_holds_mask", False)
            values = decode(bytes.fromhex(vector["encoded"]), vector["count"], vector.get("mask") if holds else None, vector.get("columns"))
        except ShardError as error:
            failures.append(f"{vector['name']}: refused: {error}")
            continue
        raw = values.astype("<f4").tobytes()
        if raw.hex() != vector["decoded"]:
            failures.append(f"{vector['name']}: decoded values differ")
        if hashlib.sha256(raw).hexdigest() != vector["sha256"]:
            failures.append(f"{vector['name']}: SHA-256 differs")
    for vector in vectors["invalid_shards"]:
        try:
            decode(bytes.fromhex(vector["encoded"]), vector["count"], vector.get("mask"), vector.get("columns"))
            failures.append(f"{vector['name']}: accepted, expected {vector['error']}")
        except ShardError as error:
            if error.code != vector["error"]:
                failures.append(f"{vector['name']}: refused with {error.code}, expected {vector['error']}")
    for line in failures:
        print("MISMATCH", line)
    if failures:
        return 1
    print(f"all vectors agree: {len(vectors['shards'])} shards decoded bit for bit, "
          f"{len(vectors['invalid_shards'])} invalid shards refused with their errors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "vectors.json"))
