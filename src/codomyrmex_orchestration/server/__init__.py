"""The MCP server adapter: the only package that imports mcp and anyio."""
