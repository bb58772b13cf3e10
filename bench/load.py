"""The requests of each scenario, and wrk driving them from its own process.

wrk runs a Lua script that picks, for every request, one of many users (with that
user's token) and one of that user's seeded tasks, so that load spreads over the table
as real traffic would, not over one hot row.
"""

import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.database import filter_tag, search_term, task_id, user_id
from bench.report import Measurement


@dataclass(frozen=True)
class Request:
    method: str
    # {user} and {task} are filled per request; {q} and {tag} with the user's search term
    # and tag (bench/database.py: search_term, filter_tag).
    path: str
    body: str | None = None


CREATE_BODY = json.dumps({"title": "Benchmark task", "description": "Created by the benchmark"})
# A message the offline assistant (app/chat/offline.py) answers with exactly one tool call,
# a read: list_tasks of the user's pending tasks, then its reply. No conversation_id: each
# message starts a conversation of its own (bench/README.md says why).
CHAT_BODY = json.dumps({"message": "What's pending?"})
REQUESTS = {
    "list": Request("GET", "/api/{user}/tasks?limit=50"),
    "get": Request("GET", "/api/{user}/tasks/{task}"),
    "create": Request("POST", "/api/{user}/tasks", CREATE_BODY),
    "toggle": Request("PATCH", "/api/{user}/tasks/{task}/complete"),
    # A word's start that a few of the user's tasks have, and many other users' tasks.
    "search": Request("GET", "/api/{user}/tasks?q={q}&limit=50"),
    # One of the user's tags, which some 10 of its tasks carry.
    "tag": Request("GET", "/api/{user}/tasks?tag={tag}&limit=50"),
    # The soonest due first, those with no due date last.
    "due": Request("GET", "/api/{user}/tasks?sort=due&limit=50"),
    # A message to the assistant: the agent, one MCP tool call, three transactions.
    "chat": Request("POST", "/api/{user}/chat", CHAT_BODY),
    # Control 3, served by bench/control_app.py only.
    "whoami": Request("GET", "/bench/whoami"),
}
# The read/write mix: 90 reads, 10 writes in every 100 requests.
MIX = (("list", 45), ("get", 45), ("create", 5), ("toggle", 5))
SCENARIOS = ("list", "get", "search", "tag", "due", "create", "toggle", "mix", "chat")
# The read scenarios whose latency the growth curve follows, and whose plans it shows.
# Not the chat: its tool call runs the list's query (with a status filter), and its own
# statements insert a conversation and its messages.
GROWTH_SCENARIOS = ("list", "get", "search", "tag", "due")
# Scenarios whose requests go on after their client has left (a chat's run stores its
# rows whatever happens to the client): after wrk is stopped (a warm-up, an unbalanced
# start), the service finishes what it left in flight before anything is measured.
DRAINED_SCENARIOS = ("chat",)
# Scenarios whose first request in a worker is slow: the chat's imports the Agents SDK
# (seconds), so every worker answers one before the chat is measured (prime()).
PRIMED_SCENARIOS = ("chat",)
# How long prime() waits for a worker to accept each of its connections, and how many
# connections it opens at most to reach every worker.
PRIME_ACCEPT_WAIT = 1.0
PRIME_CONNECTIONS = 64
# How soon after wrk starts its connections are counted per worker, and how many
# starts a run gets to spread them evenly.
BALANCE_CHECK_AFTER = 0.5
BALANCE_TRIES = 30
# More users' tokens than this add nothing but memory in every wrk thread.
MAX_LOAD_USERS = 10_000

WRK_SCRIPT = r"""
-- Written by bench/load.py. args: the data file (users, tokens, requests), the scenario.
local data, scenario
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  data = dofile(args[1])
  scenario = args[2]
  math.randomseed(os.time() * 100 + thread_number)
end

local function pick()
  if scenario ~= "mix" then return scenario end
  local r = math.random(100)
  for _, entry in ipairs(data.mix) do
    r = r - entry[2]
    if r <= 0 then return entry[1] end
  end
  return data.mix[1][1]
end

function request()
  local i = math.random(#data.users)
  local kind = data.requests[pick()]
  local task = (data.numbers[i] - 1) * data.per_user + math.random(data.per_user)
  local path = kind.path:gsub("{user}", data.users[i]):gsub("{task}", string.format("%d", task))
  path = path:gsub("{q}", data.terms[i]):gsub("{tag}", data.tags[i])
  local headers = {Authorization = "Bearer " .. data.tokens[i]}
  if kind.body then headers["Content-Type"] = "application/json" end
  return wrk.format(kind.method, path, headers, kind.body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def load_users(users: int, limit: int = MAX_LOAD_USERS) -> list[int]:
    """Up to `limit` user numbers spread evenly over 1..users."""
    count = min(users, limit)
    return [1 + i * users // count for i in range(count)]


def _lua(value: object) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool | int):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str):
        if not value.isascii():
            raise ValueError("the wrk data file holds ASCII strings only")
        return json.dumps(value)  # JSON's escapes of ASCII text are Lua's too
    if isinstance(value, list | tuple):
        return "{" + ", ".join(_lua(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(key)}] = {_lua(item)}" for key, item in value.items()) + "}"
    raise TypeError(type(value))


def write_wrk_files(
    directory: Path,
    numbers: list[int],
    tokens: list[str],
    per_user: int,
    requests: dict[str, Request] = REQUESTS,
    script_text: str = WRK_SCRIPT,
) -> tuple[Path, Path]:
    """The Lua script and its data file (users, their tokens, the requests): the
    service's by default, PostGraphile's GraphQL ones for control 5."""
    data = {
        "users": [user_id(n) for n in numbers],
        "numbers": numbers,
        "tokens": tokens,
        "terms": [search_term(n) for n in numbers],
        "tags": [filter_tag(n) for n in numbers],
        "per_user": per_user,
        "requests": {name: vars(request) for name, request in requests.items()},
        "mix": [list(entry) for entry in MIX],
    }
    script, data_file = directory / "bench.lua", directory / "data.lua"
    script.write_text(script_text)
    data_file.write_text("return " + _lua(data) + "\n")
    return script, data_file


def request_path(name: str, n: int, k: int, per_user: int) -> str:
    """The path wrk would request for user n's k-th task (for the statement capture)."""
    return REQUESTS[name].path.format(
        user=user_id(n), task=task_id(n, k, per_user), q=search_term(n), tag=filter_tag(n)
    )


def prime(
    base_url: str,
    client_ports_per_worker: Callable[[], list[set[int]]],
    request: Request,
    path: str,
    token: str,
    timeout: float = 120.0,
) -> None:
    """Every worker answers one request before the measurement. uvicorn's workers share a
    listening socket, so which one accepts a connection is the kernel's choice:
    connections are opened one at a time until every worker holds one (a worker's
    connections are known by their client ports), then one request is sent on one
    connection of each worker, all at once, and every answer awaited."""
    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark only drives services on the loopback address")
    port = urlsplit(base_url).port
    headers = {"Authorization": f"Bearer {token}"}
    if request.body:
        headers["Content-Type"] = "application/json"

    def send(connection: http.client.HTTPConnection) -> int:
        connection.request(request.method, path, body=request.body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status

    opened: list[http.client.HTTPConnection] = []
    try:
        chosen: dict[int, http.client.HTTPConnection] = {}
        workers = len(client_ports_per_worker())
        if not workers:
            raise RuntimeError("the service has no worker processes to prime")
        while len(chosen) < workers:
            if len(opened) == PRIME_CONNECTIONS:
                raise RuntimeError(f"{PRIME_CONNECTIONS} connections did not reach every worker")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            connection.connect()
            opened.append(connection)
            client_port = connection.sock.getsockname()[1]
            deadline = time.monotonic() + PRIME_ACCEPT_WAIT
            while time.monotonic() < deadline:
                held_by = client_ports_per_worker()
                worker = next((i for i, ports in enumerate(held_by) if client_port in ports), None)
                if worker is not None:
                    chosen.setdefault(worker, connection)
                    break
                time.sleep(0.02)
        with ThreadPoolExecutor(len(chosen)) as pool:
            statuses = list(pool.map(send, chosen.values()))
    finally:
        for connection in opened:
            connection.close()
    if any(status >= 300 for status in statuses):
        raise RuntimeError(f"priming {request.method} {request.path} answered {statuses}")


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def ensure_wrk(log: Callable[[str], None]) -> str:
    """wrk's path; installs Debian's package when missing and running as root."""
    found = wrk_binary()
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: apt-get install wrk")
        install = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, check=False, timeout=300).returncode != 0:  # noqa: S603
            # No package lists yet (a fresh container): fetch them and try again.
            subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=300)  # noqa: S607
            subprocess.run(install, check=False, timeout=300)  # noqa: S603
        found = wrk_binary()
        if found:
            return found
    raise SystemExit(
        "wrk is not installed. Install it with `sudo apt-get install wrk` (Debian, Ubuntu) "
        "or from https://github.com/wg/wrk, then run the benchmark again."
    )


def balanced(spread: list[int], connections: int) -> bool:
    """Every worker holds at least 7/8 of its share of the connections (14 of 16)."""
    return bool(spread) and min(spread) >= 0.875 * connections / len(spread)


def run_wrk(
    wrk: str,
    base_url: str,
    script: Path,
    data_file: Path,
    scenario: str,
    *,
    seconds: int,
    connections: int,
    threads: int,
    target: str,
    spread: Callable[[], list[int]] | None = None,
    settle: Callable[[], object] | None = None,
) -> Measurement:
    """One bounded wrk run against base_url (loopback only).

    With `spread` (the connections each worker holds), a run whose connections fell
    unevenly on the workers is stopped and started again: uvicorn's workers share one
    listening socket, and asyncio accepts every connection waiting at a wake-up, so
    wrk's burst of connections often lands on one worker, and the run would measure
    one worker while the others idle. After a stopped run, `settle` waits until the
    service has answered what that run left in flight.
    """
    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark only drives services on the loopback address")
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base_url,
        "--",
        str(data_file),
        scenario,
    ]
    held: list[int] | None = None
    for attempt in range(BALANCE_TRIES):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
        try:
            if spread is not None:
                time.sleep(BALANCE_CHECK_AFTER)
                held = spread()
                if not balanced(held, connections) and attempt < BALANCE_TRIES - 1:
                    process.kill()
                    process.communicate(timeout=10)
                    if settle is not None:
                        settle()
                    continue
            stdout, stderr = process.communicate(timeout=seconds + 60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
        break
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr.strip() or stdout}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    elapsed = result["duration_us"] / 1e6
    return Measurement(
        target=target,
        scenario=scenario,
        requests=result["requests"],
        errors=result["status_errors"] + result["socket_errors"],
        seconds=round(elapsed, 2),
        rps=result["requests"] / elapsed if elapsed else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        connections_per_worker=held,
    )
