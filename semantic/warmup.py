"""Load the local model at process start-up, in the processes that will embed.

The local model takes tens of seconds to load. Loaded on first use, the first search
after ``runserver`` and the first row a new worker embeds both wait for it; loaded in
every process, ``migrate`` or ``check`` would too. So it is loaded in the background,
and only where it will be needed:

- the process ``runserver`` serves from (the autoreloader's child, or ``--noreload``);
- a WSGI/ASGI server process (gunicorn, uwsgi, uvicorn, daphne, hypercorn, waitress), started
  by its script or with ``python -m``. A server that loads the app before forking its workers
  (gunicorn ``--preload``) loads the model in the master; the fork waits for that load, and
  the workers inherit the model (semantic/backends/local.py);
- each django-q2 worker process, when it starts (django-q2's ``post_spawn`` signal).

Other servers can call ``warm_up()`` from their WSGI module. Nothing happens unless the
configured backend is the local one, so Gemini projects pay nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: Programs whose processes serve requests: their scripts, or their packages run with ``python -m``.
SERVERS = frozenset({"gunicorn", "uwsgi", "uvicorn", "daphne", "hypercorn", "waitress-serve", "waitress"})


def serves_requests(argv: Sequence[str], environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether this process, started as ``argv``, will answer requests (and so search)."""
    if not argv:
        return False
    program = Path(argv[0])
    # ``python -m gunicorn`` (as Dockerfiles often start it) leaves .../gunicorn/__main__.py in argv[0].
    name = program.parent.name if program.name == "__main__.py" else program.name
    if name in SERVERS:
        return True
    if len(argv) > 1 and argv[1] == "runserver":
        return environ.get("RUN_MAIN") == "true" or "--noreload" in argv
    return False


def warm_up(processes: int | None = None) -> bool:
    """Start loading the local model in the background if it is the configured backend.

    ``processes``: how many processes on this machine embed side by side (a cluster's
    workers); each then uses its share of the CPUs. Returns whether a load was started.
    Safe to call more than once: the load itself happens once per process.
    """
    from semantic.backends import get_backend
    from semantic.backends.local import LocalBackend

    backend = get_backend()
    if not isinstance(backend, LocalBackend):
        return False
    if processes:
        backend.share_cpus(processes)
    backend.warm_up()
    return True


def warm_up_worker(sender: object = None, **kwargs: object) -> None:
    """django-q2 ``post_spawn`` receiver: each worker process loads its own model, and
    takes its share of the CPUs with the cluster's other workers."""
    from django_q.conf import Conf

    warm_up(processes=int(Conf.WORKERS))


def connect(argv: Sequence[str] | None = None) -> None:
    """Called from ``AppConfig.ready()``: warm up this process if it serves, and every worker it spawns."""
    try:
        from django_q.signals import post_spawn
    except ImportError:
        pass
    else:
        post_spawn.connect(warm_up_worker, dispatch_uid="semantic.warmup.warm_up_worker", weak=False)
    if serves_requests(sys.argv if argv is None else argv):
        warm_up()
