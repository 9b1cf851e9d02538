"""The encoder core and what it needs; imports neither ray nor fastapi/starlette."""
