"""The purse applet: money, ID, history and the expiring, issuer-signed credential."""

from card_os.purse.applet import PurseApplet

__all__ = ["PurseApplet"]
