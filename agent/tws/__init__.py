"""The TWS bridge package: everything that speaks to TWS / IB Gateway through ibapi.

  bridge.py     ``TwsBridge``: connecting, the request registry, reference data (the public face)
  marketdata.py market-data lines: open, paced cancel, 1101 re-requests (mixin)
  supervisor.py stay connected: reconnect with backoff, health check, close (mixin)
  callbacks.py  what each TWS message does to the bridge (runs on the event loop)
  wrapper.py    the ibapi client and wrapper in their own thread; the one crossing into asyncio
  lines.py      ``MarketDataLine``: one reqMktData streaming into a Quote
  ticks.py      pure tick and error-code rules
  connect.py    pure connection policy: reconnect delays, paper vs live

Nothing above this package sees an ibapi object or a reqId.
"""

from agent.tws.bridge import TwsBridge
from agent.tws.connect import TWS_WAIT, accounts_are_paper, mismatch_message
from agent.tws.lines import MarketDataLine

__all__ = ["TWS_WAIT", "MarketDataLine", "TwsBridge", "accounts_are_paper", "mismatch_message"]
