"""The chip: an emulated card OS with a transactional persistent store."""

from card_os.applet import Applet, command
from card_os.card import DEFAULT_ATR, Card
from card_os.image import ImageError, ImageFile
from card_os.simulator import Simulator
from card_os.store import MemoryBackend, Store
from card_os.tear import PowerLoss, TearInjector

__all__ = [
    "DEFAULT_ATR",
    "Applet",
    "Card",
    "ImageError",
    "ImageFile",
    "MemoryBackend",
    "PowerLoss",
    "Simulator",
    "Store",
    "TearInjector",
    "command",
]
