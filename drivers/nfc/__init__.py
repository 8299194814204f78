"""NFC readers through nfcpy (USB, UART or its udp: simulated frontend): NDEF records on
Type 2, 3 and 4 tags become scans."""
