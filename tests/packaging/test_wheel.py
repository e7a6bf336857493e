"""The distributions `make dist` builds: the aiki-client wheel installs into a fresh virtualenv
(its dependencies from the package index), is pure Python, pulls in nothing compiled, and runs a
workflow against a real server; the `aiki` command comes with it.

`make test` builds dist/ first (`test` depends on `dist`); on its own this module runs
`make dist`, which rebuilds only when a source changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from ..procs import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
VERSION = "0.1.0"
CLIENT_WHEEL = DIST / f"aiki_client-{VERSION}-py3-none-any.whl"
SERVER_WHEEL = DIST / f"aiki_server-{VERSION}-py3-none-any.whl"

# Creating the virtualenv downloads the client's dependencies (a few MiB).
pytestmark = pytest.mark.timeout(600)


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH and no project venv: the fresh venv must see only what it installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("AIKI_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dists() -> Path:
    done = subprocess.run(["make", "-s", "dist"], cwd=ROOT, capture_output=True, text=True, timeout=500, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return DIST


@pytest.fixture(scope="module")
def client_venv(dists: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120, env=clean_env())
    done = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", CLIENT_WHEEL],
        env=clean_env(),
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def wheel_metadata(wheel: Path) -> tuple[dict[str, str], list[str]]:
    """(the WHEEL file's fields, the Requires-Dist lines of METADATA)."""
    with zipfile.ZipFile(wheel) as z:
        info = f"{wheel.name.split('-')[0]}-{VERSION}.dist-info"
        fields = dict(Parser().parsestr(z.read(f"{info}/WHEEL").decode()).items())
        requires = Parser().parsestr(z.read(f"{info}/METADATA").decode()).get_all("Requires-Dist") or []
    return fields, requires


def test_make_dist_builds_sdists_and_pure_wheels_of_both(dists: Path) -> None:
    for name in ("aiki_client", "aiki_server"):
        assert (dists / f"{name}-{VERSION}.tar.gz").is_file(), name
    for wheel in (CLIENT_WHEEL, SERVER_WHEEL):
        fields, _ = wheel_metadata(wheel)
        assert fields["Tag"] == "py3-none-any", wheel.name
        assert fields["Root-Is-Purelib"] == "true", wheel.name

    _, client_requires = wheel_metadata(CLIENT_WHEEL)
    assert sorted(r.split(">")[0].split("=")[0] for r in client_requires) == ["click", "redis"]
    _, server_requires = wheel_metadata(SERVER_WHEEL)
    assert f"aiki-client=={VERSION}" in server_requires

    with zipfile.ZipFile(CLIENT_WHEEL) as z:
        names = z.namelist()
        entry_points = z.read(f"aiki_client-{VERSION}.dist-info/entry_points.txt").decode()
    assert "aiki_client/cli.py" in names and "aiki_client/wire.py" in names
    assert not any(n.startswith(("aiki_server/", "tests/")) for n in names)
    assert "aiki = aiki_client.cli:main" in entry_points


def test_client_wheel_pulls_in_nothing_compiled(client_venv: Path) -> None:
    site = next((client_venv / "lib").glob("python3*/site-packages"))
    # pip (and setuptools, on older Pythons) come with the venv itself, not with our wheel.
    bundled = {"pip", "setuptools", "_distutils_hack", "pkg_resources"}
    installed: dict[str, dict[str, str]] = {}
    for info in site.glob("*.dist-info"):
        name = info.name.split("-")[0].lower()
        if name not in bundled and (info / "WHEEL").is_file():
            installed[name] = dict(Parser().parsestr((info / "WHEEL").read_text()).items())
    assert {"aiki_client", "redis", "click"} <= set(installed)
    impure = {name: w.get("Tag") for name, w in installed.items() if w.get("Root-Is-Purelib") != "true"}
    assert impure == {}
    assert all("-none-any" in w["Tag"] for w in installed.values()), {n: w["Tag"] for n, w in installed.items()}

    compiled = [
        str(p.relative_to(site))
        for p in site.rglob("*")
        if p.suffix in {".so", ".pyd", ".dylib"} and p.relative_to(site).parts[0] not in bundled
    ]
    assert compiled == []


WORKFLOW_SCRIPT = """
import asyncio, json, sys
import aiki_client
from aiki_client import connect, task, worker, workflow

@task("shout")
def shout(inp):
    return inp["word"].upper() + "!"

greeting = workflow("wheel-greeting")

@greeting.v("1")
async def greeting_v1(run, inp):
    return {"said": await shout.start(run, {"word": inp["word"]})}

async def main(url):
    async with await connect(url) as aiki:
        handle = await worker(id="wheel-worker", workflows=[greeting_v1],
                              subscriber={"type": "polling", "poll_interval_ms": 20}).spawn(aiki)
        try:
            run = await greeting_v1.start(aiki, {"word": "hello"})
            output = await run.wait_for_completion(timeout=30)
        finally:
            await handle.stop()
    heavy = sorted(m for m in ("sanic", "uvloop", "orjson", "asyncpg", "aiki_server") if m in sys.modules)
    print(json.dumps({"run_id": run.id, "output": output, "module": aiki_client.__file__, "heavy": heavy}))

asyncio.run(main(sys.argv[1]))
"""


def test_installed_client_runs_a_workflow_and_the_cli(
    client_venv: Path, server_process: ServerProcess, tmp_path: Path
) -> None:
    script = tmp_path / "greet.py"
    script.write_text(WORKFLOW_SCRIPT)
    done = subprocess.run(
        [client_venv / "bin" / "python", script, server_process.url],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["output"] == {"said": "HELLO!"}
    assert Path(result["module"]).is_relative_to(client_venv)  # the installed copy, not the checkout
    assert result["heavy"] == []

    listed = subprocess.run(
        [client_venv / "bin" / "aiki", "runs", "list", "--json"],
        env=clean_env(AIKI_URL=server_process.url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    [run] = json.loads(listed.stdout)["runs"]
    assert (run["id"], run["state"], run["output"]) == (result["run_id"], "completed", {"said": "HELLO!"})
