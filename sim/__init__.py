"""Simulators that stand in for the outside world: TWS (`sim.tws`) and the cloud relay (`sim.relay`)."""
