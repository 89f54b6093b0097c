"""A command run as a user runs it in a terminal: a pseudo-terminal of a given size, read through a
terminal emulator (pyte), so tests assert on the screen the user sees and press Ctrl-C as they do.

The child gets the pty as its controlling terminal, in a session of its own: a Ctrl-C written to
the pty reaches its whole foreground process group, JVMs included, as it does in a real terminal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyte

# What the JVMs print when their output reaches the terminal: log4j lines, the launcher's own warnings.
JVM_LINE = re.compile(r"\b(WARN|INFO|ERROR)\b (?!logged)|log4j|SLF4J|incubator modules|NativeCodeLoader|"
                      r"Exception in thread|at org\.apache|py4j")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")


# Run first in the child, after setsid (start_new_session): take the pty (stdin) as the controlling
# terminal, then become the command. (A preexec_fn would run Python in a forked, threaded process.)
_TAKE_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
                  " os.execvp(sys.argv[1], sys.argv[1:])")


class Terminal:
    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str], columns: int = 80,
                 lines: int = 24) -> None:
        self.columns, self.lines = columns, lines
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self._master = master
        self.screen = pyte.Screen(columns, lines)
        self._stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.RLock()
        # Every distinct screen seen, so a test can look at a frame that has since been redrawn.
        self.frames: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-c", _TAKE_TERMINAL, *argv], stdin=slave, stdout=slave,
                                        stderr=slave, cwd=cwd, env={**env, "TERM": "xterm-256color"},
                                        start_new_session=True)
        os.close(slave)
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError as error:  # EIO: the child side is closed
                if error.errno in (errno.EIO, errno.EBADF):
                    return
                raise
            if not chunk:
                return
            with self._lock:
                self.raw.extend(chunk)
                self._stream.feed(chunk)
                text = self.text()
                if not self.frames or self.frames[-1] != text:
                    self.frames.append(text)

    def text(self) -> str:
        """The screen as it stands now, one line per row, trailing blanks stripped."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def plain_output(self) -> str:
        """Everything written, escape sequences removed (lines that scrolled off the screen included)."""
        with self._lock:
            return _ANSI.sub(b"", bytes(self.raw)).decode("utf-8", "replace").replace("\r", "")

    def wait_for(self, condition: Callable[[Terminal], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if condition(self):
                    return
            if self.process.poll() is not None:
                time.sleep(0.2)  # the last output may still be in flight
                with self._lock:
                    if condition(self):
                        return
                raise AssertionError(f"the process exited ({self.process.returncode}) before {what}:\n"
                                     f"{self.plain_output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; screen:\n{self.text()}\n"
                                     f"output:\n{self.plain_output()[-4000:]}")
            time.sleep(0.1)

    def windows_then_ctrl_c(self, windows: int, timeout_s: float = 240) -> tuple[str, int]:
        """Wait until the dashboard counts `windows` windows, press Ctrl-C: the screen then, and the exit code."""
        self.wait_for(lambda t: f"· {windows} windows" in t.text(), timeout_s,
                      f"the dashboard to count {windows} windows")
        screen = self.text()
        self.ctrl_c()
        return screen, self.wait(timeout_s=180)

    def ctrl_c(self) -> None:
        os.write(self._master, b"\x03")

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self._master)
