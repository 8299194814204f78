"""Barcode scanners on a serial port (USB CDC-ACM or RS-232): one line is one scan."""
