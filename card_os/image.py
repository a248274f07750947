"""The card image file: a card's persistent store on disk.

Layout (declared once, :data:`IMAGE`)::

    magic    "PURSEIMG"                 8 bytes
    version  uint16 big-endian          format version (this code: 1)
    cells    uint32 count, then for each cell:
               key   uint8 length + ASCII
               value uint32 length + bytes
    sha256   32 bytes over everything before it

A commit writes a complete new image beside the old one, fsyncs it, renames
it over the old one and fsyncs the folder: after a power loss or a crash the
file holds either the old image or the new one, never a mix. A file that is
missing, truncated, foreign, damaged or newer than this code is refused with
an :class:`ImageError` naming the file and the problem; it is never
overwritten.

One program at a time uses an image: :func:`image_lock` takes an exclusive
lock on ``<image>.lock`` beside it (the image itself is replaced at every
commit, so it cannot carry the lock), and a second program is refused with
a clear error instead of silently forking the card's state.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import construct as cs

from card_os.tear import TearHook, no_tear

MAGIC = b"PURSEIMG"
FORMAT_VERSION = 1
_DIGEST_LEN = 32

HEADER = cs.Struct("magic" / cs.Bytes(len(MAGIC)), "version" / cs.Int16ub)

CELL = cs.Struct(
    "key" / cs.PascalString(cs.Int8ub, "ascii"),
    "value" / cs.Prefixed(cs.Int32ub, cs.GreedyBytes),
)

BODY = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int16ub,
    "cells" / cs.PrefixedArray(cs.Int32ub, CELL),
)

IMAGE = cs.Struct(
    "body" / cs.RawCopy(BODY),
    "digest"
    / cs.Checksum(
        cs.Bytes(_DIGEST_LEN), lambda data: hashlib.sha256(data).digest(), cs.this.body.data
    ),
    cs.Terminated,
)


class ImageError(Exception):
    """A card image that cannot be used; the message names the file and why."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def encode_image(cells: Mapping[str, bytes]) -> bytes:
    value = {
        "version": FORMAT_VERSION,
        "cells": [{"key": k, "value": v} for k, v in sorted(cells.items())],
    }
    built: bytes = IMAGE.build({"body": {"value": value}})
    return built


def decode_image(data: bytes, path: Path) -> dict[str, bytes]:
    """Cells of an image; :class:`ImageError` for anything not a valid image."""
    if len(data) < HEADER.sizeof():
        raise ImageError(path, f"not a card image (only {len(data)} bytes)")
    header: Any = HEADER.parse(data)
    if header.magic != MAGIC:
        raise ImageError(path, "not a card image (wrong magic)")
    if header.version > FORMAT_VERSION:
        raise ImageError(
            path,
            f"written by a newer version (image format {header.version}, "
            f"this program reads up to {FORMAT_VERSION})",
        )
    if header.version < 1:
        raise ImageError(path, f"unknown image format {header.version}")
    try:
        parsed: Any = IMAGE.parse(data)
    except cs.ChecksumError:
        raise ImageError(path, "damaged (checksum mismatch)") from None
    except cs.TerminatedError:
        raise ImageError(path, "damaged (unexpected bytes after the image)") from None
    except (cs.StreamError, cs.ConstructError, UnicodeDecodeError):
        raise ImageError(path, "truncated or damaged (cannot be decoded)") from None
    cells: dict[str, bytes] = {}
    for cell in parsed.body.value.cells:
        if cell.key in cells:
            raise ImageError(path, f"damaged (cell {cell.key!r} appears twice)")
        cells[cell.key] = bytes(cell.value)
    return cells


class ImageFile:
    """A store backend on an image file, committed by atomic replacement."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            if self.path.exists():
                raise ImageError(self.path, "already exists; refusing to overwrite it")
            self._write(encode_image({}), no_tear)
        # an existing file is read (and a bad one refused) by the store that loads it

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    def load(self) -> dict[str, bytes]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ImageError(self.path, "no such card image") from None
        except IsADirectoryError:
            raise ImageError(self.path, "is a folder, not a card image") from None
        except PermissionError:
            raise ImageError(self.path, "permission denied") from None
        return decode_image(data, self.path)

    def save(self, cells: Mapping[str, bytes], tear: TearHook) -> None:
        self._write(encode_image(cells), tear)

    def _write(self, data: bytes, tear: TearHook) -> None:
        tmp = self._tmp
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            half = len(data) // 2
            os.write(fd, data[:half])
            tear("image:write")  # a tear here leaves a half-written temporary file
            os.write(fd, data[half:])
            tear("image:fsync")
            os.fsync(fd)
        finally:
            os.close(fd)
        tear("image:rename")
        os.replace(tmp, self.path)
        tear("image:dirsync")
        _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def image_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the image's lock; :class:`ImageError` at once if another program holds it.

    The lock file is removed on release. A program that opened it just before
    and locks the removed file notices (the path no longer names what it
    locked) and starts again, so two programs never both hold the lock.
    """
    image = Path(path)
    lock_path = image.with_name(image.name + ".lock")
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise ImageError(image, f"cannot open its lock file ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ImageError(
                image, "in use by another program (a `purse card serve`?); try again when it ends"
            ) from None
        try:
            current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)  # closing releases the lock
