"""`todo-api audit`: a clean database passes, and each kind of problem is found and named."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from app.audit import audit_database
from app.cli import cli
from app.config import OWNER_ROLE, RUNTIME_ROLE
from app.policies import not_distributable
from tests.conftest import DbUrls, Server

POLICIES = ["tasks_delete_own", "tasks_insert_own", "tasks_select_own", "tasks_update_own"]
CONFIG_VARIABLES = ("DATABASE_URL", "MIGRATIONS_DATABASE_URL", "DATA_DIR")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration from the developer's environment or .env; returns a data dir."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def audit_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["audit", "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def codes(document: dict[str, Any]) -> list[str]:
    return [problem["code"] for problem in document["problems"]]


def test_a_clean_database_passes_as_the_owner_by_default(
    db_url: DbUrls, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No --database-url: the owner's URL, as `migrate` would use.
    monkeypatch.setenv("DATABASE_URL", db_url.runtime)
    monkeypatch.setenv("MIGRATIONS_DATABASE_URL", db_url.owner)
    exit_code, document = audit_json()

    assert exit_code == 0, document["problems"]
    assert document["ok"] is True
    assert document["problems"] == []
    assert document["database"]["connected_as"] == OWNER_ROLE
    assert document["drift"] == {"checked": True, "tables": {}}
    tasks = document["tables"]["tasks"]
    assert tasks["holds_user_data"] is True
    assert tasks["policy_file"] == "policies/tasks.sql"
    assert tasks["rls_enabled"] is tasks["rls_forced"] is True
    assert "SELECT" in tasks["runtime_grants"]
    assert [policy["name"] for policy in tasks["policies"]] == POLICIES
    by_name = {policy["name"]: policy for policy in tasks["policies"]}
    assert by_name["tasks_select_own"]["command"] == "SELECT"
    assert by_name["tasks_select_own"]["roles"] == [RUNTIME_ROLE]
    assert "app.current_user_id()" in by_name["tasks_update_own"]["using"]
    assert "app.current_user_id()" in by_name["tasks_update_own"]["with_check"]
    # The conversation tables are audited as tasks are.
    for table in ("conversations", "messages"):
        audited = document["tables"][table]
        assert audited["holds_user_data"] is True, table
        assert audited["policy_file"] == f"policies/{table}.sql"
        assert audited["rls_enabled"] is audited["rls_forced"] is True
        assert [policy["name"] for policy in audited["policies"]] == [
            name.replace("tasks", table) for name in POLICIES
        ]
    role = document["runtime_role"]
    assert role["name"] == RUNTIME_ROLE
    assert [role[key] for key in ("superuser", "bypassrls", "createrole", "createdb", "temporary")] == [
        False
    ] * 5
    assert role["memberships"] == role["owned_objects"] == role["owned_user_tables"] == role["settings"] == []

    human = CliRunner().invoke(cli, ["audit"])
    assert human.exit_code == 0
    assert "tasks_select_own" in human.stdout
    assert "no problems" in human.stdout


def test_a_superuser_can_audit_too(db_url: DbUrls) -> None:
    report = audit_database(db_url.admin)
    assert report.ok, report.problems
    assert report.drift == {}


# Each change is made as the superuser, the way a hand edit on a live database would be.
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("alter table tasks disable row level security", ["rls_disabled"]),
        ("alter table tasks no force row level security", ["rls_not_forced"]),
        ("alter policy tasks_select_own on tasks using (true)", ["policy_changed"]),
        ("drop policy tasks_delete_own on tasks", ["policy_missing"]),
        ("create policy tasks_peek on tasks for select to todo_app using (true)", ["policy_unexpected"]),
        ("grant truncate on tasks to todo_app", ["grants_drift"]),
        # The runtime role may update some of the columns already: one more is a change
        # of what it may do all the same.
        ("grant update (user_id) on tasks to todo_app", ["grants_drift"]),
    ],
    ids=[
        "rls-disabled",
        "not-forced",
        "policy-edited",
        "policy-dropped",
        "policy-added",
        "grant-added",
        "column-grant",
    ],
)
def test_each_change_to_tasks_is_a_problem(
    db_url: DbUrls, admin_conn: psycopg.Connection, change: str, expected: list[str]
) -> None:
    admin_conn.execute(change)
    exit_code, document = audit_json("--database-url", db_url.owner)
    assert exit_code == 1
    assert document["ok"] is False
    assert codes(document) == expected
    assert {problem["subject"] for problem in document["problems"]} == {"tasks"}


def test_changes_to_the_conversation_tables_are_problems_naming_them(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    changes = {
        "alter table messages no force row level security": ("rls_not_forced", "messages"),
        "alter policy conversations_select_own on conversations using (true)": (
            "policy_changed",
            "conversations",
        ),
        "drop policy messages_insert_own on messages": ("policy_missing", "messages"),
        "grant truncate on conversations to todo_app": ("grants_drift", "conversations"),
    }
    for change in changes:
        admin_conn.execute(change)
    report = audit_database(db_url.owner)
    found = [(problem.code, problem.subject) for problem in report.problems]
    assert sorted(found) == sorted(changes.values())


def test_a_policy_edited_live_is_named_with_what_changed(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    admin_conn.execute("alter policy tasks_select_own on tasks using (true)")
    report = audit_database(db_url.owner)
    [problem] = report.problems
    assert problem.message.startswith(
        "policy tasks_select_own on tasks was changed in the database: using is 'true'"
    )
    live, declared = report.drift["tasks"]["policies"].values()  # type: ignore[index]
    assert [p["using"] for p in live if p["name"] == "tasks_select_own"] == ["true"]
    assert [p["using"] for p in declared if p["name"] == "tasks_select_own"] != ["true"]


def test_a_new_table_of_user_data_without_rls_is_a_problem(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    admin_conn.execute(
        "create table notes (id bigint, user_id text not null, body text, primary key (user_id, id))"
    )
    # As a migration would leave it: owned by the owner role, so drift is still checked.
    admin_conn.execute(f"alter table notes owner to {OWNER_ROLE}")
    exit_code, document = audit_json("--database-url", db_url.owner)
    assert exit_code == 1
    assert codes(document) == ["rls_disabled", "rls_not_forced", "no_policies", "no_policy_file"]
    assert {problem["subject"] for problem in document["problems"]} == {"notes"}
    assert document["tables"]["notes"]["holds_user_data"] is True
    assert document["drift"]["checked"] is True


@pytest.fixture
def runtime_role_change(admin_conn: psycopg.Connection, request: pytest.FixtureRequest) -> Iterator[None]:
    """Alter the runtime role (cluster-wide, shared by every test) and always undo it."""
    change, undo = request.param
    admin_conn.execute(change)
    try:
        yield
    finally:
        admin_conn.execute(undo)


@pytest.mark.parametrize(
    ("runtime_role_change", "expected"),
    [
        (
            (f"alter role {RUNTIME_ROLE} bypassrls", f"alter role {RUNTIME_ROLE} nobypassrls"),
            ["runtime_role_bypassrls"],
        ),
        (
            (f"grant {OWNER_ROLE} to {RUNTIME_ROLE}", f"revoke {OWNER_ROLE} from {RUNTIME_ROLE}"),
            ["runtime_role_owns_user_tables", "runtime_role_member_of_roles"],
        ),
        (
            # PostgreSQL's default for a new database, which sql/roles.sql revokes.
            (
                "grant temporary on database todo_test to public",
                "revoke temporary on database todo_test from public",
            ),
            ["runtime_role_temporary"],
        ),
        (
            # What SQL running as the runtime role can do to itself.
            (
                f"alter role {RUNTIME_ROLE} set default_transaction_read_only = on",
                f"alter role {RUNTIME_ROLE} reset all",
            ),
            ["runtime_role_settings"],
        ),
    ],
    ids=["bypassrls", "member-of-owner", "temporary", "settings"],
    indirect=["runtime_role_change"],
)
def test_an_unsafe_runtime_role_is_a_problem(
    db_url: DbUrls, runtime_role_change: None, expected: list[str]
) -> None:
    exit_code, document = audit_json("--database-url", db_url.owner)
    assert exit_code == 1
    assert codes(document) == expected
    assert {problem["subject"] for problem in document["problems"]} == {RUNTIME_ROLE}

    human = CliRunner().invoke(cli, ["audit", "--database-url", db_url.owner])
    assert human.exit_code == 1
    assert expected[0] in human.stdout
    assert "no problems" not in human.stdout


def test_a_large_object_made_by_the_runtime_role_is_a_problem(db_url: DbUrls) -> None:
    """Any role may create large objects (a place outside row-level security that every
    todo_app session can read): the audit names one the runtime role made."""
    with psycopg.connect(db_url.runtime, autocommit=True) as runtime:
        runtime.execute("select lo_from_bytea(0, 'stash')")
    exit_code, document = audit_json("--database-url", db_url.owner)
    assert exit_code == 1
    assert codes(document) == ["runtime_role_owns_objects"]
    assert "large object" in document["problems"][0]["message"]


def test_a_role_that_cannot_apply_the_files_reports_drift_as_unchecked(db_url: DbUrls) -> None:
    exit_code, document = audit_json("--database-url", db_url.runtime)
    assert exit_code == 1
    assert codes(document) == ["drift_unchecked"]
    assert "must be owner" in document["problems"][0]["message"]
    assert document["drift"] == {"checked": False, "tables": {}}
    # What it can read is still reported.
    assert document["tables"]["tasks"]["rls_forced"] is True


def test_a_url_naming_a_sqlalchemy_driver_is_accepted(db_url: DbUrls) -> None:
    url = db_url.owner.replace("postgresql://", "postgresql+asyncpg://", 1)
    assert audit_database(url).ok


def test_a_database_it_cannot_reach_is_a_problem(pg_server: Server) -> None:
    exit_code, document = audit_json("--database-url", pg_server.url("todo_test_no_such_db", OWNER_ROLE))
    assert exit_code == 1
    assert codes(document) == ["cannot_connect"]
    assert "todo_test_no_such_db" in document["problems"][0]["message"]
    assert document["tables"] == {} and document["drift"]["checked"] is False


def test_the_embedded_default_is_started_audited_as_is_and_stopped(clean_env: Path) -> None:
    # A fresh data dir: roles and database exist, nothing is migrated (an audit changes nothing).
    exit_code, document = audit_json()
    assert exit_code == 0, document["problems"]
    assert document["database"] == {**document["database"], "name": "todo", "connected_as": OWNER_ROLE}
    assert document["tables"] == {}
    assert document["runtime_role"]["name"] == RUNTIME_ROLE
    assert not (clean_env / "pgdata" / "postmaster.pid").exists(), "the embedded server was left running"


def test_a_constraint_that_leaks_existence_is_a_problem(
    admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    admin_conn.execute("create unique index tasks_title_key on tasks (title)")
    report = audit_database(db_url.owner)
    # Both: its 409 would tell of another user's title, and no sharded table can hold it.
    assert sorted(p.code for p in report.problems) == ["existence_leak", "not_distributable"]
    assert all("tasks_title_key" in p.message for p in report.problems)


def test_the_tables_of_user_data_can_be_sharded_by_user_id(admin_conn: psycopg.Connection) -> None:
    """Every primary key and unique index of a table with user_id includes it, and every
    foreign key between them pairs user_id with user_id (issue 14: the tables can be
    distributed, and colocated, by user_id)."""
    assert not_distributable(admin_conn) == []
    # The foreign keys the check passed: every one between tables of user data, none left
    # out of it by a table the check does not know as sharded.
    keys = admin_conn.execute(
        """
        select conrelid::regclass::text, confrelid::regclass::text,
               array(select a.attname::text from unnest(conkey) with ordinality k(n, i)
                     join pg_attribute a on a.attrelid = conrelid and a.attnum = k.n order by k.i),
               array(select a.attname::text from unnest(confkey) with ordinality k(n, i)
                     join pg_attribute a on a.attrelid = confrelid and a.attnum = k.n order by k.i)
        from pg_constraint where contype = 'f' and connamespace = 'public'::regnamespace
        order by 1, 2, 3
        """
    ).fetchall()
    assert keys == [
        ("account_passwords", "accounts", ["user_id"], ["user_id"]),
        ("messages", "conversations", ["user_id", "conversation_id"], ["user_id", "id"]),
        ("task_tags", "tags", ["user_id", "tag_id"], ["user_id", "id"]),
        ("task_tags", "tasks", ["user_id", "task_id"], ["user_id", "id"]),
        ("tasks", "tasks", ["user_id", "next_task_id"], ["user_id", "id"]),
    ]


def test_keys_that_would_keep_a_table_from_being_sharded_are_problems(
    admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    # A unique index on the database-assigned id alone leaks nothing (the runtime role
    # cannot choose an id), so it is no existence leak; no shard can enforce it, though.
    admin_conn.execute("create unique index tasks_id_key on tasks (id)")
    admin_conn.execute(
        "create table notes (id bigint generated always as identity primary key,"
        " user_id varchar(255) not null)"
    )
    admin_conn.execute("create table drafts (user_id varchar(255) not null, body text)")
    # An exclusion constraint with = is a unique key by another name.
    admin_conn.execute("alter table tags add constraint tags_name_excl exclude using btree (name with =)")
    assert not_distributable(admin_conn) == [
        "drafts has no primary key",
        "exclusion key tags_name_excl on tags does not include user_id",
        "primary key notes_pkey on notes does not include user_id",
        "unique key tasks_id_key on tasks does not include user_id",
    ]
    report = audit_database(db_url.owner)
    flagged = [p.message for p in report.problems if p.code == "not_distributable"]
    assert len(flagged) == 4 and all("cannot be sharded by user_id" in message for message in flagged)


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        (
            # Both keys name user_id, but not at the same place: the note's user_id meets a
            # task's title, so a note of one user could point at a task of another, and
            # the two rows would be on different shards.
            [
                "create unique index tasks_user_title_key on tasks (user_id, title)",
                "create table notes (user_id varchar(255) not null, id bigint, title varchar(200),"
                " primary key (user_id, id),"
                " foreign key (title, user_id) references tasks (user_id, title))",
            ],
            "foreign key notes_title_user_id_fkey on notes does not pair user_id with user_id",
        ),
        (
            # Accounts stay whole on one node (a Citus local table): no sharded table may
            # reference them.
            [
                "create table notes (user_id varchar(255) not null references accounts (user_id),"
                " id bigint, primary key (user_id, id))",
            ],
            "foreign key notes_user_id_fkey on notes references accounts, which is not sharded",
        ),
        (
            # A table without user_id is no user's (a reference table, copied to every
            # node), and may not reference a sharded one.
            [
                "create table pins (owner varchar(255), task_id bigint, primary key (owner, task_id),"
                " foreign key (owner, task_id) references tasks (user_id, id))",
            ],
            "foreign key pins_owner_task_id_fkey on pins references the sharded tasks from a table that"
            " is not sharded",
        ),
        (
            # Nor may an unsharded table of user data.
            [
                "alter table accounts add column pinned_task bigint,"
                " add constraint accounts_pinned_task_fkey foreign key (user_id, pinned_task)"
                " references tasks (user_id, id)",
            ],
            "foreign key accounts_pinned_task_fkey on accounts references the sharded tasks from a table"
            " that is not sharded",
        ),
        (
            # Citus will not set a column to NULL for a key that has the distribution
            # column among its own, even when the column list leaves user_id out.
            [
                "create table notes (user_id varchar(255) not null, id bigint, task_id bigint,"
                " primary key (user_id, id), constraint notes_task_fkey foreign key (user_id, task_id)"
                " references tasks (user_id, id) on delete set null (task_id))",
            ],
            "foreign key notes_task_fkey on notes has user_id among its columns and sets columns to NULL"
            " or their default on delete",
        ),
        (
            [
                "create table notes (user_id varchar(255) not null, id bigint, task_id bigint,"
                " primary key (user_id, id), constraint notes_task_fkey foreign key (user_id, task_id)"
                " references tasks (user_id, id) on update cascade)",
            ],
            "foreign key notes_task_fkey on notes has user_id among its columns and sets or cascades"
            " columns on update",
        ),
    ],
    ids=[
        "user-id-meets-title",
        "to-accounts",
        "from-a-table-without-user-id",
        "from-accounts",
        "set-null-on-delete",
        "cascade-on-update",
    ],
)
def test_foreign_keys_that_would_keep_a_table_from_being_sharded_are_problems(
    db_url: DbUrls, ddl: list[str], expected: str
) -> None:
    with psycopg.connect(db_url.owner, autocommit=True) as owner:
        for statement in ddl:
            owner.execute(statement)
        assert not_distributable(owner) == [expected]
    report = audit_database(db_url.owner)
    assert [p.message for p in report.problems if p.code == "not_distributable"] == [
        f"{expected}: the table cannot be sharded by user_id"
    ]


def test_a_foreign_key_to_a_table_without_user_id_can_be_sharded(db_url: DbUrls) -> None:
    """A table without user_id holds no user's rows: on Citus it is a reference table,
    which a sharded table may reference."""
    with psycopg.connect(db_url.owner, autocommit=True) as owner:
        owner.execute("create table colours (name text primary key)")
        owner.execute(
            "create table notes (user_id varchar(255) not null, id bigint, colour text references colours,"
            " primary key (user_id, id))"
        )
        assert not_distributable(owner) == []


def test_every_problem_code_is_in_the_readmes_table() -> None:
    """Scripts match the codes: each one the audit (and the start-up check it shares)
    can report is explained in the README's table of them."""
    root = Path(__file__).parent.parent
    source = (root / "app" / "audit.py").read_text() + (root / "app" / "database.py").read_text()
    codes = set(re.findall(r'Problem\(\s*"([a-z_]+)"', source))
    # The one made from a name: f"runtime_role_{attribute}" for these attributes.
    assert 'f"runtime_role_{attribute}"' in source
    codes |= {"runtime_role_createrole", "runtime_role_createdb"}
    assert len(codes) > 20, codes
    readme = (root / "README.md").read_text()
    table = readme[readme.index("| `rls_disabled`") :]
    table = table[: table.index("\n\n")]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    assert codes <= documented, sorted(codes - documented)
