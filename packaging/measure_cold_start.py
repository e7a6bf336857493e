"""Cold start of the one-file server: seconds from exec to the first 200 from /readyz, each start
on a fresh SQLite file in an empty directory, with only /usr/bin:/bin on PATH.

    python3 packaging/measure_cold_start.py [dist/aiki-server] [starts, default 7]
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_start(binary: str) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--database-url", f"sqlite:///{workdir}/aiki.db"],
            env={"PATH": "/usr/bin:/bin"},
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if proc.poll() is not None:
                    sys.exit(f"{binary} exited with {proc.returncode}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                        if resp.status == 200:
                            return time.perf_counter() - started
                except OSError:
                    time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGTERM)
            if proc.wait(15) != 0:
                sys.exit(f"{binary} exited with {proc.returncode} on SIGTERM")


def main() -> None:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "dist/aiki-server")
    starts = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    times = [one_start(binary) for _ in range(starts)]
    print(
        "starts:",
        " ".join(f"{t:.2f}" for t in times),
        f"| min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s",
    )


if __name__ == "__main__":
    main()
