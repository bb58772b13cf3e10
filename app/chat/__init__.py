"""The chat assistant: an agent of the OpenAI Agents SDK whose tools are the app's own MCP
server (app/chat/agent.py), with a built-in offline model (app/chat/offline.py)."""
