"""A progress bar on stderr (bytes, or layers), shown only when stderr is a terminal."""
import sys

from . import interrupts


class Progress:
    """Context manager with advance(n); silent when quiet or stderr is not a terminal.
    The unit is bytes ("B", scaled to KB, MB...) or a word such as "layer"."""

    def __init__(self, total, label, quiet=False, unit="B"):
        self._bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            scaled = unit == "B"
            self._bar = tqdm(total=total, desc=label, unit=unit, unit_scale=scaled,
                             unit_divisor=1024 if scaled else 1000, leave=False, file=sys.stderr)

    def advance(self, n):
        """Count n more units done; also a safe point for a pending Ctrl-C (interrupts.check)."""
        interrupts.check()
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
        return False
