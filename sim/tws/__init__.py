"""A TWS / IB Gateway simulator speaking IB's API socket protocol (server version 157) on 127.0.0.1.

    from sim.tws import TwsSimulator, SimConfig
    sim = TwsSimulator(SimConfig(port=0, latency="fast", seed=7))
    await sim.start(); sim.port; ...; await sim.stop()

Run it by itself with ``python -m sim.tws --port 7497``.
"""

from .config import SimConfig
from .server import TwsSimulator

__all__ = ["SimConfig", "TwsSimulator"]
