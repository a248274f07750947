"""The card runtime: power, ATR, applet registry, SELECT, dispatch, chaining.

``Card.process`` is the one place where a command becomes a response:

* a malformed APDU is answered ``6700``; a CLA other than ``00``/``80`` ``6E00``;
* ``00 A4 04 ..`` selects an applet by AID (exact or right-truncated match);
  ``6A82`` when none matches, and the current selection stays;
* ``00 C0`` (GET RESPONSE) returns what a long response left over;
* every other command goes to the selected applet inside one store
  transaction: committed when the handler returns, rolled back when it raises
  a :class:`CardError` (its status word is the answer) or anything else
  (answered ``6F00``);
* response data longer than Ne: ``6CXX`` when the command changed nothing
  (so repeating it is safe), else the first Ne bytes with ``61XX``.

A tear (:class:`card_os.tear.PowerLoss`) propagates to the caller: the card
is then unpowered and keeps only what was committed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from apdu.atr import build_atr
from apdu.command import CommandApdu
from apdu.errors import MalformedApdu, TransportError
from apdu.status import SW, CardError
from card_os.applet import Applet, AppletContext, StoreView
from card_os.image import ImageFile
from card_os.store import Backend, MemoryBackend, Store
from card_os.tear import PowerLoss, TearHook

log = logging.getLogger(__name__)

HISTORICAL_BYTES = b"\x80\x55PURSE"  # category 80, compact-TLV tag 5 (issuer data)
DEFAULT_ATR = build_atr(HISTORICAL_BYTES, protocols=(0, 1))

_OK = b"\x90\x00"
INS_SELECT = 0xA4
SUPPORTED_CLA = frozenset((0x00, 0x80))  # interindustry and proprietary, channel 0, no SM
INS_GET_RESPONSE = 0xC0


def _sw(code: int) -> bytes:
    return code.to_bytes(2, "big")


class Card:
    """One emulated card. Two cards in one process share nothing."""

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        atr: bytes = DEFAULT_ATR,
        tear: TearHook | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = Store(backend if backend is not None else MemoryBackend(), tear)
        self._atr = atr
        self._random = random
        self._applets: dict[bytes, Applet] = {}
        self._selected: Applet | None = None
        self._powered = False
        self._leftover = b""

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, tear: TearHook | None = None) -> Card:
        """A card on an existing image file (a bad file raises ImageError)."""
        return cls(ImageFile(path), tear=tear)

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Card:
        """A blank card on a new image file (never overwrites one)."""
        return cls(ImageFile(path, create=True))

    # applets ---------------------------------------------------------------
    def install(self, aid: bytes, applet_class: type[Applet]) -> Applet:
        if not 5 <= len(aid) <= 16:
            raise ValueError("an AID has 5 to 16 bytes")
        if aid in self._applets:
            raise ValueError(f"an applet is already installed as {aid.hex().upper()}")
        ctx = AppletContext(aid, StoreView(self.store, aid.hex() + "/"), self._random)
        applet = applet_class(ctx)
        self._applets[aid] = applet
        return applet

    @property
    def applets(self) -> dict[bytes, Applet]:
        return dict(self._applets)

    @property
    def selected(self) -> Applet | None:
        return self._selected

    # power -----------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def powered(self) -> bool:
        return self._powered

    def power_on(self) -> bytes:
        if not self._powered:
            self.store.reload()
            self._powered = True
        return self._atr

    def power_off(self) -> None:
        self._lose_power()

    def reset(self) -> bytes:
        self._lose_power()
        return self.power_on()

    def _lose_power(self) -> None:
        self._powered = False
        self._leftover = b""
        self._selected = None
        self.store.abort()
        for applet in self._applets.values():
            applet.reset()

    # commands --------------------------------------------------------------
    def process(self, raw: bytes) -> bytes:
        """Answer one command APDU with a response APDU."""
        if not self._powered:
            raise TransportError("the card is not powered")
        try:
            cmd = CommandApdu.parse(raw)
        except MalformedApdu:
            self._leftover = b""
            return _sw(SW.WRONG_LENGTH)
        if cmd.ins == INS_GET_RESPONSE and cmd.cla == 0x00:
            return self._get_response(cmd)
        self._leftover = b""
        if cmd.cla not in SUPPORTED_CLA:
            return _sw(SW.CLA_NOT_SUPPORTED)
        store = self.store
        store.begin()
        try:
            if cmd.ins == INS_SELECT and cmd.cla == 0x00:
                data = self._select(cmd)
            elif self._selected is None:
                raise CardError(SW.INS_NOT_SUPPORTED, "no applet selected")
            else:
                data = self._selected.process(cmd)
            changed = store.dirty
            store.commit()
        except CardError as err:
            store.abort()
            return _sw(err.sw)
        except PowerLoss:
            self._lose_power()
            raise
        except Exception:
            store.abort()
            log.debug("unexpected error in card code", exc_info=True)
            return _sw(SW.UNKNOWN_ERROR)
        return self._respond(cmd, data, changed)

    def _select(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0x04 or cmd.p2 not in (0x00, 0x0C):
            raise CardError(SW.INCORRECT_P1P2, "only SELECT by AID, first occurrence")
        if not 5 <= len(cmd.data) <= 16:
            raise CardError(SW.WRONG_LENGTH, "an AID has 5 to 16 bytes")
        applet = self._applets.get(cmd.data)
        if applet is None:
            matches = [a for aid, a in self._applets.items() if aid.startswith(cmd.data)]
            if not matches:
                raise CardError(SW.FILE_NOT_FOUND)
            applet = matches[0]
        fci = applet.select(cmd)
        if self._selected is not None:
            self._selected.deselect()  # also on re-SELECT: the session starts afresh
        self._selected = applet
        return b"" if cmd.p2 == 0x0C else fci

    def _respond(self, cmd: CommandApdu, data: bytes, changed: bool) -> bytes:
        if not data:
            return _OK
        ne = cmd.ne
        if ne is None:
            self._leftover = data
            return _sw(SW.bytes_remaining(len(data)))
        if len(data) <= ne:
            return data + _OK
        if not changed and not cmd.extended and len(data) <= 256:
            return _sw(SW.wrong_le(len(data)))
        self._leftover = data[ne:]
        return data[:ne] + _sw(SW.bytes_remaining(len(self._leftover)))

    def _get_response(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 or cmd.p2:
            self._leftover = b""
            return _sw(SW.INCORRECT_P1P2)
        if cmd.data:
            self._leftover = b""
            return _sw(SW.WRONG_LENGTH)
        left = self._leftover
        if not left:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        ne = cmd.ne or 256
        chunk, self._leftover = left[:ne], left[ne:]
        if self._leftover:
            return chunk + _sw(SW.bytes_remaining(len(self._leftover)))
        return chunk + _OK
