"""POST /v1/embeddings on an embedding replica: OpenAI request -> Embedder -> OpenAI response.

    {"model", "input": str | [str, ...], "encoding_format": "float" | "base64", "user"}
 -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}
"""
from __future__ import annotations

from fireplace.engine.errors import InvalidRequestError
from fireplace.errors import InvalidArgument
from fireplace.serving.embeddings import ENCODING_FORMATS, Embedder, encode_embedding


def embeddings_response(embedder: Embedder, body: dict) -> dict:
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidArgument("input: must be a non-empty string or array of strings", param="input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODING_FORMATS:
        raise InvalidArgument(f"encoding_format: must be one of {', '.join(ENCODING_FORMATS)}",
                              param="encoding_format")
    if body.get("dimensions") is not None:
        raise InvalidArgument("dimensions: this model has a fixed output size; omit it", param="dimensions")
    try:
        batch = embedder.encode(texts, truncate=bool(body.get("truncate", False)))
    except InvalidRequestError as exc:
        raise InvalidArgument(exc.message, param=exc.param) from exc
    data = [{"object": "embedding", "index": i, "embedding": encode_embedding(vector, encoding)}
            for i, vector in enumerate(batch.vectors)]
    tokens = batch.total_tokens
    return {"object": "list", "data": data, "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
