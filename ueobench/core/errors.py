"""One exception type for every mistake a user can fix.

The CLI prints ``error: <message>`` on one line and exits with status 2, so each message must say what
was wrong and what to do about it.
"""
from __future__ import annotations


class UeobenchError(Exception):
    """A user-facing error: bad names, missing data, malformed files, unusable weights."""


class ProtocolError(UeobenchError):
    """A protocol file is malformed; the message names the file and the field."""


class DataError(UeobenchError):
    """Images or image lists are missing, unreadable or inconsistent with the protocol."""
