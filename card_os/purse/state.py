"""The purse's persistent cells, read and written through typed accessors.

Every accessor goes through the applet's :class:`StoreView`, so writes made
during a command are staged in that command's transaction.
"""

from __future__ import annotations

from apdu.purse import (
    HISTORY_SLOTS,
    PIN_TRIES,
    Credential,
    ExceptionEntry,
    HistoryRecord,
    LifeCycle,
    PendingTransfer,
    split_exception_log,
)
from apdu.signed import KEY_ID_LEN, PUBLIC_KEY_LEN, parse_envelope
from card_os.applet import StoreView

_KEY_ENTRY = KEY_ID_LEN + PUBLIC_KEY_LEN


class PurseState:
    """Typed view of the purse's cells."""

    __slots__ = ("_cred_cache", "_store")

    def __init__(self, store: StoreView) -> None:
        self._store = store
        self._cred_cache: tuple[bytes, Credential] | None = None

    def _int(self, key: str) -> int:
        raw = self._store.get(key)
        return int.from_bytes(raw, "big") if raw else 0

    def _put(self, key: str, value: int, size: int = 4) -> None:
        self._store.write(key, value.to_bytes(size, "big"))

    # life cycle and identity ---------------------------------------------------
    @property
    def life_cycle(self) -> LifeCycle:
        return LifeCycle(self._int("state"))

    @life_cycle.setter
    def life_cycle(self, value: LifeCycle) -> None:
        self._put("state", value, 1)

    @property
    def card_id(self) -> bytes:
        return self._store.get("card_id") or b""

    def personalise(
        self, card_id: bytes, currency: int, max_balance: int, pin: bytes, card_key: bytes
    ) -> None:
        self._store.write("card_id", card_id)
        self._put("currency", currency, 2)
        self._put("max_balance", max_balance)
        self._store.write("pin", pin)
        self._put("pin_tries", PIN_TRIES, 1)
        self._store.write("card_key", card_key)
        self.life_cycle = LifeCycle.PERSONALISED

    @property
    def card_key(self) -> bytes:
        return self._store.get("card_key") or b""

    @property
    def currency(self) -> int:
        return self._int("currency")

    @property
    def max_balance(self) -> int:
        return self._int("max_balance")

    # issuer keys -----------------------------------------------------------------
    @property
    def issuer_keys_raw(self) -> bytes:
        return self._store.get("issuer_keys") or b""

    def issuer_keys(self) -> dict[bytes, bytes]:
        raw = self.issuer_keys_raw
        return {
            raw[i : i + KEY_ID_LEN]: raw[i + KEY_ID_LEN : i + _KEY_ENTRY]
            for i in range(0, len(raw), _KEY_ENTRY)
        }

    def add_issuer_key(self, key_id: bytes, public_key: bytes) -> None:
        self._store.write("issuer_keys", self.issuer_keys_raw + key_id + public_key)

    # money and counters ------------------------------------------------------------
    @property
    def balance(self) -> int:
        return self._int("balance")

    @balance.setter
    def balance(self, value: int) -> None:
        self._put("balance", value)

    @property
    def atc(self) -> int:
        return self._int("atc")

    def next_atc(self) -> int:
        atc = self.atc + 1
        self._put("atc", atc)
        return atc

    @property
    def time_mark(self) -> int:
        return self._int("time_mark")

    @time_mark.setter
    def time_mark(self, value: int) -> None:
        self._put("time_mark", value)

    def raise_time_mark(self, claimed_time: int) -> None:
        if claimed_time > self.time_mark:
            self._put("time_mark", claimed_time)

    @property
    def offline_spent(self) -> int:
        return self._int("offline_spent")

    @offline_spent.setter
    def offline_spent(self, value: int) -> None:
        self._put("offline_spent", value)

    @property
    def unlock_mark(self) -> int:
        return self._int("unlock_mark")

    @unlock_mark.setter
    def unlock_mark(self, value: int) -> None:
        self._put("unlock_mark", value)

    # PIN --------------------------------------------------------------------------
    @property
    def pin(self) -> bytes:
        return self._store.get("pin") or b""

    @pin.setter
    def pin(self, value: bytes) -> None:
        self._store.write("pin", value)

    @property
    def pin_tries(self) -> int:
        return self._int("pin_tries")

    def spend_pin_try(self) -> int:
        """Decrement the try counter *outside* the transaction; returns what is left."""
        left = self.pin_tries - 1
        self._store.write_non_atomic("pin_tries", left.to_bytes(1, "big"))
        return left

    def reset_pin_tries(self) -> None:
        self._put("pin_tries", PIN_TRIES, 1)

    # signed objects ------------------------------------------------------------------
    @property
    def certificate(self) -> bytes:
        return self._store.get("certificate") or b""

    @certificate.setter
    def certificate(self, value: bytes) -> None:
        self._store.write("certificate", value)

    @property
    def credential_raw(self) -> bytes:
        return self._store.get("credential") or b""

    @credential_raw.setter
    def credential_raw(self, value: bytes) -> None:
        self._store.write("credential", value)

    def credential(self) -> Credential | None:
        """The stored credential (verified when it was stored), decoded once."""
        raw = self._store.get("credential")
        if not raw:
            return None
        cached = self._cred_cache
        if cached is not None and cached[0] is raw:
            return cached[1]
        cred = Credential.decode(parse_envelope(raw).body)
        self._cred_cache = (raw, cred)
        return cred

    # card-to-card transfers -----------------------------------------------------------
    @property
    def pending_transfer(self) -> PendingTransfer | None:
        raw = self._store.get("xfer_pending")
        return PendingTransfer.decode(raw) if raw else None

    @pending_transfer.setter
    def pending_transfer(self, value: PendingTransfer | None) -> None:
        self._store.write("xfer_pending", value.encode() if value is not None else b"")

    @property
    def exception_log_raw(self) -> bytes:
        return self._store.get("xfer_log") or b""

    def exception_log(self) -> list[ExceptionEntry]:
        return split_exception_log(self.exception_log_raw)

    def log_exception(self, entry: ExceptionEntry) -> None:
        self._store.write("xfer_log", self.exception_log_raw + entry.encode())

    def clear_exceptions(self, count: int) -> None:
        """Drop the ``count`` oldest entries (the ones the issuer has recorded)."""
        kept = self.exception_log()[count:]
        self._store.write("xfer_log", b"".join(e.encode() for e in kept))

    @property
    def transfers_out(self) -> int:
        """Value sent to other cards, in total over the card's life."""
        return self._int("xfer_out")

    @transfers_out.setter
    def transfers_out(self, value: int) -> None:
        self._put("xfer_out", value, 8)

    @property
    def transfers_in(self) -> int:
        """Value received from other cards, in total over the card's life."""
        return self._int("xfer_in")

    @transfers_in.setter
    def transfers_in(self, value: int) -> None:
        self._put("xfer_in", value, 8)

    # history ---------------------------------------------------------------------
    @property
    def history_count(self) -> int:
        return self._int("hist_count")

    def record(self, entry: HistoryRecord) -> None:
        count = self.history_count
        self._store.write(f"hist{count % HISTORY_SLOTS}", entry.encode())
        self._put("hist_count", count + 1)

    def history(self, newest_first_index: int) -> HistoryRecord | None:
        """Entry ``1`` is the newest; ``None`` beyond what is kept."""
        count = self.history_count
        if not 1 <= newest_first_index <= min(count, HISTORY_SLOTS):
            return None
        slot = (count - newest_first_index) % HISTORY_SLOTS
        raw = self._store.get(f"hist{slot}")
        return HistoryRecord.decode(raw) if raw else None
