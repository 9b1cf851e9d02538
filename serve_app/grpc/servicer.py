"""The methods Serve's gRPC proxy calls on the ingress deployment, by gRPC method name, each a line that runs
its handler (`tei`, `native`, `health`) under the call rules (`calls.CallRules`).

Serve routes a call by its method's name alone (`/tei.v1.Embed/Embed` -> `Embed`): `Info` serves both
`tei.v1.Info/Info` and `bge_m3.v1.Embedder/Info`, told apart by the request's message type. Which services
the proxy offers is `SERVICER_FUNCTIONS`, the list a Serve config's `grpc_options.grpc_servicer_functions`
names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from ray.serve.grpc_util import RayServegRPCContext

from . import health, native, tei
from .calls import CallRules
from .errors import set_status
from .protos import bge_m3_pb2, tei_pb2

_TEI = "serve_app.grpc.protos.tei_pb2_grpc"
# What `grpc_options.grpc_servicer_functions` lists (serve_config.yaml, the presets, the tests).
SERVICER_FUNCTIONS = [f"{_TEI}.add_{name}Servicer_to_server" for name in ("Info", "Embed", "Tokenize", "Predict",
                                                                             "Rerank")] + [
    "serve_app.grpc.protos.bge_m3_pb2_grpc.add_EmbedderServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


class GrpcServicer:
    """Mixed into the ingress deployment, which sets `grpc_rules` in its `__init__`."""

    grpc_rules: CallRules

    # --- both APIs ----------------------------------------------------------------------------------

    async def Info(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        """TEI's `Info` or the native `Info`, by the request's type."""
        if isinstance(request, tei_pb2.InfoRequest):
            return await self._unary(request, grpc_context, tei_pb2.InfoResponse, tei.info, encodes=False)
        return await self._unary(request, grpc_context, bge_m3_pb2.InfoResponse, native.info, encodes=False)

    # --- tei.v1.Embed -------------------------------------------------------------------------------

    async def Embed(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.EmbedResponse, tei.embed)

    async def EmbedSparse(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.EmbedSparseResponse, tei.embed_sparse)

    async def EmbedAll(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.EmbedAllResponse, tei.embed_all)

    async def EmbedStream(self, requests, grpc_context):
        async for answer in self._stream(requests, grpc_context, tei.embed):
            yield answer

    async def EmbedSparseStream(self, requests, grpc_context):
        async for answer in self._stream(requests, grpc_context, tei.embed_sparse):
            yield answer

    async def EmbedAllStream(self, requests, grpc_context):
        async for answer in self._stream(requests, grpc_context, tei.embed_all):
            yield answer

    # --- tei.v1.Tokenize ----------------------------------------------------------------------------

    async def Tokenize(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.EncodeResponse, tei.tokenize, encodes=False)

    async def TokenizeStream(self, requests, grpc_context):
        async for answer in self._stream(requests, grpc_context, tei.tokenize, encodes=False):
            yield answer

    async def Decode(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.DecodeResponse, tei.decode, encodes=False)

    async def DecodeStream(self, requests, grpc_context):
        async for answer in self._stream(requests, grpc_context, tei.decode, encodes=False):
            yield answer

    # --- tei.v1.Predict and tei.v1.Rerank: no such head -----------------------------------------------

    async def Predict(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.PredictResponse, tei.predict, encodes=False)

    async def PredictPair(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.PredictResponse, tei.predict, encodes=False)

    async def PredictStream(self, requests, grpc_context):
        async for answer in self._unimplemented_stream(grpc_context, tei.NO_CLASSIFIER):
            yield answer

    async def PredictPairStream(self, requests, grpc_context):
        async for answer in self._unimplemented_stream(grpc_context, tei.NO_CLASSIFIER):
            yield answer

    async def Rerank(self, request, grpc_context):
        return await self._unary(request, grpc_context, tei_pb2.RerankResponse, tei.rerank, encodes=False)

    async def RerankStream(self, requests, grpc_context):
        set_status(grpc_context, tei.NO_RERANKER)
        return tei_pb2.RerankResponse()

    # --- bge_m3.v1.Embedder ---------------------------------------------------------------------------

    async def Encode(self, request, grpc_context):
        return await self._unary(request, grpc_context, bge_m3_pb2.EncodeResponse, native.encode)

    async def Score(self, request, grpc_context):
        return await self._unary(request, grpc_context, bge_m3_pb2.ScoreResponse, native.score)

    # --- grpc.health.v1.Health ----------------------------------------------------------------------

    async def Check(self, request, grpc_context):
        return await health.check(self.grpc_rules.service.health, request, grpc_context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, grpc_context) -> AsyncIterator[Message]:
        async for answer in health.watch(self.grpc_rules.service.health, request, grpc_context):
            yield answer

    # --- the rules around each ----------------------------------------------------------------------

    async def _unary(self, request, grpc_context, empty, handler, *, encodes: bool = True):
        rules = self.grpc_rules
        return await rules.unary(request, grpc_context, empty,
                                 lambda message, call: handler(rules.service, message, call), encodes=encodes)

    async def _stream(self, requests, grpc_context, handler, *, encodes: bool = True):
        rules = self.grpc_rules
        async for answer in rules.stream(requests, grpc_context,
                                         lambda message, call: handler(rules.service, message, call),
                                         encodes=encodes):
            yield answer

    async def _unimplemented_stream(self, grpc_context, error):
        set_status(grpc_context, error)
        raise error
        yield  # an async generator, as Serve calls a bidirectional method
