"""The warm-up starts where requests are served, and a process forked while it loads gets a usable model."""

import multiprocessing
import os
import threading

import pytest

from semantic.backends import local
from semantic.backends.local import LocalBackend
from semantic.warmup import serves_requests


@pytest.mark.parametrize(
    "argv",
    [
        ["/srv/venv/bin/gunicorn", "mysite.wsgi"],
        ["/srv/venv/lib/python3.11/site-packages/gunicorn/__main__.py", "mysite.wsgi", "--preload"],
        ["/srv/venv/lib/python3.11/site-packages/uvicorn/__main__.py", "mysite.asgi:application"],
        ["/srv/venv/lib/python3.11/site-packages/waitress/__main__.py", "mysite.wsgi:application"],
        ["/srv/venv/bin/waitress-serve", "mysite.wsgi:application"],
        ["manage.py", "runserver", "--noreload"],
    ],
)
def test_servers_warm_up_started_by_their_script_or_with_python_m(argv):
    assert serves_requests(argv, environ={})


@pytest.mark.parametrize(
    "argv",
    [
        ["manage.py", "migrate"],
        ["manage.py", "runserver"],  # the autoreloader's parent: its child serves
        ["/srv/venv/lib/python3.11/site-packages/pytest/__main__.py", "tests"],
        [],
    ],
)
def test_other_processes_do_not_warm_up(argv):
    assert not serves_requests(argv, environ={})


#: Set when the forking thread enters ``os.fork()``: the test's own at-fork hook, registered
#: after the library's and so run before it, lets the model's weights through only then.
_forking: threading.Event | None = None


def _announce_fork() -> None:
    if _forking is not None:
        _forking.set()


os.register_at_fork(before=_announce_fork)


def _embed_in_child(backend, queue):
    queue.put(backend.embed(["a forked worker searches"], task_type="RETRIEVAL_QUERY", dimensions=384)[0])


@pytest.fixture
def weights_behind_a_pipe(tmp_path):
    """The model directory with its weights file replaced by a named pipe: the warm-up's load
    holds the model lock, blocked reading the weights, until the test writes them."""
    source = LocalBackend().model_path()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for entry in source.iterdir():
        if entry.name != "model.safetensors":
            (model_dir / entry.name).symlink_to(entry)
    os.mkfifo(model_dir / "model.safetensors")
    return model_dir, (source / "model.safetensors").read_bytes()


def test_a_process_forked_while_the_warm_up_loads_gets_the_model_not_a_held_lock(weights_behind_a_pipe, tmp_path):
    """gunicorn --preload (uwsgi without --lazy-apps) loads the app, so starts the warm-up, in the
    master and forks its workers a moment later. A worker forked while the load held the lock
    inherited it held, with no thread left to release it: its first search waited for ever."""
    global _forking
    model_dir, weights = weights_behind_a_pipe
    cache = tmp_path / "cache"
    LocalBackend(cache_dir=cache).prepare()
    backend = LocalBackend(path=str(model_dir), runtime="onnx", cache_dir=cache)
    loader = backend.warm_up()
    # Opening a pipe for writing waits for its reader: the warm-up, inside load(), holding the lock.
    pipe = (model_dir / "model.safetensors").open("wb")
    assert local._lock.locked()

    _forking = threading.Event()

    def write_weights_once_forking():
        _forking.wait()
        with pipe:
            pipe.write(weights)

    writer = threading.Thread(target=write_weights_once_forking)
    writer.start()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_embed_in_child, args=(backend, queue))
    try:
        child.start()
        child.join(timeout=60)
        assert not child.is_alive(), "the forked process is stuck on the model lock"
        assert child.exitcode == 0
        vector = queue.get(timeout=10)
    finally:
        _forking.set()
        _forking = None
        if child.is_alive():
            child.kill()
            child.join()
        writer.join()
        loader.join()
    expected = backend.embed(["a forked worker searches"], task_type="RETRIEVAL_QUERY", dimensions=384)[0]
    assert vector == pytest.approx(expected, abs=1e-6)
