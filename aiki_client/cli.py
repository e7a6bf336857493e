"""`aiki`: see and steer runs from a terminal.

    aiki runs list [--workflow W] [--state S]... [--reference-id R] [--limit N] [--cursor C]
    aiki runs show ID | runs cancel ID [--reason R] | runs wakeup ID
    aiki events send RUN_ID NAME [--data JSON] [--reference-id R]
    aiki workflows list | schedules list

Global options (before the command): `--url` / AIKI_URL, `--api-key` / AIKI_API_KEY, `--json`
(also accepted after any command). Exit codes: 0 done, 1 the server said no or could not be
reached, 2 the command line was wrong.

It talks to the HTTP API through the SDK's transport, with retries off: a command is one or a
few requests, and an operator wants a quick, clear error when the server is down, not the SDK's
30 s of retries. It must never import aiki_server (nor sanic, uvloop, orjson): it ships with the
light client package.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from ._transport import Transport
from .errors import AikiError, ServerUnavailable, Unauthorized
from .wire import API_PREFIX, RunState

__all__ = ["cli", "main"]

DEFAULT_URL = "http://127.0.0.1:9090"
# `runs show` looks up each child's state; past this many children it lists ids only.
MAX_CHILD_LOOKUPS = 50
_STATES = [s.value for s in RunState]

F = TypeVar("F", bound=Callable[..., Any])


class ServerError(click.ClickException):
    """The server refused a request or could not be reached: exit code 1 with one clear line."""

    exit_code = 1


class Api:
    """The few HTTP calls the CLI makes, with errors turned into one readable line."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        try:
            self._transport = Transport(self.url, api_key=api_key, retry_for_s=0)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
        self._loop = asyncio.new_event_loop()

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        request = self._transport.request(method, f"{API_PREFIX}{path}", body, params=params)
        try:
            return self._loop.run_until_complete(request)
        except ServerUnavailable as exc:
            if exc.code is None:  # no answer at all, not a 5xx
                raise ServerError(
                    f"cannot reach the aiki server at {self.url} ({exc}); is it running? Point --url or AIKI_URL at it."
                ) from None
            raise ServerError(f"{exc} [{exc.code}]") from None
        except AikiError as exc:
            hint = " (give the key with --api-key or AIKI_API_KEY)" if isinstance(exc, Unauthorized) else ""
            raise ServerError(f"{exc}{hint} [{exc.code}]") from None
        except ValueError:
            raise ServerError(f"{method} {path}: the server answered with something that is not JSON") from None

    def close(self) -> None:
        self._loop.run_until_complete(self._transport.close())
        self._loop.close()


class Context:
    def __init__(self, api: Api, as_json: bool) -> None:
        self.api = api
        self.as_json = as_json


def json_option(fn: F) -> F:
    """`--json` after the command too (`aiki runs list --json`), not only before it."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Context).as_json = True

    return click.option(
        "--json",
        "json_",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Print JSON for machines instead of text.",
    )(fn)


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="AIKI_URL", default=DEFAULT_URL, show_default=True, help="Server URL (AIKI_URL).")
@click.option("--api-key", envvar="AIKI_API_KEY", help="API key, when the server requires one (AIKI_API_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of text.")
@click.version_option(package_name="aiki-client", prog_name="aiki", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None, as_json: bool) -> None:
    """See and steer aiki runs."""
    api = Api(url, api_key)
    ctx.call_on_close(api.close)
    ctx.obj = Context(api, as_json)


# -- runs -------------------------------------------------------------------------------------------


@cli.group()
def runs() -> None:
    """List, inspect, cancel and wake up runs."""


@runs.command("list")
@click.option("--workflow", "-w", help="Only runs of this workflow name.")
@click.option(
    "--state", "-s", "states", multiple=True, type=click.Choice(_STATES), help="Only runs in this state (repeatable)."
)
@click.option("--reference-id", "-r", help="Only the run with this reference id.")
@click.option("--limit", "-n", type=click.IntRange(1, 500), default=20, show_default=True, help="Runs per page.")
@click.option("--cursor", help="Start after the page that printed this cursor.")
@json_option
@pass_ctx
def runs_list(
    c: Context, workflow: str | None, states: Sequence[str], reference_id: str | None, limit: int, cursor: str | None
) -> None:
    """Runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if workflow:
        params["workflow"] = workflow
    if states:
        params["state"] = ",".join(states)
    if reference_id:
        params["reference_id"] = reference_id
    if cursor:
        params["cursor"] = cursor
    page = c.api.call("GET", "/runs", params=params)
    if c.as_json:
        return _print_json(page)
    rows = [
        [
            r["id"],
            f"{r['workflow']}@{r['version']}",
            r["state"],
            str(r["attempts"]),
            r.get("reference_id") or "",
            _time(r["created_at_ms"]),
            _time(r["updated_at_ms"]),
        ]
        for r in page["runs"]
    ]
    if not rows:
        click.echo("no runs")
    else:
        _table(["ID", "WORKFLOW", "STATE", "ATTEMPTS", "REFERENCE ID", "CREATED (UTC)", "UPDATED (UTC)"], rows)
    if page.get("next_cursor"):
        # On stderr: a script piping the table gets only the table.
        click.echo(f"more runs: add --cursor {page['next_cursor']}", err=True)


@runs.command("show")
@click.argument("run_id")
@json_option
@pass_ctx
def runs_show(c: Context, run_id: str) -> None:
    """A run: state, input, output, error, tasks, waits, children and history."""
    run = c.api.call("GET", f"/runs/{run_id}")
    tasks = c.api.call("GET", f"/runs/{run_id}/tasks")["tasks"]
    waits = c.api.call("GET", f"/runs/{run_id}/waits")["waits"]
    history = c.api.call("GET", f"/runs/{run_id}/history")["history"]
    # A child run is recorded as a task call named "child:<workflow>@<version>" whose output names it.
    child_calls = [t for t in tasks if t["name"].startswith("child:")]
    children = []
    for i, t in enumerate(child_calls):
        child_id = (t.get("output") or {}).get("child_id")
        child: dict[str, Any] = {"id": child_id, "workflow": t["name"].removeprefix("child:"), "state": None}
        if child_id and i < MAX_CHILD_LOOKUPS:
            try:
                child["state"] = c.api.call("GET", f"/runs/{child_id}")["state"]
            except ServerError as exc:
                child["state"] = f"? ({exc.message})"
        children.append(child)
    tasks = [t for t in tasks if not t["name"].startswith("child:")]
    if c.as_json:
        return _print_json({"run": run, "tasks": tasks, "waits": waits, "children": children, "history": history})

    fields = [
        ("Run", run["id"]),
        ("Workflow", f"{run['workflow']}@{run['version']}"),
        ("State", f"{run['state']} (attempt {run['attempts']})"),
        ("Reference id", run.get("reference_id")),
        ("Parent", run.get("parent_id")),
        ("Created", _time(run["created_at_ms"], ms=True)),
        ("Updated", _time(run["updated_at_ms"], ms=True)),
        ("Wakes at", _time(run["wake_at_ms"], ms=True) if run.get("wake_at_ms") else None),
        ("Input", _json_text(run.get("input"))),
        ("Output", _json_text(run.get("output")) if run["state"] == "completed" else None),
        ("Error", _error_text(run.get("error"))),
    ]
    for label, value in fields:
        if value is not None:
            click.echo(f"{label + ':':<14}{value}")
    _section(
        "Tasks",
        ["#", "NAME", "STATE", "ATTEMPTS", "RETRY AT (UTC)", "OUTPUT / ERROR"],
        [
            [
                str(t["id"]),
                t["name"],
                t["state"],
                str(t["attempts"]),
                _time(t["retry_at_ms"]) if t.get("retry_at_ms") else "",
                _error_text(t.get("error")) or _cell(t.get("output")),
            ]
            for t in tasks
        ],
    )
    _section(
        "Sleeps and event waits",
        ["KIND", "NAME", "#", "STATE", "DEADLINE (UTC)", "EVENT DATA"],
        [
            [
                w["kind"],
                w["name"],
                str(w["seq"]),
                w["state"],
                _time(w["deadline_ms"]) if w.get("deadline_ms") else "",
                _cell(w.get("data")) if w["kind"] == "event" and w["state"] == "received" else "",
            ]
            for w in waits
        ],
    )
    _section(
        "Children",
        ["ID", "WORKFLOW", "STATE"],
        [[ch["id"] or "?", ch["workflow"], ch["state"] or ""] for ch in children],
    )
    _section(
        "History",
        ["TIME (UTC)", "STATE", "DETAIL"],
        [[_time(h["at_ms"], ms=True), h["state"], _cell(h.get("detail"), 100)] for h in history],
    )


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", help="Recorded as the run's error message.")
@json_option
@pass_ctx
def runs_cancel(c: Context, run_id: str, reason: str | None) -> None:
    """Cancel a run and its child runs (a finished run is left as it is)."""
    run = c.api.call("POST", f"/runs/{run_id}/cancel", {"reason": reason} if reason else {})
    if c.as_json:
        return _print_json(run)
    if run["state"] == "cancelled":
        click.echo(f"run {run_id} is cancelled")
    else:
        click.echo(f"run {run_id} had already finished ({run['state']}); left as it is")


@runs.command("wakeup")
@click.argument("run_id")
@json_option
@pass_ctx
def runs_wakeup(c: Context, run_id: str) -> None:
    """End a run's current sleep now."""
    run = c.api.call("POST", f"/runs/{run_id}/wakeup", {})
    if c.as_json:
        return _print_json(run)
    click.echo(f"run {run_id} is {run['state']}")


# -- events, workflows, schedules -------------------------------------------------------------------


@cli.group()
def events() -> None:
    """Send events to runs."""


def _parse_json(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None


@events.command("send")
@click.argument("run_id")
@click.argument("name")
@click.option("--data", default="null", callback=_parse_json, help="The event's data, as JSON (default null).")
@click.option("--reference-id", help="Deduplicates: the same reference id sent again to the run is ignored.")
@json_option
@pass_ctx
def events_send(c: Context, run_id: str, name: str, data: Any, reference_id: str | None) -> None:
    """Send event NAME to run RUN_ID."""
    body: dict[str, Any] = {"name": name, "data": data}
    if reference_id:
        body["reference_id"] = reference_id
    answer = c.api.call("POST", f"/runs/{run_id}/events", body)
    if c.as_json:
        return _print_json(answer)
    if answer.get("duplicate"):
        click.echo(f"event {name!r} with reference id {reference_id!r} was already sent to run {run_id}; ignored")
    else:
        click.echo(f"sent event {name!r} to run {run_id} (event {answer['event_id']})")


@cli.group()
def workflows() -> None:
    """Workflows known from their runs."""


@workflows.command("list")
@json_option
@pass_ctx
def workflows_list(c: Context) -> None:
    """Workflow names and versions with their run counts by state."""
    answer = c.api.call("GET", "/workflows")
    if c.as_json:
        return _print_json(answer)
    present = {state for wf in answer["workflows"] for state in wf["counts"]}
    states = [s for s in _STATES if s in present]
    rows = [
        [wf["name"], v["version"], str(v["total"]), *(str(v["counts"].get(s, 0)) for s in states)]
        for wf in answer["workflows"]
        for v in wf["versions"]
    ]
    if not rows:
        click.echo("no workflows have runs yet")
        return
    _table(["WORKFLOW", "VERSION", "RUNS", *(s.upper() for s in states)], rows)


@cli.group()
def schedules() -> None:
    """Schedules that start runs."""


@schedules.command("list")
@json_option
@pass_ctx
def schedules_list(c: Context) -> None:
    """Every schedule with its timing and counters."""
    answer = c.api.call("GET", "/schedules")
    if c.as_json:
        return _print_json(answer)
    rows = [
        [
            s["id"],
            f"{s['workflow']}@{s['version']}",
            f"cron {s['cron']} ({s.get('tz') or 'UTC'})" if s.get("cron") else f"every {s['every_ms']} ms",
            s["overlap"],
            s["state"],
            _time(s["next_fire_at_ms"]) if s.get("next_fire_at_ms") else "",
            str(s["fired"]),
            str(s["skipped"]),
        ]
        for s in answer["schedules"]
    ]
    if not rows:
        click.echo("no schedules")
        return
    _table(["ID", "WORKFLOW", "WHEN", "OVERLAP", "STATE", "NEXT FIRE (UTC)", "FIRED", "SKIPPED"], rows)


# -- output -----------------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _time(at_ms: int, *, ms: bool = False) -> str:
    """Server times are epoch milliseconds; show them in UTC, so every operator sees the same."""
    text = datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if ms else text[:-7]


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else "\n" + json.dumps(value, indent=2, ensure_ascii=False)


def _error_text(error: Any) -> str | None:
    if not error:
        return None
    if isinstance(error, dict) and "type" in error:
        return f"{error['type']}: {error.get('message', '')}"
    return json.dumps(error, ensure_ascii=False)


def _cell(value: Any, width: int = 60) -> str:
    """A JSON value on one line, cut to fit a table column."""
    text = "" if value is None else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo(indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _section(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    click.echo(f"\n{title}:")
    if rows:
        _table(headers, rows, indent="  ")
    else:
        click.echo("  (none)")


def main() -> None:
    """The `aiki` console script."""
    cli(prog_name="aiki")


if __name__ == "__main__":
    main()
