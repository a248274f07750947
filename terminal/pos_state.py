"""What a POS keeps between runs: trusted issuer keys, its blocklist, sales and batch.

Saved as one JSON file (hex at this edge), written atomically. The blocklist
is kept as the signed files the terminal received (the full list and the
deltas after it), as they came, in a folder beside the JSON file
(``<ID>.blocklist/<sha256>.bin``, named by their SHA-256, which the JSON
lists in order): a list of a million cards stays a 95 MB binary file instead
of twice that in hex. They are re-verified when the state is loaded (name
and signature), so a file edited on disk cannot unlist a card.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apdu.blocklist import TrustedBlocklist
from apdu.signed import SignedObjectError, public_keys
from terminal.errors import TerminalError

STATE_VERSION = 2  # 1 held the blocklist files inline, in hex (still read)
MAX_DELTAS = 16  # past this, the next sync asks for a full list


@dataclass(frozen=True, slots=True)
class Sale:
    card_id: bytes
    atc: int
    amount: int
    balance: int
    time: int
    receipt: bytes
    certificate: bytes

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("card_id", "receipt", "certificate"):
            out[key] = out[key].hex()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sale:
        return cls(
            card_id=bytes.fromhex(data["card_id"]),
            atc=int(data["atc"]),
            amount=int(data["amount"]),
            balance=int(data["balance"]),
            time=int(data["time"]),
            receipt=bytes.fromhex(data["receipt"]),
            certificate=bytes.fromhex(data["certificate"]),
        )


@dataclass
class PosState:
    terminal_id: bytes
    trusted_keys: dict[bytes, bytes] = field(default_factory=dict)
    blocklist_files: list[bytes] = field(default_factory=list)
    sales: list[Sale] = field(default_factory=list)  # every sale, newest last
    batch: list[Sale] = field(default_factory=list)  # sales not yet settled
    blocklist: TrustedBlocklist = field(default_factory=TrustedBlocklist)

    def rebuild_blocklist(self) -> None:
        """Verify the held blocklist files again, in order, into a fresh list."""
        fresh = TrustedBlocklist()
        keys = public_keys(self.trusted_keys)
        try:
            for raw in self.blocklist_files:
                fresh.apply(raw, keys)
        except SignedObjectError as err:
            raise TerminalError(f"the stored blocklist does not verify ({err})") from None
        self.blocklist = fresh

    def to_json(self, names: list[str] | None = None) -> str:
        """The state, with the blocklist files named by their SHA-256 (saved apart).

        ``names``: those names, when the caller has them (hashing a large list twice
        is wasted work).
        """
        if names is None:
            names = [_name(raw) for raw in self.blocklist_files]
        return json.dumps(
            {
                "version": STATE_VERSION,
                "terminal_id": self.terminal_id.hex(),
                "trusted_keys": {k.hex(): v.hex() for k, v in self.trusted_keys.items()},
                "blocklist_files": names,
                "sales": [s.to_json() for s in self.sales],
                "batch": [s.to_json() for s in self.batch],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, folder: Path | None = None) -> PosState:
        """The state; its blocklist files are read from ``folder`` by name."""
        try:
            data = json.loads(text)
            version = data.get("version")
            if version not in (1, STATE_VERSION):
                raise ValueError("unknown state version")
            if version == 1:
                lists = [bytes.fromhex(raw) for raw in data["blocklist_files"]]
            else:
                lists = [_read_list(folder, name) for name in data["blocklist_files"]]
            state = cls(
                terminal_id=bytes.fromhex(data["terminal_id"]),
                trusted_keys={
                    bytes.fromhex(k): bytes.fromhex(v) for k, v in data["trusted_keys"].items()
                },
                blocklist_files=lists,
                sales=[Sale.from_json(s) for s in data["sales"]],
                batch=[Sale.from_json(s) for s in data["batch"]],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise TerminalError(f"not a POS state file ({err})") from None
        state.rebuild_blocklist()
        return state

    # files -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, terminal_id: bytes) -> PosState:
        if not path.exists():
            return cls(terminal_id)
        state = cls.from_json(path.read_text(), _list_folder(path))
        if state.terminal_id != terminal_id:
            raise TerminalError(f"{path}: the state of terminal {state.terminal_id!r}")
        return state

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = _list_folder(path)
        names = [_name(raw) for raw in self.blocklist_files]
        keep = dict(zip(names, self.blocklist_files, strict=True))
        if keep:
            folder.mkdir(exist_ok=True)
        for name, raw in keep.items():  # the lists first: the JSON then names only files there
            target = folder / name
            if not target.exists():
                _write_atomically(target, raw)
        _write_atomically(path, self.to_json(names).encode())
        if folder.is_dir():  # lists the state no longer names (a full list replaced them)
            for old in folder.glob("*.bin"):
                if old.name not in keep:
                    old.unlink()


def _name(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest() + ".bin"


def _list_folder(state_path: Path) -> Path:
    return state_path.with_name(state_path.stem + ".blocklist")


def _read_list(folder: Path | None, name: str) -> bytes:
    if folder is None or "/" in name or not name.endswith(".bin"):
        raise ValueError(f"no blocklist file {name!r}")
    try:
        raw = (folder / name).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"blocklist file {folder / name} is missing") from None
    if _name(raw) != name:
        raise ValueError(f"blocklist file {folder / name} was changed")
    return raw


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
