"""The one exception a client's mistake becomes: raised wherever a request is checked, answered as a 4xx by the ingress.

Kept apart from the decoders so that the ingress, the deployment and the decoders share it without importing each other.
"""

from __future__ import annotations

__all__ = ["RequestError"]


class RequestError(Exception):
    """A client mistake: `status` is the HTTP status, the message goes into {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status, self.headers = status, headers
        super().__init__(message)

    def __reduce__(self):  # raised in a replica, it crosses to the ingress by pickle
        return (RequestError, (self.status, str(self), self.headers))
