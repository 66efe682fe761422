"""A bytes progress bar on stderr, shown only when stderr is a terminal."""
import sys


class Progress:
    """Context manager with advance(nbytes); silent when quiet or stderr is not a terminal."""

    def __init__(self, total_bytes, label, quiet=False):
        self._bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, desc=label, unit="B", unit_scale=True,
                             unit_divisor=1024, leave=False, file=sys.stderr)

    def advance(self, nbytes):
        if self._bar is not None:
            self._bar.update(nbytes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
        return False
