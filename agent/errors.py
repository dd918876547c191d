"""One exception tree for the agent, grouped by cause (the httpcore way).

Errors are raised where the I/O happens, typed and carrying their data; they never turn into empty
results. Each has a ``user_message``: the sentence a trader reads in the web app or the console.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code: int | None = None

    @property
    def user_message(self) -> str:
        return str(self)


# --- configuration -----------------------------------------------------------------------------

class ConfigError(AgentError):
    """A setting is missing or wrong. Names the setting, the (redacted) value and the fix.

    ``others``: the further bad settings found in the same load (load_settings reports them all at once).
    """

    others: tuple["ConfigError", ...] = ()

    def __init__(self, setting: str, value: str | None, problem: str, fix: str):
        self.setting, self.value, self.problem, self.fix = setting, value, problem, fix
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{setting}{shown}: {problem}. Fix: {fix}")


# --- TWS / IB Gateway ---------------------------------------------------------------------------

class IBError(AgentError):
    """An error message from TWS: ``error(reqId, errorCode, errorString)``."""

    def __init__(self, code: int, req_id: int, message: str):
        self.code, self.req_id, self.message = code, req_id, message
        super().__init__(f"IB error {code}: {message}")


class IBDisconnected(AgentError):
    """Not connected to TWS, or the connection dropped while a request was pending."""

    def __init__(self, message: str = "IB not connected"):
        super().__init__(message)


class HandshakeTimeout(IBDisconnected):
    """A port accepted TCP but never completed IB's API handshake (ibapi's connect has no timeout)."""


class ClientIdInUse(IBDisconnected):
    """TWS answered error 326: the clientId is still held (often by our own previous session)."""


class ReadOnlyAPI(IBError):
    """Error 321 'The API interface is currently in Read-Only mode' on an order request."""

    def __init__(self, req_id: int, message: str):
        super().__init__(321, req_id, message)

    @property
    def user_message(self) -> str:
        return ("TWS is in Read-Only API mode, so orders are blocked. In TWS: File → Global Configuration → "
                "API → Settings, untick 'Read-Only API', click Apply, then retry.")


# --- requests ----------------------------------------------------------------------------------

class RequestTimeout(AgentError):
    """A request to TWS (or a whole relay request) did not finish within its deadline."""


class InvalidRequest(AgentError):
    """A relay request whose type, frame or payload is wrong. The message names what is wrong."""


class RequestTooLarge(InvalidRequest):
    """A request that cannot be served within the relay's own timeout; the message says how to narrow it."""


class OrderRefused(AgentError):
    """An order the agent did not place, change or cancel (invalid, live account without ALLOW_LIVE_ORDERS,
    refused by IB, ...). The message says why and what to do; ``code`` is IB's error code when IB refused it."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


# --- relay -------------------------------------------------------------------------------------

class RelayAuthFailed(AgentError):
    """The relay rejected our API key: not a network fault, so it is not retried quickly."""
