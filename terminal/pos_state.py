"""What a POS keeps between runs: trusted issuer keys, its blocklist, sales and batch.

Saved as one JSON file (hex at this edge), written atomically. The blocklist
is kept as the signed files the terminal received (the full list and the
deltas after it), and re-verified when the state is loaded, so a file edited
on disk cannot unlist a card.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apdu.blocklist import TrustedBlocklist
from apdu.signed import SignedObjectError, public_keys
from terminal.errors import TerminalError

STATE_VERSION = 1
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

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "terminal_id": self.terminal_id.hex(),
                "trusted_keys": {k.hex(): v.hex() for k, v in self.trusted_keys.items()},
                "blocklist_files": [raw.hex() for raw in self.blocklist_files],
                "sales": [s.to_json() for s in self.sales],
                "batch": [s.to_json() for s in self.batch],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> PosState:
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise ValueError("unknown state version")
            state = cls(
                terminal_id=bytes.fromhex(data["terminal_id"]),
                trusted_keys={
                    bytes.fromhex(k): bytes.fromhex(v) for k, v in data["trusted_keys"].items()
                },
                blocklist_files=[bytes.fromhex(raw) for raw in data["blocklist_files"]],
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
        state = cls.from_json(path.read_text())
        if state.terminal_id != terminal_id:
            raise TerminalError(f"{path}: the state of terminal {state.terminal_id!r}")
        return state

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as out:
            out.write(self.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
