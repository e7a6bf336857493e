"""The Docker image and compose files, checked without a Docker engine (none runs here):

- the Dockerfile passes hadolint and has what the deploy relies on (two stages, a non-root user,
  EXPOSE 9090, a HEALTHCHECK on /readyz, the server on 0.0.0.0);
- docker-compose.yml wires the server to Postgres and Redis, starts it only once both are healthy,
  and keeps Postgres on a volume;
- the Dockerfile's build steps run outside Docker: the files it COPYs, installed into a fresh
  virtualenv the way its RUN line does, give a server that starts with the image's environment,
  passes the image's HEALTHCHECK command, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..procs import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "packaging" / "Dockerfile"
COMPOSE = ROOT / "packaging" / "docker-compose.yml"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def env_of_final_stage() -> dict[str, str]:
    stages: list[list[tuple[str, str]]] = [[]]  # the first holds global ARGs, before any FROM
    for word, rest in instructions():
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    env: dict[str, str] = {}
    for word, rest in stages[-1]:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def healthcheck_command() -> list[str]:
    [rest] = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    cmd = rest[rest.index("CMD ") + 4 :].strip()
    assert cmd.startswith("["), "HEALTHCHECK CMD should use the exec (JSON) form"
    parsed: list[str] = json.loads(cmd)
    return parsed


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint missing: run `make packaging-tools`"
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", DOCKERFILE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is not vacuous: a root image with an unpinned apt install fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nCMD curl x\n")
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert subprocess.run([hadolint, bad], capture_output=True, timeout=60).returncode != 0


def test_dockerfile_essentials() -> None:
    steps = instructions()
    words = [w for w, _ in steps]
    froms = [rest for w, rest in steps if w == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0]  # multi-stage: the build stage is named
    assert any("--from=" in rest for w, rest in steps if w == "COPY")  # the runtime copies from it
    assert "slim" in froms[-1]

    users = [rest for w, rest in steps if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert [rest for w, rest in steps if w == "EXPOSE"] == ["9090"]
    assert "/readyz" in " ".join(healthcheck_command())
    assert [rest for w, rest in steps if w == "ENTRYPOINT"] == ['["aiki-server"]']

    env = env_of_final_stage()
    assert env["AIKI_HOST"] == "0.0.0.0"
    assert env["AIKI_PORT"] == "9090"
    assert env["AIKI_DATABASE_URL"].startswith("sqlite:////var/lib/aiki/")
    assert [rest for w, rest in steps if w == "VOLUME"] == ['["/var/lib/aiki"]']


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # everything out, then only what is COPYed back in
    copied = {
        src.rstrip("/")
        for w, rest in instructions()
        if w == "COPY" and "--from=" not in rest
        for src in rest.split()[:-1]
    }
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed, copied - allowed


def test_compose_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"aiki-server", "postgres", "redis"}

    server = services["aiki-server"]
    build = server["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert server["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    env = server["environment"]
    assert env["AIKI_DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["AIKI_DATABASE_URL"]
    assert env["AIKI_REDIS_URL"].startswith("redis://redis:6379")
    assert any(str(p).endswith(":9090") for p in server["ports"])

    for name in ("postgres", "redis"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 1, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    volume, _, mount = services["postgres"]["volumes"][0].partition(":")
    assert mount == "/var/lib/postgresql/data"
    assert volume in compose["volumes"]


@pytest.mark.timeout(600)
def test_the_dockerfile_build_steps_outside_docker(tmp_path: Path) -> None:
    # The build stage's COPY lines, into an empty directory laid out like /src.
    src = tmp_path / "src"
    src.mkdir()
    for w, rest in instructions():
        if w == "COPY" and "--from=" not in rest:
            *sources, dest = rest.split()
            for source in sources:
                target = src / dest / Path(source).name if dest.endswith("/") else src / dest
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target)

    # The build stage's RUN line, with /opt/aiki moved into the temporary directory.
    [run] = [rest for w, rest in instructions() if w == "RUN" and "/opt/aiki" in rest]
    venv = tmp_path / "opt-aiki"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("AIKI_")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    script = run.replace("python -m venv", f"{shlex.quote(sys.executable)} -m venv").replace("/opt/aiki", str(venv))
    built = subprocess.run(["sh", "-c", script], cwd=src, env=env, capture_output=True, text=True, timeout=500)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert built.stdout.strip().endswith("aiki-server 0.1.0")

    # The runtime stage: its ENV, with the port and the data directory moved here.
    port = free_port()
    image_env = env_of_final_stage()
    runtime_env = {
        **env,
        **image_env,
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "AIKI_PORT": str(port),
        "AIKI_DATABASE_URL": image_env["AIKI_DATABASE_URL"].replace("/var/lib/aiki", str(tmp_path / "data")),
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["aiki-server"], env=runtime_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 30, proc)
        health = subprocess.run(healthcheck_command(), env=runtime_env, capture_output=True, timeout=30)
        assert health.returncode == 0, health.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    server_log = log_path.read_text()
    assert code == 0, server_log
    assert "Traceback" not in server_log
    assert f"listening on http://0.0.0.0:{port}" in server_log  # AIKI_HOST from the image
    assert (tmp_path / "data" / "aiki.db").is_file()

    # The same health check fails once the server is gone.
    down = subprocess.run(healthcheck_command(), env=runtime_env, capture_output=True, timeout=30)
    assert down.returncode != 0
