"""The HTTP layer. `ingress` (the Serve deployment) builds `service.EmbeddingService` (everything that
talks to the model deployment) and `app.create_http_app` (middleware from `auth` and `guard`, `errors`'
handlers, and the `routes` package: one router per API). Request and error bodies are in `protocol`,
JSON output in `serialization`. It imports `serving` and `core`, never the reverse."""
