"""`make demo`: start aiki-server on its embedded SQLite default, run the onboarding workflow with a
worker, print the result, stop the server.

    python examples/demo.py [--port 9090] [--database-url sqlite:///./aiki.db]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onboarding import run_once


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"aiki-server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"aiki-server did not become ready at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--database-url", default="sqlite:///./aiki.db")
    args = parser.parse_args()
    port = args.port
    if not port_is_free(port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        print(f"port {args.port} is busy, using {port}")
    url = f"http://127.0.0.1:{port}"

    print(f"$ aiki-server --port {port} --database-url {args.database_url}")
    server = subprocess.Popen(
        [sys.executable, "-m", "aiki_server", "--port", str(port), "--database-url", args.database_url],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_ready(url, server)
        started = time.perf_counter()
        output = asyncio.run(run_once(url, f"ada-{os.getpid()}-{int(time.time())}@example.com"))
        print(f"result ({(time.perf_counter() - started) * 1000:.0f} ms):")
        print(json.dumps(output, indent=2))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(15)
    if code != 0:
        sys.exit(f"aiki-server exited with code {code}")
    print("server stopped cleanly. Run it yourself with: aiki-server   (see README.md)")


if __name__ == "__main__":
    main()
