"""The gateway: transport-neutral, what every transport calls. `service.EmbeddingService` (checks, encode,
score, tokenize/decode, model facts), `dispatch` (encode requests coalesced into streamed model calls,
retried, cancelled), `health` (the health verdict), `access` (API keys and admission), `errors` (its typed
failures). No web framework here: `http` (and any other transport) maps its failures in one place."""
