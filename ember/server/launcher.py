"""Run `ember serve` as a child process on 127.0.0.1 and a free port (tests, `ember bench serve`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_LISTENING = re.compile(r"ember serve: listening on (http://\S+)")


class ServerProcess:
    """``python -m ember.cli serve --host 127.0.0.1 --port 0 ARGS``; the port the server bound is
    read from its log, so there is no race for a port picked in advance.

    >>> with ServerProcess(["--model", "debug-llama"], log_path=Path("serve.log")) as server:
    ...     print(server.url)  # http://127.0.0.1:PORT
    """

    def __init__(
        self,
        args: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        self.env = env
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            "ember.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *self.args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
            )
        try:
            self.url = self._wait_for_url()
            self._wait_for_health()
        except BaseException:
            self.kill()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the server drains, then exits); SIGKILL if it is still there after ``timeout``.
        Returns the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"ember serve exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"ember serve did not start in {self.startup_timeout} s:\n{self.log()[-4000:]}")

    def _wait_for_health(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.url}/health never answered 200:\n{self.log()[-4000:]}") from None
            time.sleep(0.1)
