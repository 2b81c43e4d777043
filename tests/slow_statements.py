"""A filter that makes a statement outlast the ``statement_timeout_2s`` fixture (conftest.py).

Every statement that reads rows filtered by it waits 30 s, whatever the machine, so a search
over them always meets a statement_timeout of 2 s, while the other statements of a busy machine
have time enough (100 ms could be reached by any statement under load).
"""

from django.db.models.expressions import RawSQL

SLOW_ROWS = RawSQL("(SELECT 0 FROM pg_sleep(30))", [])
