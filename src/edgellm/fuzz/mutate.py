"""Deterministic mutations: byte-level ones for any input, value-level ones for the structured targets.

Every choice comes from the `random.Random` passed in, so a run is a function of its seed.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Sequence
from typing import Any

# Integers at the edges of every width a header field has, and the sizes that overflow a product or an allocation.
INTERESTING_INTS = (
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    31,
    32,
    33,
    63,
    64,
    127,
    128,
    255,
    256,
    1000,
    1024,
    4096,
    32767,
    32768,
    65535,
    65536,
    2**20,
    2**24,
    2**30,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**40,
    2**48,
    2**53 + 1,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -1,
    -2,
    -128,
    -32768,
    -(2**31),
    -(2**63),
)
INTERESTING_FLOATS = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-45,
    1e-30,
    1e-6,
    1e6,
    1e30,
    3.4e38,
    1.8e308,
    math.nan,
    math.inf,
    -math.inf,
    2.0**31,
    2.0**63,
    0.1,
    1e-300,
)
HUGE_LENGTHS = (2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1)


def interesting_int(rng: random.Random, near: int | None = None) -> int:
    if near is not None and rng.random() < 0.4:
        return rng.choice((near + 1, near - 1, near * 2, near // 2, -near, near + rng.randint(-8, 8), near * 1000, 0))
    return rng.choice(INTERESTING_INTS)


def interesting_float(rng: random.Random, near: float | None = None) -> float:
    if near is not None and math.isfinite(near) and rng.random() < 0.4:
        return rng.choice((near * 2, near / 2, -near, near * 1e10, near + 1, near / 1e10))
    return rng.choice(INTERESTING_FLOATS)


def mutate_bytes(
    rng: random.Random,
    data: bytes,
    *,
    max_size: int,
    donors: Sequence[bytes] = (),
    fields: Sequence[tuple[int, int]] = (),
    n_ops: int | None = None,
) -> bytes:
    """1-4 byte-level edits: bit flips, random bytes, inserts, deletes, duplicated or spliced-in chunks, truncation,
    and interesting integers written over a random position or over one of `fields` (offset, width): the
    counts, lengths, types and offsets of a structured file."""
    buf = bytearray(data)
    for _ in range(n_ops or rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.randrange(10)
        n = len(buf)
        if op == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            i = rng.randint(0, n)
            chunk = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8, rng.randint(1, 64)))))
            buf[i:i] = chunk
        elif op == 3 and n:
            i = rng.randrange(n)
            del buf[i : i + rng.choice((1, 2, 4, 8, rng.randint(1, max(1, n // 4))))]
        elif op == 4 and n:
            i = rng.randrange(n)
            chunk = buf[i : i + rng.randint(1, 256)]
            j = rng.randint(0, n)
            buf[j:j] = chunk * rng.choice((1, 1, 2, 8))
        elif op == 5 and donors:
            donor = rng.choice(donors)
            if donor:
                a = rng.randrange(len(donor))
                chunk = donor[a : a + rng.randint(1, 512)]
                i = rng.randint(0, n)
                if rng.random() < 0.5:
                    buf[i : i + len(chunk)] = chunk
                else:
                    buf[i:i] = chunk
        elif op == 6 and n:
            del buf[rng.randint(0, n - 1) :]
        elif op in (7, 8) and fields:
            offset, width = rng.choice(fields)
            _write_int(rng, buf, offset, width)
        elif n:
            width = rng.choice((1, 2, 4, 8))
            _write_int(rng, buf, rng.randrange(n), width)
    return bytes(buf[:max_size])


def _write_int(rng: random.Random, buf: bytearray, offset: int, width: int) -> None:
    if offset >= len(buf):
        return
    old = int.from_bytes(buf[offset : offset + width].ljust(width, b"\0"), "little")
    value = rng.choice(HUGE_LENGTHS) if width == 8 and rng.random() < 0.3 else interesting_int(rng, old)
    raw = (value % (1 << (8 * width))).to_bytes(width, "little")
    buf[offset : offset + width] = raw[: len(buf) - offset]


# -- inputs of several parts -----------------------------------------------------------------------------------
# The tokenizer and template targets take more than one thing per input; a corpus file holds them as
# length-prefixed parts, and a file whose prefixes a mutation broke still splits into something.


def join_parts(parts: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def split_parts(data: bytes, n: int) -> list[bytes]:
    parts, pos = [], 0
    for _ in range(n):
        if pos + 4 > len(data):
            parts.append(b"")
            continue
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        parts.append(data[pos : pos + size])
        pos += size
    return parts


def pick(rng: random.Random, options: Sequence[Any]) -> Any:
    return options[rng.randrange(len(options))]
