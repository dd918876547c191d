"""Reconnect policy for the relay and TWS loops, made of tenacity's parts (no hand-written backoff).

Both loops (agent/relay.py, agent/tws/supervisor.py) reconnect the websockets way (house style 7): retry only
the faults they expect, a random first delay, growth to a cap, a fresh start after every connection that came
up, and delays injectable so that tests run in milliseconds. ``reconnect_wait`` is tenacity's jittered
exponential wait with limits that keep the sequence from ever shrinking; ``reconnecting`` is tenacity's async
retrying around one connection attempt.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never
from tenacity.wait import wait_base, wait_exponential_jitter

Wait = Callable[[RetryCallState], float]


def reconnect_wait(first: float = 1.0, factor: float = 2.0, cap: float = 10.0,
                   jitter: float | None = None) -> wait_base:
    """Delay n (1, 2, ...) = ``first`` x ``factor``^(n-1) plus a random 0..``jitter``, at most ``cap``.

    The first delay is random (many agents dropped by one relay deploy must not all return at once). ``jitter``
    defaults to, and may not exceed, half the growth from the first step to the second: each step's lowest value
    then lies above the previous step's highest, so the sequence never shrinks (2 s -> 1 s -> 2 s reads as a bug),
    never reaches 0 (each delay is at least ``first``) and never passes ``cap``. At the cap the delay is the cap:
    agents keep the spread their earlier random steps gave them.
    """
    if not 0 < first <= cap:
        raise ValueError(f"reconnect delays need 0 < first <= cap (got first={first}, cap={cap})")
    if factor < 1:
        raise ValueError(f"reconnect delays must not shrink: factor {factor} is below 1")
    room = (factor - 1) * first / 2
    jitter = room if jitter is None else jitter
    if not 0 <= jitter <= room:
        raise ValueError(f"jitter {jitter} s could make a delay shorter than the one before: at most "
                         f"(factor - 1) x first / 2 = {room:g} s")
    return wait_exponential_jitter(multiplier=first, exp_base=factor, max=cap, jitter=jitter)


def reconnecting(wait: Wait, *, retry_on: tuple[type[BaseException], ...],
                 sleep: Callable[[float], Awaitable[Any]],
                 before_sleep: Callable[[RetryCallState], Any] | None = None) -> AsyncRetrying:
    """Tenacity's async retrying for one outage: retries ``retry_on`` faults forever with ``wait``'s delays,
    sleeping with ``sleep`` (injectable); anything else (a rejected key, a cancellation) is raised as it is."""
    return AsyncRetrying(wait=wait, retry=retry_if_exception_type(retry_on), stop=stop_never, sleep=sleep,
                         before_sleep=before_sleep, reraise=True)


def preview(wait: Wait, n: int) -> list[float]:
    """The first ``n`` delays ``wait`` would choose (for tests and the reliability bench)."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})   # type: ignore[arg-type]
    out = []
    for i in range(1, n + 1):
        state.attempt_number = i
        out.append(float(wait(state)))
    return out


def fault_of(state: RetryCallState) -> BaseException | None:
    """The exception that ended the attempt being retried."""
    return state.outcome.exception() if state.outcome is not None and state.outcome.failed else None
