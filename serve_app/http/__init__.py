"""The HTTP transport: `asgi` builds the FastAPI app (the `routes` package: one router per API; `guard`'s
middleware applying the gateway's access rules; `fast_path` for the encode routes; `errors`, the one map
from typed failures to HTTP status) around a `gateway` service. Request and error bodies are in `protocol`,
JSON output in `serialization`. It imports `gateway`, `serving` and `core`, never the reverse."""
