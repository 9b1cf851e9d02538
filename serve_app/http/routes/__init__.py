"""The HTTP API's routers, one module per API: `openai`, `native`, `tei`, `ops`; `common` holds what they share."""
