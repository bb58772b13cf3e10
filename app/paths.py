"""Where the SQL files and the Alembic scripts are, in a checkout and in an installed wheel."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# A wheel carries sql/ and migrations/ inside the package (see pyproject.toml); an
# editable install or a checkout has them at the top level beside app/.
_ROOT = _PACKAGE / "_resources" if (_PACKAGE / "_resources").is_dir() else _PACKAGE.parent

SQL_DIR = _ROOT / "sql"
MIGRATIONS_DIR = _ROOT / "migrations"


def read_sql(relative: str) -> str:
    """The text of one file under sql/, for example ``policies/tasks.sql``."""
    return (SQL_DIR / relative).read_text(encoding="utf-8")
