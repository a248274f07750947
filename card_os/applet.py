"""Applets: the programs a card runs, and how commands reach them.

An applet declares its commands with :func:`command`; the card's runtime
selects it by AID and dispatches each APDU by INS. A handler returns the
response data, or raises :class:`apdu.status.CardError` with a status word;
it never builds a status word itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from apdu.command import CommandApdu
from apdu.status import SW, CardError
from card_os.store import Store

Handler = Callable[[CommandApdu], bytes]
F = TypeVar("F", bound=Callable[..., bytes])

CLA_ISO = 0x00
CLA_PROPRIETARY = 0x80


def command(ins: int, cla: int = CLA_PROPRIETARY) -> Callable[[F], F]:
    """Mark an applet method as the handler of ``cla ins``."""

    def mark(fn: F) -> F:
        fn.__apdu_command__ = (cla, ins)  # type: ignore[attr-defined]
        return fn

    return mark


class StoreView:
    """An applet's own cells: keys are prefixed so applets never share a cell."""

    __slots__ = ("_prefix", "_store")

    def __init__(self, store: Store, prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    def get(self, key: str) -> bytes | None:
        return self._store.get(self._prefix + key)

    def write(self, key: str, value: bytes) -> None:
        self._store.write(self._prefix + key, value)

    def delete(self, key: str) -> None:
        self._store.delete(self._prefix + key)

    def write_non_atomic(self, key: str, value: bytes) -> None:
        self._store.write_non_atomic(self._prefix + key, value)


@dataclass(frozen=True, slots=True)
class AppletContext:
    """What the card OS gives an applet: its store and a random source."""

    aid: bytes
    store: StoreView
    random: Callable[[int], bytes]


class Applet:
    """Base class. Subclasses mark handlers with :func:`command`."""

    _commands: ClassVar[dict[int, tuple[int, str]]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        table: dict[int, tuple[int, str]] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                spec = getattr(attr, "__apdu_command__", None)
                if spec is not None:
                    cla, ins = spec
                    table[ins] = (cla, name)
        cls._commands = table

    def __init__(self, ctx: AppletContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self._dispatch: dict[int, tuple[int, Handler]] = {
            ins: (cla, getattr(self, name)) for ins, (cla, name) in self._commands.items()
        }

    def select(self, cmd: CommandApdu) -> bytes:
        """Called on SELECT; returns the FCI (empty by default)."""
        return b""

    def deselect(self) -> None:
        """Called when another applet is selected."""

    def reset(self) -> None:
        """Power loss or reset: drop all transient state."""

    def process(self, cmd: CommandApdu) -> bytes:
        entry = self._dispatch.get(cmd.ins)
        if entry is None:
            raise CardError(SW.INS_NOT_SUPPORTED)
        cla, handler = entry
        if cmd.cla != cla:
            raise CardError(SW.CLA_NOT_SUPPORTED)
        return handler(cmd)
