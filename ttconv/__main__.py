"""`python -m ttconv` and the `ttconv` command.

The signal handlers are installed before anything else is imported, so that Ctrl-C or
SIGTERM at any instant, even while numpy or jax load, ends in one line and exit 130/143
(see ttconv.interrupts). The handlers stay until the process exits: once the command is
done, signals are ignored.
"""
import os
import sys

from ttconv import interrupts
from ttconv.errors import TtconvError


def limit_blas_threads(argv, environ):
    """Give numpy's OpenBLAS one thread unless the command multiplies large matrices with numpy
    (`check`, or a LoRA merge: --merge-lora) or the user set OPENBLAS_NUM_THREADS: at import OpenBLAS
    starts a thread per further core, which spins about 0.08 s of processor time waiting for work
    that a conversion never gives it. Call before numpy loads."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command != "check" and "--merge-lora" not in argv:
        environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def run():
    """Process entry point; returns the exit status."""
    version_only = sys.argv[1:] == ["--version"]  # it needs the backend, not the whole command line
    try:
        interrupts.install()
        limit_blas_threads(sys.argv[1:], os.environ)
        with interrupts.held():  # numpy turns an interrupt during its import into an ImportError
            import numpy  # noqa: F401
            if version_only:
                from ttconv import version_text

                line = version_text()
            else:
                from ttconv.cli import run_command
        interrupts.check()
    except (KeyboardInterrupt, interrupts.Terminated) as exc:
        interrupts.finish()
        status, what = interrupts.outcome(exc)
        print(f"ttconv: {what}; no output was written", file=sys.stderr)
        return status
    except TtconvError as exc:  # what loading refuses: a TTCONV_BACKEND that names no backend, or c without it
        interrupts.finish()
        if "--verbose" in sys.argv[1:]:
            raise
        print(f"ttconv: error: {exc}", file=sys.stderr)
        return 1
    if version_only:
        print(line)
        interrupts.finish()
        return 0
    return run_command()


def _watched():
    """True when a profiler, tracer or coverage tool is attached: it writes its results at exit."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+
    return monitoring is not None and any(monitoring.get_tool(tool) is not None for tool in range(6))


def main():
    """The `ttconv` command: run(), then end the process with its status at once. Every output is
    fsynced and in place by then, so the interpreter's teardown (unloading numpy and the modules,
    joining idle helper threads: 30-50 ms here, a tenth of a small command) is skipped; the streams
    are flushed first. A status that is not a number (a message), or a profiler or coverage tool
    that is attached, takes the ordinary exit."""
    try:
        status = run()
    except SystemExit as exc:  # argparse: --help, usage errors
        status = exc.code
    if status is None:
        status = 0
    if not isinstance(status, int) or _watched():
        sys.exit(status)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (e.g. piped into head) before the last lines
        status = status or 1
    try:
        sys.stderr.flush()
    except OSError:  # nowhere left to say anything
        pass
    os._exit(status)


if __name__ == "__main__":
    main()
