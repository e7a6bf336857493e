"""The `aiki` CLI against a real in-process server with a real worker: every command, its `--json`
output parsed, and the error paths with their exit codes (0 ok, 1 server said no / unreachable,
2 usage).

Click's CliRunner is synchronous and the CLI uses a blocking HTTP client, so each invocation runs
in a thread while the test's event loop goes on serving the in-process server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from aiki_client import Client, WorkflowRun, retry, schedule, task, worker, workflow
from aiki_client.cli import cli
from aiki_server import Server

from ..procs import free_port

ROOT = Path(__file__).resolve().parents[2]


@task("cli-greet")
async def greet(inp: dict[str, Any]) -> dict[str, str]:
    return {"hello": inp["name"]}


@task("cli-boom", retry=retry.fixed(max_attempts=2, delay_ms=10))
async def boom(inp: Any) -> None:
    raise ValueError("boom never works")


kid = workflow("cli-kid")


@kid.v("1")
async def kid_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, str]:
    return await greet.start(run, inp)


parent = workflow("cli-parent")


@parent.v("1")
async def parent_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, Any]:
    hello = await greet.start(run, {"name": inp["name"]})
    ev = await run.wait_for_event("go", timeout=timedelta(minutes=5))
    await run.sleep("nap", hours=1)
    child = await kid_v1.start_as_child(run, {"name": "kid"})
    return {"hello": hello, "event": ev.data, "child": await child.wait_for_completion()}


failing = workflow("cli-failing")


@failing.v("1")
async def failing_v1(run: WorkflowRun, inp: Any) -> None:
    await boom.start(run, inp)


ALL = [kid_v1, parent_v1, failing_v1]


async def aiki(srv: Server | str, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run `aiki --url <server> ARGS...` in a thread (the server is served by this event loop)."""
    url = srv if isinstance(srv, str) else srv.url
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, ["--url", url, *args], env=env, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
async def working(server: Server, client: Client) -> AsyncIterator[Client]:
    """The server with a worker serving the test workflows."""
    handle = await worker(
        id="cli-worker",
        workflows=ALL,
        max_concurrent_workflow_runs=10,
        subscriber={"type": "polling", "poll_interval_ms": 20},
    ).spawn(client)
    yield client
    await handle.stop()


async def wait_state(client: Client, run_id: str, state: str, timeout: float = 20.0) -> None:
    handle = await client.get_run(run_id)
    for _ in range(int(timeout / 0.02)):
        if (await handle.get_status()).state == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {state}: {(await handle.get_status()).state}")


async def test_runs_list_filters_and_pages(server: Server, working: Client) -> None:
    done = [await kid_v1.start(working, {"name": f"n{i}"}, reference_id=f"ref-{i}") for i in range(3)]
    for h in done:
        await h.wait_for_completion(timeout=20)
    bad = await failing_v1.start(working, None)
    with pytest.raises(Exception, match="boom never works"):
        await bad.wait_for_completion(timeout=20)

    table = await aiki(server, "runs", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "WORKFLOW", "STATE"]
    assert len(lines) == 1 + 4
    assert lines[1].startswith(bad.id) and "cli-failing@1" in lines[1] and "failed" in lines[1]  # newest first

    page = as_json(await aiki(server, "runs", "list", "--workflow", "cli-kid", "--json"))
    assert sorted(r["id"] for r in page["runs"]) == sorted(h.id for h in done)
    assert page["next_cursor"] is None

    by_state = as_json(await aiki(server, "--json", "runs", "list", "--state", "failed"))
    assert [r["id"] for r in by_state["runs"]] == [bad.id]
    by_ref = as_json(await aiki(server, "runs", "list", "-r", "ref-1", "--json"))
    assert [r["id"] for r in by_ref["runs"]] == [done[1].id]

    first = as_json(await aiki(server, "runs", "list", "--limit", "3", "--json"))
    rest = as_json(await aiki(server, "runs", "list", "--limit", "3", "--cursor", first["next_cursor"], "--json"))
    assert len(first["runs"]) == 3 and len(rest["runs"]) == 1 and rest["next_cursor"] is None
    assert {r["id"] for r in first["runs"] + rest["runs"]} == {bad.id, *(h.id for h in done)}
    more = await aiki(server, "runs", "list", "--limit", "3")
    assert f"--cursor {first['next_cursor']}" in more.stderr

    empty = await aiki(server, "runs", "list", "--workflow", "nope")
    assert empty.exit_code == 0 and empty.stdout.strip() == "no runs"


async def test_runs_show_events_wakeup_and_children(server: Server, working: Client) -> None:
    run = await parent_v1.start(working, {"name": "ada"}, reference_id="show-me")
    await wait_state(working, run.id, "awaiting_event")

    sent = as_json(await aiki(server, "events", "send", run.id, "go", "--data", '{"ok": true}', "--json"))
    assert sent["duplicate"] is False
    again = await aiki(server, "events", "send", run.id, "go", "--data", "1", "--reference-id", "r1")
    assert again.exit_code == 0 and "sent event 'go'" in again.stdout
    dup = await aiki(server, "events", "send", run.id, "go", "--data", "1", "--reference-id", "r1")
    assert dup.exit_code == 0 and "already sent" in dup.stdout

    await wait_state(working, run.id, "sleeping")
    woken = await aiki(server, "runs", "wakeup", run.id)
    assert woken.exit_code == 0 and f"run {run.id} is" in woken.stdout
    assert await run.wait_for_completion(timeout=20) == {
        "hello": {"hello": "ada"},
        "event": {"ok": True},
        "child": {"hello": "kid"},
    }

    shown = as_json(await aiki(server, "runs", "show", run.id, "--json"))
    assert shown["run"]["state"] == "completed"
    assert shown["run"]["input"] == {"name": "ada"}
    assert shown["run"]["output"]["event"] == {"ok": True}
    assert [(t["name"], t["state"], t["attempts"]) for t in shown["tasks"]] == [("cli-greet", "completed", 1)]
    assert [(w["kind"], w["name"], w["state"]) for w in shown["waits"]] == [
        ("event", "go", "received"),
        ("sleep", "nap", "done"),
    ]
    [child] = shown["children"]
    assert child["workflow"] == "cli-kid@1" and child["state"] == "completed"
    states = [h["state"] for h in shown["history"]]
    assert states[0] == "queued" and states[-1] == "completed"
    assert {"awaiting_event", "sleeping", "awaiting_child"} <= set(states)
    assert all(isinstance(h["at_ms"], int) for h in shown["history"])

    text = await aiki(server, "runs", "show", run.id)
    assert text.exit_code == 0, text.output
    out = text.stdout
    for expected in ("State:", "completed", "Input:", '"ada"', "Tasks:", "cli-greet", "Sleeps and event waits:"):
        assert expected in out, expected
    assert "nap" in out and "received" in out and "Children:" in out and child["id"] in out
    assert "History:" in out and "awaiting_child" in out

    # The child's own page names its parent.
    child_text = await aiki(server, "runs", "show", child["id"])
    assert f"Parent:       {run.id}" in child_text.stdout


async def test_runs_show_failed_run_shows_error_and_attempts(server: Server, working: Client) -> None:
    run = await failing_v1.start(working, {"x": 1})
    with pytest.raises(Exception, match="boom never works"):
        await run.wait_for_completion(timeout=20)

    shown = as_json(await aiki(server, "runs", "show", run.id, "--json"))
    assert shown["run"]["error"]["message"].endswith("boom never works")
    assert [(t["name"], t["state"], t["attempts"]) for t in shown["tasks"]] == [("cli-boom", "failed", 2)]
    text = await aiki(server, "runs", "show", run.id)
    assert "Error:" in text.stdout and "boom never works" in text.stdout
    assert "Output:" not in text.stdout


async def test_runs_cancel(server: Server, working: Client) -> None:
    waiting = await parent_v1.start(working, {"name": "x"})
    await wait_state(working, waiting.id, "awaiting_event")
    finished = await kid_v1.start(working, {"name": "y"})
    await finished.wait_for_completion(timeout=20)

    cancelled = as_json(await aiki(server, "runs", "cancel", waiting.id, "--reason", "not today", "--json"))
    assert cancelled["state"] == "cancelled"
    assert cancelled["error"]["message"] == "not today"
    text = await aiki(server, "runs", "cancel", finished.id)
    assert text.exit_code == 0 and "already finished (completed); left as it is" in text.stdout
    assert (await finished.get_status()).state == "completed"


async def test_workflows_list(server: Server, client: Client) -> None:
    assert (await aiki(server, "workflows", "list")).stdout.strip() == "no workflows have runs yet"
    runs = [await kid_v1.start(client, {"name": str(i)}) for i in range(3)]
    await parent_v1.start(client, {"name": "p"})
    await (await client.get_run(runs[0].id)).cancel("x")

    answer = as_json(await aiki(server, "workflows", "list", "--json"))
    by_name = {w["name"]: w for w in answer["workflows"]}
    assert by_name["cli-kid"]["total"] == 3
    assert by_name["cli-kid"]["counts"] == {"queued": 2, "cancelled": 1}
    assert by_name["cli-kid"]["versions"] == [{"version": "1", "total": 3, "counts": {"queued": 2, "cancelled": 1}}]
    assert by_name["cli-parent"]["counts"] == {"queued": 1}

    table = (await aiki(server, "workflows", "list")).stdout.splitlines()
    assert table[0].split() == ["WORKFLOW", "VERSION", "RUNS", "QUEUED", "CANCELLED"]
    assert table[1].split() == ["cli-kid", "1", "3", "2", "1"]
    assert table[2].split() == ["cli-parent", "1", "1", "1", "0"]


async def test_schedules_list(server: Server, client: Client) -> None:
    assert (await aiki(server, "schedules", "list")).stdout.strip() == "no schedules"
    nightly = await schedule(cron="0 3 * * *", tz="Europe/Paris").activate(client, kid_v1, {"name": "n"})

    answer = as_json(await aiki(server, "schedules", "list", "--json"))
    [s] = answer["schedules"]
    assert s["id"] == nightly.id and s["cron"] == "0 3 * * *" and s["state"] == "active"
    table = (await aiki(server, "schedules", "list")).stdout
    assert nightly.id in table and "cron 0 3 * * * (Europe/Paris)" in table and "cli-kid@1" in table


async def test_unknown_run_is_a_clear_error_with_exit_1(server: Server) -> None:
    for args in (["runs", "show", "no-such-run"], ["runs", "cancel", "no-such-run"], ["runs", "wakeup", "no-such-run"]):
        result = await aiki(server, *args)
        assert result.exit_code == 1, args
        assert "no run with id 'no-such-run'" in result.stderr
        assert "not_found" in result.stderr
        assert result.stdout == ""
    sent = await aiki(server, "events", "send", "no-such-run", "go")
    assert sent.exit_code == 1 and "no-such-run" in sent.stderr


async def test_a_finished_run_refuses_events_with_exit_1(server: Server, client: Client) -> None:
    run = await kid_v1.start(client, {"name": "x"})
    await run.cancel("done")

    result = await aiki(server, "events", "send", run.id, "go")
    assert result.exit_code == 1
    assert "[conflict]" in result.stderr


async def test_api_key_from_the_environment() -> None:
    async with Server(database_url="sqlite:///:memory:", port=0, api_key="s3cret") as srv:
        refused = await aiki(srv, "workflows", "list")
        assert refused.exit_code == 1 and "--api-key or AIKI_API_KEY" in refused.stderr
        allowed = await aiki(srv, "workflows", "list", "--json", env={"AIKI_API_KEY": "s3cret"})
        assert as_json(allowed) == {"workflows": []}
        wrong = await aiki(srv, "--api-key", "wrong", "schedules", "list", env={"AIKI_API_KEY": "s3cret"})
        assert wrong.exit_code == 1 and "[unauthorized]" in wrong.stderr  # the flag wins over the variable
        right = await aiki(srv, "--api-key", "s3cret", "schedules", "list")
        assert right.exit_code == 0 and right.stdout.strip() == "no schedules"


async def test_usage_errors_exit_2(server: Server) -> None:
    cases = [
        ["runs", "list", "--state", "bogus"],
        ["runs", "list", "--limit", "0"],
        ["runs", "show"],
        ["events", "send", "run-1", "go", "--data", "{not json"],
        ["runs", "explode"],
    ]
    for args in cases:
        result = await aiki(server, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "Usage:" in result.stderr or "Error:" in result.stderr


def run_aiki(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter: exit codes and streams as a shell sees them."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "aiki_client.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unreachable_server_exits_1_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_aiki("runs", "list", AIKI_URL=url)

    assert done.returncode == 1
    assert f"cannot reach the aiki server at {url}" in done.stderr
    assert "Traceback" not in done.stderr


def test_entry_point_usage_help_and_version() -> None:
    assert run_aiki("runs", "list", "--limit", "many").returncode == 2
    helped = run_aiki("--help")
    assert helped.returncode == 0
    for command in ("runs", "events", "workflows", "schedules", "--url", "--api-key", "--json"):
        assert command in helped.stdout
    version = run_aiki("--version")
    assert version.returncode == 0 and version.stdout.startswith("aiki 0.")


def test_the_cli_stays_light() -> None:
    code = "import sys, aiki_client.cli; print(sorted(m for m in ('sanic', 'uvloop', 'orjson', 'aiki_server') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
