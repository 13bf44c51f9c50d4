"""Helpers the tests share: stand-ins for hardware that cannot exist on a CI machine."""
