"""The camera input: OpenCV capture, barcode decoding, debounce and a frame watchdog."""
