"""What a copy target's objects hold: the plaintext cut into frames of FRAME bytes,
each compressed with zstd (unless a sample of it does not compress), then sealed
with AES-256-GCM under the target's key.

A sealed object is a sequence of `length (4 bytes, big endian) | nonce (12) |
ciphertext and tag`. A frame's nonce is a random 8-byte prefix drawn for each
sealer (each upload, each resumed part) and a 4-byte frame counter, so no two
frames under one key share a nonce unless two draws of 64 random bits collide.
The associated data binds each frame to its object, its place in it and whether
it is the last: frames cannot be swapped, moved between objects, or cut off.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sendense.common.errors import InvalidInput, SendenseError

FRAME = 4 << 20
KEY_BYTES = 32
_HEADER = struct.Struct(">I")
_AAD = struct.Struct(">QB")
_RECOVERY_PREFIX = "sendense-copy-key-1"
_LEVEL = 3
_PROBE = 64 << 10


class SealBroken(SendenseError):
    """An object does not open with the key: a wrong key, or changed bytes."""

    http_status = 422
    exit_code = 2
    code = "seal_broken"


@dataclass(frozen=True)
class CopyKey:
    secret: bytes

    @classmethod
    def generate(cls) -> CopyKey:
        return cls(os.urandom(KEY_BYTES))

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (shown beside a target)."""
        return hashlib.sha256(b"sendense copy key fingerprint" + self.secret).hexdigest()[:16]

    def recovery_text(self) -> str:
        """The key as printable text: groups of base32 and a check, to print and keep."""
        body = base64.b32encode(self.secret + hashlib.sha256(self.secret).digest()[:4])
        text = body.decode().rstrip("=")
        groups = " ".join(text[i : i + 5] for i in range(0, len(text), 5))
        return f"{_RECOVERY_PREFIX} {groups}"

    @classmethod
    def from_recovery_text(cls, text: str) -> CopyKey:
        words = text.split()
        if not words or words[0] != _RECOVERY_PREFIX:
            raise InvalidInput(f"a copy key starts with {_RECOVERY_PREFIX!r}")
        body = "".join(words[1:]).upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as exc:
            raise InvalidInput("the copy key is not valid base32: was it typed wrong?") from exc
        secret, check = raw[:KEY_BYTES], raw[KEY_BYTES:]
        if len(secret) != KEY_BYTES or hashlib.sha256(secret).digest()[:4] != check:
            raise InvalidInput("the copy key's check does not match: was it typed wrong?")
        return cls(secret)


def _pack(compress: zstandard.ZstdCompressor, plain: bytes) -> bytes:
    """A frame's body before encryption: `Z` and zstd, or `R` and the bytes as they
    are when a sample of them does not compress (random data, compressed files):
    zstd's time is spent where it pays."""
    sample = plain[:_PROBE]
    if len(sample) == _PROBE and len(compress.compress(sample)) > _PROBE * 0.95:
        return b"R" + plain
    return b"Z" + compress.compress(plain)


def _unpack(
    decompress: zstandard.ZstdDecompressor, body: bytes, object_id: str, index: int
) -> bytes:
    kind, data = body[:1], body[1:]
    if kind == b"R":
        return data
    if kind == b"Z":
        plain: bytes = decompress.decompress(data, max_output_size=FRAME)
        return plain
    raise SealBroken(f"object {object_id}: frame {index} is of no known kind")


class Sealer:
    """Seals frames of one object from frame number `first` on: in order with
    `seal`, or each at its own index with `seal_at` (from several threads)."""

    def __init__(self, key: CopyKey, object_id: str, first: int = 0) -> None:
        self._aead = AESGCM(key.secret)
        self._object = object_id.encode()
        self._prefix = os.urandom(8)
        self._local = threading.local()  # a zstd context is one thread's
        self.index = first

    def seal(self, plain: bytes, last: bool) -> bytes:
        sealed = self.seal_at(self.index, plain, last)
        self.index += 1
        return sealed

    def seal_at(self, index: int, plain: bytes, last: bool) -> bytes:
        if index >= 1 << 32:
            raise SendenseError("an object of more than 2^32 frames cannot be sealed")
        compress = getattr(self._local, "compress", None)
        if compress is None:
            compress = self._local.compress = zstandard.ZstdCompressor(level=_LEVEL)
        nonce = self._prefix + struct.pack(">I", index)
        aad = self._object + _AAD.pack(index, int(last))
        sealed = nonce + self._aead.encrypt(nonce, _pack(compress, plain), aad)
        return _HEADER.pack(len(sealed)) + sealed


def seal_bytes(key: CopyKey, object_id: str, data: bytes) -> bytes:
    """A small object (a manifest) sealed whole."""
    sealer = Sealer(key, object_id)
    pieces = [data[i : i + FRAME] for i in range(0, len(data), FRAME)] or [b""]
    return b"".join(sealer.seal(p, i == len(pieces) - 1) for i, p in enumerate(pieces))


def open_frames(key: CopyKey, object_id: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The plaintext of a sealed object read as `chunks`, frame by frame; SealBroken
    when a frame does not open, is out of place, or the object stops early."""
    aead = AESGCM(key.secret)
    decompress = zstandard.ZstdDecompressor()
    tag = object_id.encode()
    pending = bytearray()
    index = 0
    ended = False
    for chunk in chunks:
        pending += chunk
        while len(pending) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(pending)
            if length < 28 or length > FRAME * 2:
                raise SealBroken(f"object {object_id}: frame {index} has a bad length")
            if len(pending) < _HEADER.size + length:
                break
            sealed = bytes(pending[_HEADER.size : _HEADER.size + length])
            del pending[: _HEADER.size + length]
            if ended:
                raise SealBroken(f"object {object_id}: data after its last frame")
            nonce, body = sealed[:12], sealed[12:]
            for last in (False, True):
                try:
                    compressed = aead.decrypt(nonce, body, tag + _AAD.pack(index, int(last)))
                except InvalidTag:
                    continue
                ended = last
                break
            else:
                raise SealBroken(
                    f"object {object_id}: frame {index} does not open with this key "
                    "(a wrong key, or the object was changed)"
                )
            yield _unpack(decompress, compressed, object_id, index)
            index += 1
    if pending or not ended:
        raise SealBroken(f"object {object_id}: it ends before its last frame (cut short?)")


def open_bytes(key: CopyKey, object_id: str, data: bytes) -> bytes:
    return b"".join(open_frames(key, object_id, [data]))
