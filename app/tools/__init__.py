"""The MCP server at /mcp: the task tools for AI clients (server.py builds it).

Named `tools`, not `mcp`, so that it is never mistaken for the SDK's top-level package.
A tool has no `user_id` parameter: the caller is the verified bearer token's subject, and
every call runs in that user's signed row-level-security transaction (app/session.py),
through the statements the REST routes run (app/service/tasks.py).
"""
