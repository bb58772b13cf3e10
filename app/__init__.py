"""Todo API: a multi-user task list in which PostgreSQL row-level security keeps users apart."""
