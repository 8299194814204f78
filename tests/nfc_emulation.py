"""The tag emulators the NFC tests use: the NFC input's simulated twin, which lives with the
driver (drivers/nfc/emulator.py) so demos and installers can use it too."""

from drivers.nfc.emulator import Type2Tag, Type3Tag, Type4Tag, free_udp_port

__all__ = ["Type2Tag", "Type3Tag", "Type4Tag", "free_udp_port"]
