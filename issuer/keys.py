"""The issuer's key ring: signing keys on disk, one current, older ones kept.

Layout of the folder (mode 0700)::

    <KEYID>.pem   one PKCS#8 private key per file, mode 0600
    current       the key ID (hex) that signs new cards and blocklists

Rotation adds a key and makes it current. Older keys stay: every card keeps
the issuer key it was personalised with until its certificate expires, so its
credentials, updates and lock orders are still signed with that key, and
terminals trust every key of the ring.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from issuer.errors import KeyFileError
from issuer.signer import IssuerKey

_CURRENT = "current"


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner may read, atomically (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_private(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is open to other users (mode {stat.S_IMODE(mode):o}); "
            "run chmod 600 on it"
        )
    return path.read_bytes()


class KeyRing:
    """Every issuer key, by key ID, and the one that signs new objects."""

    def __init__(self, keys: dict[bytes, IssuerKey], current: bytes, folder: Path | None) -> None:
        if current not in keys:
            raise KeyFileError("the current key is not in the ring")
        self._keys = keys
        self._current = current
        self.folder = folder

    @classmethod
    def in_memory(cls, key: IssuerKey | None = None) -> KeyRing:
        key = key if key is not None else IssuerKey.generate()
        return cls({key.key_id: key}, key.key_id, None)

    @classmethod
    def create(cls, folder: Path) -> KeyRing:
        """A new ring with one fresh key; refuses a folder that already holds one."""
        if (folder / _CURRENT).exists():
            raise KeyFileError(f"{folder}: an issuer key ring is already there")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # also when the folder was there already
        key = IssuerKey.generate()
        made = cls({key.key_id: key}, key.key_id, folder)
        made._save(key)
        return made

    @classmethod
    def open(cls, folder: Path) -> KeyRing:
        current_file = folder / _CURRENT
        if not current_file.exists():
            raise KeyFileError(f"{folder}: no issuer key ring (run `purse issuer init`)")
        mode = folder.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{folder}: key folder is open to other users (mode {stat.S_IMODE(mode):o}); "
                "run chmod 700 on it"
            )
        try:
            current = bytes.fromhex(_read_private(current_file).decode("ascii").strip())
        except ValueError:
            raise KeyFileError(f"{current_file}: not a key ID") from None
        keys: dict[bytes, IssuerKey] = {}
        for path in sorted(folder.glob("*.pem")):
            try:
                key = IssuerKey.from_pem(_read_private(path))
            except ValueError:
                raise KeyFileError(f"{path}: not a P-256 private key") from None
            if path.stem.upper() != key.key_id.hex().upper():
                raise KeyFileError(f"{path}: file name does not match its key ID")
            keys[key.key_id] = key
        if current not in keys:
            raise KeyFileError(f"{current_file}: names a key that is not in {folder}")
        return cls(keys, current, folder)

    def _save(self, key: IssuerKey) -> None:
        if self.folder is None:
            return
        _write_private(self.folder / f"{key.key_id.hex().upper()}.pem", key.to_pem())
        _write_private(self.folder / _CURRENT, key.key_id.hex().upper().encode() + b"\n")

    @property
    def current(self) -> IssuerKey:
        return self._keys[self._current]

    def get(self, key_id: bytes) -> IssuerKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyFileError(f"no issuer key {key_id.hex().upper()} in the ring") from None

    def public_keys(self) -> dict[bytes, bytes]:
        """Key ID -> public point, for terminals to trust."""
        return {kid: key.public for kid, key in self._keys.items()}

    def rotate(self) -> IssuerKey:
        """Add a fresh key and make it current; older keys stay for the cards that hold them."""
        key = IssuerKey.generate()
        self._keys[key.key_id] = key
        self._current = key.key_id
        self._save(key)
        return key
