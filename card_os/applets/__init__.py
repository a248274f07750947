"""Applets that ship with the card OS."""
