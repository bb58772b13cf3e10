"""What every way in (REST, MCP, the chat assistant) calls to read and change data."""
