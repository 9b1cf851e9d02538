from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InputType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_TYPE_UNSPECIFIED: _ClassVar[InputType]
    INPUT_TYPE_QUERY: _ClassVar[InputType]
    INPUT_TYPE_PASSAGE: _ClassVar[InputType]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BULK: _ClassVar[Priority]

class Overflow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERFLOW_UNSPECIFIED: _ClassVar[Overflow]
    OVERFLOW_TRUNCATE: _ClassVar[Overflow]
    OVERFLOW_CHUNK: _ClassVar[Overflow]

class VectorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_ENCODING_FLOAT32: _ClassVar[VectorEncoding]
    VECTOR_ENCODING_FLOAT16: _ClassVar[VectorEncoding]
INPUT_TYPE_UNSPECIFIED: InputType
INPUT_TYPE_QUERY: InputType
INPUT_TYPE_PASSAGE: InputType
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BULK: Priority
OVERFLOW_UNSPECIFIED: Overflow
OVERFLOW_TRUNCATE: Overflow
OVERFLOW_CHUNK: Overflow
VECTOR_ENCODING_FLOAT32: VectorEncoding
VECTOR_ENCODING_FLOAT16: VectorEncoding

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("texts", "token_ids", "dense", "sparse", "colbert", "sparse_tokens", "truncate", "overflow", "input_type", "priority", "dense_encoding", "colbert_encoding")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    COLBERT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DENSE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    COLBERT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    token_ids: _containers.RepeatedCompositeFieldContainer[TokenIds]
    dense: bool
    sparse: bool
    colbert: bool
    sparse_tokens: bool
    truncate: bool
    overflow: Overflow
    input_type: InputType
    priority: Priority
    dense_encoding: VectorEncoding
    colbert_encoding: VectorEncoding
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., token_ids: _Optional[_Iterable[_Union[TokenIds, _Mapping]]] = ..., dense: _Optional[bool] = ..., sparse: _Optional[bool] = ..., colbert: _Optional[bool] = ..., sparse_tokens: _Optional[bool] = ..., truncate: _Optional[bool] = ..., overflow: _Optional[_Union[Overflow, str]] = ..., input_type: _Optional[_Union[InputType, str]] = ..., priority: _Optional[_Union[Priority, str]] = ..., dense_encoding: _Optional[_Union[VectorEncoding, str]] = ..., colbert_encoding: _Optional[_Union[VectorEncoding, str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("dense", "sparse_ids", "sparse_weights", "sparse_tokens", "colbert", "colbert_rows", "n_tokens", "truncated")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_IDS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COLBERT_FIELD_NUMBER: _ClassVar[int]
    COLBERT_ROWS_FIELD_NUMBER: _ClassVar[int]
    N_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    dense: bytes
    sparse_ids: _containers.RepeatedScalarFieldContainer[int]
    sparse_weights: bytes
    sparse_tokens: _containers.RepeatedScalarFieldContainer[str]
    colbert: bytes
    colbert_rows: int
    n_tokens: int
    truncated: bool
    def __init__(self, dense: _Optional[bytes] = ..., sparse_ids: _Optional[_Iterable[int]] = ..., sparse_weights: _Optional[bytes] = ..., sparse_tokens: _Optional[_Iterable[str]] = ..., colbert: _Optional[bytes] = ..., colbert_rows: _Optional[int] = ..., n_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("embeddings", "dim", "dense_encoding", "colbert_encoding", "prompt_tokens", "model")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DENSE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    COLBERT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    dense_encoding: VectorEncoding
    colbert_encoding: VectorEncoding
    prompt_tokens: int
    model: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., dense_encoding: _Optional[_Union[VectorEncoding, str]] = ..., colbert_encoding: _Optional[_Union[VectorEncoding, str]] = ..., prompt_tokens: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class ScoreWeights(_message.Message):
    __slots__ = ("dense", "sparse", "colbert")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    COLBERT_FIELD_NUMBER: _ClassVar[int]
    dense: float
    sparse: float
    colbert: float
    def __init__(self, dense: _Optional[float] = ..., sparse: _Optional[float] = ..., colbert: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("query", "passages", "weights", "truncate", "priority")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    query: str
    passages: _containers.RepeatedScalarFieldContainer[str]
    weights: ScoreWeights
    truncate: bool
    priority: Priority
    def __init__(self, query: _Optional[str] = ..., passages: _Optional[_Iterable[str]] = ..., weights: _Optional[_Union[ScoreWeights, _Mapping]] = ..., truncate: _Optional[bool] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class PassageScore(_message.Message):
    __slots__ = ("dense", "sparse", "colbert", "sparse_dense", "colbert_sparse_dense")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    COLBERT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_DENSE_FIELD_NUMBER: _ClassVar[int]
    COLBERT_SPARSE_DENSE_FIELD_NUMBER: _ClassVar[int]
    dense: float
    sparse: float
    colbert: float
    sparse_dense: float
    colbert_sparse_dense: float
    def __init__(self, dense: _Optional[float] = ..., sparse: _Optional[float] = ..., colbert: _Optional[float] = ..., sparse_dense: _Optional[float] = ..., colbert_sparse_dense: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "prompt_tokens", "model")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[PassageScore]
    prompt_tokens: int
    model: str
    def __init__(self, scores: _Optional[_Iterable[_Union[PassageScore, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model", "served_model_name", "version", "dim", "vocab_size", "max_length", "dtype", "device", "fingerprint", "max_texts_per_request", "max_queue_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    served_model_name: str
    version: str
    dim: int
    vocab_size: int
    max_length: int
    dtype: str
    device: str
    fingerprint: str
    max_texts_per_request: int
    max_queue_tokens: int
    def __init__(self, model: _Optional[str] = ..., served_model_name: _Optional[str] = ..., version: _Optional[str] = ..., dim: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_length: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., fingerprint: _Optional[str] = ..., max_texts_per_request: _Optional[int] = ..., max_queue_tokens: _Optional[int] = ...) -> None: ...
