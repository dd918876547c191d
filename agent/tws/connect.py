"""Pure connection policy for the bridge: reconnect delays and telling paper from live accounts."""

from __future__ import annotations

from agent.retry import reconnect_wait

# TWS reconnect delays (tenacity, agent/retry.py): a random first one (1-1.3 s), growing 1.6x to 30 s. TWS is
# local: its daily restart or re-login takes a minute or two, and a delay here costs nothing but a refused
# connect.
TWS_WAIT = reconnect_wait(first=1.0, factor=1.6, cap=30.0)


def accounts_are_paper(accounts: list[str]) -> bool | None:
    """Paper accounts start with D (DU…, DF…); live ones with U or F. None when there is nothing to tell by."""
    if not accounts:
        return None
    return all(a.upper().startswith("D") for a in accounts)


def mismatch_message(port: int, accounts: list[str], mode: str) -> str:
    kind = "paper" if accounts_are_paper(accounts) else "live"
    acct = ", ".join(accounts)
    return (f"TWS on port {port} is logged in to {kind} account {acct} but IB_MODE={mode} — "
            f"log in to your {mode} account or set IB_MODE={kind}")

