"""What the main job shows: the project's own lines and progress bars on the terminal, everything else in a log.

``rlhf run`` wraps the pipeline in :func:`quiet_console`: the process's stdout and stderr file descriptors go to
``OUT/rlhf.log``, so Ray's, DeepSpeed's and torch's messages (from C++ too, and from every process Ray starts here)
land there; Python's ``sys.stdout``/``sys.stderr`` become filters that copy every line to that log and show on the
terminal only the project's own lines: those starting ``[rlhf]`` or ``rlhf:``, also when Ray forwards them from a
worker as ``(RayTrainWorker pid=N) [rlhf] ...``. Progress bars write to :func:`terminal` directly.
``--verbose`` leaves the streams alone.
"""

from __future__ import annotations

import io
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

LOG_NAME = "rlhf.log"
OWN_LINE = re.compile(r"^(\([^()]*pid=\d+[^()]*\)\s*)?(\[rlhf\]|rlhf:)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the "(Worker pid=N)" prefix

_terminal: TextIO | None = None


def terminal() -> TextIO:
    """The stream progress bars write to: the real terminal while quiet, else stderr."""
    return _terminal or sys.stderr


class _LineFilter(io.TextIOBase):
    """A text stream that writes everything to ``log`` and the project's own complete lines to ``shown``: lines that
    start as OWN_LINE says, and the lines after one in the same write (a table printed under its ``[rlhf]`` title)."""

    def __init__(self, log: TextIO, shown: TextIO):
        self.log, self.shown, self.pending = log, shown, ""
        self.pending_own = False  # the unfinished line began in a write that showed a line before it

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        own = self.pending_own
        for line in lines:
            own = own or bool(OWN_LINE.match(ANSI.sub("", line)))
            if own:
                self.shown.write(line + "\n")
                self.shown.flush()
        self.pending_own = own and bool(self.pending)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.shown.flush()

    def fileno(self) -> int:  # libraries that write to the fd (faulthandler...) reach the log
        return self.log.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return self.log.encoding

    def writable(self) -> bool:
        return True


@contextmanager
def quiet_console(out: Path, verbose: bool = False) -> Iterator[Path | None]:
    """Send this process's output (and its children's) to ``out/rlhf.log`` while showing the project's own lines;
    yields the log's path (None with ``verbose``, which changes nothing)."""
    global _terminal
    if verbose:
        yield None
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOG_NAME
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    term_out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    term_err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    log = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _LineFilter(log, term_out), _LineFilter(log, term_err)
    _terminal = term_err
    try:
        yield path
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        _terminal = None
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        # log, term_out and term_err stay open: a logging handler made meanwhile may still hold a filter.
