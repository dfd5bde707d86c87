"""`tvmlm serve` in a child process (tests, load runs): start it on a free port, wait until it
listens, stop it with a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

class ServerProcess:
    """`python -m tvmlm.cli serve MODEL --port 0 *args`, its output collected in `lines`; `url`
    is its /v1 base URL once it listens (RuntimeError with its output if it exits first)."""

    def __init__(self, model: str | Path, *args: str, timeout: float = 300.0) -> None:
        cmd = [sys.executable, "-m", "tvmlm.cli", "serve", str(model), "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        listening = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"on (http://\S+/v1)", line)
                if m and not listening.is_set():
                    self.url = m.group(1)
                    listening.set()
            listening.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not listening.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError("tvmlm serve did not start:\n" + self.output)

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            return self.wait(timeout)
        finally:
            self.stop_seconds = time.monotonic() - t0
            self.kill()
