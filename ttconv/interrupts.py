"""SIGINT and SIGTERM as exceptions, and the short moments in which they must wait.

The command line turns both signals into exceptions (Interrupted, Terminated)
so that clean-up code runs. ``held()`` defers them while a temporary file is created
or renamed, so that no instant leaves a file behind with nobody left to remove it.
"""
import contextlib
import importlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT under install(). A subclass, because CPython 3.11 marks the process to die by
    SIGINT at exit when a plain KeyboardInterrupt passes through exec() of a string (as in
    dataclasses), even if the exception is handled later."""


class Terminated(BaseException):
    """SIGTERM under install(), raised like KeyboardInterrupt so that clean-up runs."""


def _raise_for(signum, frame):
    if signum == signal.SIGINT:
        raise Interrupted()
    raise Terminated()


def outcome(exc):
    """(exit status, past participle) for a KeyboardInterrupt or Terminated: (130, "interrupted") or (143, "terminated")."""
    return (130, "interrupted") if isinstance(exc, KeyboardInterrupt) else (143, "terminated")


def install():
    """Make SIGINT raise Interrupted (a KeyboardInterrupt) and SIGTERM raise Terminated; returns the previous handlers."""
    return {signum: signal.signal(signum, _raise_for) for signum in SIGNALS}


def finish():
    """Ignore both signals from now on: the command has done its work (or reported why not).

    SIG_IGN, unlike a Python handler, stays in force while the interpreter shuts down."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def restore(previous):
    """Put back the handlers that install() replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def held():
    """Defer SIGINT and SIGTERM to the end of the block, then deliver them to the handlers in force.

    Only the main thread can change handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []

    def defer(signum, frame):
        pending.append(signum)

    previous = {signum: signal.signal(signum, defer) for signum in SIGNALS}
    try:
        yield
    finally:
        restore(previous)
        if pending:
            signal.raise_signal(pending[0])


def import_held(name):
    """Import a module with SIGINT and SIGTERM held: an interrupt inside a C extension's import
    would otherwise surface as an ImportError (numpy turns it into one)."""
    with held():
        return importlib.import_module(name)
