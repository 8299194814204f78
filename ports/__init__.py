"""The ports between the layers: what a device driver delivers (Scan) and reports (Health),
and the interface every driver implements. Imports nothing of the project."""
