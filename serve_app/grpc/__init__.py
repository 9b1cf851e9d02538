"""The gRPC transport, beside `http`: TEI's `tei.v1` API and this server's `bge_m3.v1.Embedder` on Ray Serve's
gRPC proxy, plus the standard `grpc.health.v1` service, all over the same `gateway.service.EmbeddingService`.

gRPC -> Serve's gRPC proxy -> ingress method by name (`servicer`) -> the call rules (`calls`) -> `tei` /
`native` handler -> service -> model handle; failures to status codes in one place (`errors`).
"""
