"""What the shared rate limit costs each request to the API: with no limit set, and with one.

Every request a search or a worker sends passes :func:`semantic.ratelimit.try_acquire`
first. With ``REQUESTS_PER_MINUTE`` or ``TOKENS_PER_MINUTE`` set it counts the request:
a transaction that locks and updates the key's row, and inside a caller's transaction
(``ATOMIC_REQUESTS``) a connection of its own for it. With neither (the default) it reads
whether the key is paused. Both timed here in the same run, outside a transaction and
inside ``transaction.atomic()``, 200 calls each after 30 untimed, the four in a seeded
random order each time; the ratio
divides the counting path by the read. A key of its own, so a worker on the same
database never holds its row.

    .venv/bin/python -m benchmarks.rate_limit
"""

from __future__ import annotations

import os
import random
import statistics
import time
from contextlib import nullcontext

from benchmarks.common import setup

CALLS = 200
WARM_UP = 30


class ProbeBackend:
    """Only what :func:`semantic.ratelimit.limit_key` reads of a backend."""

    name = "benchmark"
    model_id = "rate-limit-probe"
    api_key = "not-a-key"


def main() -> None:
    setup(database="semantic_bench")
    from django.conf import settings
    from django.db import transaction
    from django.test import override_settings

    from semantic import ratelimit
    from semantic.models import RateLimit

    backend = ProbeBackend()
    RateLimit.objects.filter(key=ratelimit.limit_key(backend)).delete()
    limits = {"no limit set": {}, "a limit set (counted)": {"REQUESTS_PER_MINUTE": 10**9}}
    times: dict[tuple[str, str], list[float]] = {}
    load_before = os.getloadavg()
    places = {"outside a transaction": nullcontext, "inside atomic()": transaction.atomic}
    cells = [(place, label) for place in places for label in limits]
    order = random.Random("rate limit order")
    for call in range(WARM_UP + CALLS):
        for place, label in order.sample(cells, len(cells)):
            with override_settings(SEMANTIC={**settings.SEMANTIC, **limits[label]}):
                started = time.perf_counter()
                with places[place]():
                    assert ratelimit.try_acquire(backend, tokens=10) == 0
                if call >= WARM_UP:
                    times.setdefault((place, label), []).append(time.perf_counter() - started)
    counted = RateLimit.objects.get(key=ratelimit.limit_key(backend)).requests
    print(f"{CALLS} calls per cell after {WARM_UP}; median ms; load average {load_before[0]:.2f} before,")
    print(f"{os.getloadavg()[0]:.2f} after; requests counted: {counted} (the counted cells' {2 * (WARM_UP + CALLS)})")
    for place in places:
        read, count = (statistics.median(times[(place, label)]) * 1000 for label in limits)
        print(f"  {place:<22} no limit {read:6.3f} ms   counted {count:6.3f} ms   ratio {count / read:5.1f}")
    RateLimit.objects.filter(key=ratelimit.limit_key(backend)).delete()


if __name__ == "__main__":
    main()
