"""The test settings on django-q2's Redis broker instead of its ORM broker.

For the ``qcluster`` processes of tests/test_redis_workers.py, which stand for workers on
other machines: they share the test database and the redis-server that test starts, on
the port in ``SEMANTIC_TEST_REDIS_PORT``. Without ``"orm"`` django-q2 picks Redis.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import Q_CLUSTER as ORM_CLUSTER
from tests.settings import SEMANTIC as TEST_SEMANTIC


def redis_connection(port: int) -> dict[str, object]:
    """django-q2's ``Q_CLUSTER["redis"]`` for the test's redis-server."""
    return {"host": "127.0.0.1", "port": port, "db": 0}


Q_CLUSTER = {key: value for key, value in ORM_CLUSTER.items() if key != "orm"}
# Workers hand rows on as production workers do, as a task on the broker (the test settings'
# SYNC would embed a hand-on inline, inside the worker that handed it on).
SEMANTIC = {**TEST_SEMANTIC, "SYNC": False}
Q_CLUSTER["redis"] = redis_connection(int(os.environ.get("SEMANTIC_TEST_REDIS_PORT", "6379")))
