"""The exchange's calendar: US options expire on New York's date, whatever the trader's own time zone."""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger("agent.scanner")

# US options expire on New York's calendar, whatever the trader's own time zone: a trader in Asia must not see
# today's US expiry refused as "in the past". Without an IANA database (Windows without the tzdata package)
# ZoneInfo raises; then New York's standard offset, off by one hour only around midnight in summer.
NY_ZONE = "America/New_York"
NY_STANDARD = _dt.timezone(_dt.timedelta(hours=-5), "UTC-05:00")


def new_york_tz() -> _dt.tzinfo:
    try:
        return ZoneInfo(NY_ZONE)
    except ZoneInfoNotFoundError:
        log.debug("no time zone database for %s (install tzdata): using UTC-5 for the exchange date", NY_ZONE)
        return NY_STANDARD


def new_york_today(now: Callable[[_dt.tzinfo], _dt.datetime] = _dt.datetime.now) -> _dt.date:
    """Today's date in New York, the calendar US option expiries are on (``now(tz)`` is injectable for tests)."""
    return now(new_york_tz()).date()
