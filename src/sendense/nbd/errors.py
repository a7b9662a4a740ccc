"""The NBD layer's errors. They say what happened on the wire, in the protocol's
words, and carry no HTTP status or exit code: the hub's and the node's API and
task runners decide what an NBD failure means to their callers."""

from __future__ import annotations


class NbdError(Exception):
    """Root of every NBD failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NbdUriError(NbdError):
    """Not an NBD URI we can open."""


class NbdConnectError(NbdError):
    """The server could not be reached, or refused the handshake or the export."""


class NbdConnectionLost(NbdError):
    """The connection died; requests not yet answered may or may not have been done."""


class NbdServerError(NbdError):
    """The server answered a request with an error (EIO, ENOSPC...)."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name
