"""One progress line on stderr, shared by the long-running commands (train, evaluate)."""

from __future__ import annotations

import sys
import time


class Progress:
    """One progress line on stderr: redrawn in place on a terminal, a plain line every 30 s otherwise."""

    def __init__(self, stream=None, enabled=True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = 0.0

    def update(self, text, force=False):
        if not self.enabled:
            return
        now = time.time()
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        if self.tty:
            print("\r" + text.ljust(110), end="", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)

    def done(self, text):
        if self.enabled:
            print(("\r" if self.tty else "") + text.ljust(110), file=self.stream, flush=True)
