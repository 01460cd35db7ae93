"""The ueobench version, read by the package face and by every code fingerprint."""
__version__ = "0.3.0"
