"""SIGINT and SIGTERM as exceptions, and the short moments in which they must wait.

The command line turns both signals into exceptions (Interrupted, Terminated) so that
clean-up code runs. ``held()`` defers them while a temporary file is created or
renamed, so that no instant leaves a file behind with nobody left to remove it.

This module is the first thing `python -m ttconv` loads, so it imports nothing but
``signal``: every import before install() is a moment in which a signal would end the
process with Python's own traceback.
"""
import signal

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


class held:
    """Context manager: SIGINT and SIGTERM that arrive inside the block are delivered, to the
    handlers in force before it, when it ends. Outside the main thread (where handlers cannot
    be changed) the block runs as it is."""

    def __enter__(self):
        self._pending = []
        self._previous = {}
        try:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._defer)
        except ValueError:  # not the main thread
            self._previous = None
        except BaseException:  # a signal between the two changes: leave no deferring handler behind
            restore(self._previous)
            raise
        return self

    def _defer(self, signum, frame):
        self._pending.append(signum)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            restore(self._previous)
            if self._pending:
                signal.raise_signal(self._pending[0])
        return False


def import_held(name):
    """Import a module with SIGINT and SIGTERM held: an interrupt inside a C extension's import
    would otherwise surface as an ImportError (numpy turns it into one)."""
    import importlib

    with held():
        return importlib.import_module(name)
