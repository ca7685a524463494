"""Where the CLI writes, and the errors it reports as one line instead of a traceback."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TextIO


class CommandError(Exception):
    """A command cannot go on; its message, one line, is shown as `error: <message>`."""


@dataclass
class Console:
    """Where the CLI writes: answers on `out`, progress and problems on `err`."""

    out: TextIO
    err: TextIO
    dim: bool = False
    """Progress lines are shown faint (an interactive terminal that allows colour)."""
    mid_line: bool = field(default=False, init=False)
    """Streamed text on `out` has not ended with a newline yet."""

    @classmethod
    def system(cls) -> Console:
        """stdout and stderr; faint progress when stderr is a terminal and NO_COLOR unset."""
        return cls(sys.stdout, sys.stderr, sys.stderr.isatty() and "NO_COLOR" not in os.environ)

    def stream(self, text: str) -> None:
        """Writes a piece of the model's answer as it arrives."""
        if text:
            self.out.write(text)
            self.out.flush()
            self.mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        """Ends streamed text with a newline, before anything else is written."""
        if self.mid_line:
            self.out.write("\n")
            self.out.flush()
            self.mid_line = False

    def print(self, text: str) -> None:
        """Writes a whole answer (or listing) on `out`."""
        self.end_line()
        print(text, file=self.out, flush=True)

    def progress(self, text: str) -> None:
        """A compact progress line on `err`."""
        self.end_line()
        print(f"\x1b[2m{text}\x1b[0m" if self.dim else text, file=self.err, flush=True)

    def problem(self, text: str) -> None:
        """A line that needs the reader's attention, on `err`."""
        self.end_line()
        print(text, file=self.err, flush=True)
