"""IB Data Agent: the daemon's parts (see docs/design.md for the road one request travels)."""

VERSION = "2.0.0"
