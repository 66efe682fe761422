"""SIGINT and SIGTERM under the command line: noted when they arrive, raised where it is safe.

A Python signal handler that raises can fire anywhere: inside a finalizer or weakref
callback (where the exception is swallowed with a traceback), inside the threading
internals of the writer's queues, between creating a temporary file and recording its
name. So install() makes the handlers only note the signal, and the long-running work
calls check() at safe points — every progress step, every buffer written, every window
of a scanned file — which raises Interrupted (a KeyboardInterrupt) or Terminated there,
so that clean-up code runs. Work that opens no file of ours and has no such points (a
hub download) runs in an ``immediate()`` block, where the handlers raise at once.

This module is the first thing `python -m ttconv` loads, so it imports nothing but
``signal`` (loaded with the interpreter): every import before install() is a moment in
which a signal would end the process with Python's own traceback.
"""
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT under install(). A subclass, because CPython 3.11 marks the process to die by
    SIGINT at exit when a plain KeyboardInterrupt passes through exec() of a string (as in
    dataclasses), even if the exception is handled later."""


class Terminated(BaseException):
    """SIGTERM under install(), raised like KeyboardInterrupt so that clean-up runs."""


class _State:
    pending = None  # the signal noted and not yet raised
    immediate = 0  # depth of immediate() blocks


def _exception(signum):
    return Interrupted() if signum == signal.SIGINT else Terminated()


def _note(signum, frame):
    if _State.pending is None:
        _State.pending = signum
    if _State.immediate:
        check()


def check():
    """Raise the exception of a signal that came since the last check (a safe point)."""
    signum, _State.pending = _State.pending, None
    if signum is not None:
        raise _exception(signum)


class immediate:
    """Context manager: inside it the handlers raise at once (for work with no safe points and no
    file of ours open, such as a download); a signal noted before it is raised on entry."""

    def __enter__(self):
        _State.immediate += 1
        check()
        return self

    def __exit__(self, *exc_info):
        _State.immediate -= 1
        return False


def outcome(exc):
    """(exit status, past participle) for a KeyboardInterrupt or Terminated: (130, "interrupted") or (143, "terminated")."""
    return (130, "interrupted") if isinstance(exc, KeyboardInterrupt) else (143, "terminated")


def install():
    """Note SIGINT and SIGTERM for check(); returns the previous handlers, for restore()."""
    _State.pending, _State.immediate = None, 0
    return {signum: signal.signal(signum, _note) for signum in SIGNALS}


def finish():
    """Ignore both signals from now on: the command has done its work (or reported why not).

    SIG_IGN, unlike a Python handler, stays in force while the interpreter shuts down."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _State.pending = None


def restore(previous):
    """Put back the handlers that install() or held() replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class held:
    """Context manager: SIGINT and SIGTERM that arrive inside the block are delivered, to the
    handlers in force before it, when it ends (with install()'s handlers: noted for check()).
    Outside the main thread (where handlers cannot be changed) the block runs as it is."""

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
    would otherwise surface as an ImportError (numpy turns it into one).

    The cyclic garbage collector pauses meanwhile, and what exists afterwards is frozen out of
    later collections (gc.freeze): jax's import builds objects by the hundred thousand, which the
    collector would otherwise scan again and again (about a tenth of a second of a conversion). A
    module imported already is returned as it is, freezing nothing."""
    import gc
    import importlib
    import sys

    if name in sys.modules:
        return sys.modules[name]
    collecting = gc.isenabled()
    gc.disable()
    try:
        with held():
            return importlib.import_module(name)
    finally:
        if collecting:
            gc.freeze()
            gc.enable()
