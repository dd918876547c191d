"""Errors of the reference relay's in-process request API (the HTTP side maps them to status codes)."""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error ReferenceRelay.request() raises."""


class NoProvider(RelayError):
    """No authenticated data provider is connected (HTTP 503)."""

    def __init__(self, message: str = "No data provider connected") -> None:
        super().__init__(message)


class RequestTimeout(RelayError):
    """The provider did not answer within the relay's wait (HTTP 504)."""

    def __init__(self, request_type: str, request_id: str, timeout: float) -> None:
        self.request_type, self.request_id, self.timeout = request_type, request_id, timeout
        super().__init__(f"Data provider timed out after {timeout:g}s waiting for {request_type}")


class ProviderDisconnected(RelayError):
    """The provider went away (closed, silent, replaced, kicked) with this request pending (HTTP 500)."""

    def __init__(self, message: str = "Provider disconnected") -> None:
        super().__init__(message)
