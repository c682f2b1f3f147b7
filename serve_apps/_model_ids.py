"""Which model of a multiplexed family a request names: `family:id` in the URL or Ray's header, checked."""

from __future__ import annotations

from fastapi import Request

from .request_error import RequestError
from .spec import ModelSpec, valid_model_id

__all__ = ["MULTIPLEX_HEADER", "family_and_id", "model_id_of"]

MULTIPLEX_HEADER = "serve_multiplexed_model_id"  # Ray Serve's own header name for model multiplexing


def family_and_id(name: str) -> tuple[str, str | None]:
    """'merchant:m007' -> ('merchant', 'm007'); 'digits' -> ('digits', None)."""
    family, colon, model_id = name.partition(":")
    return family, (model_id if colon else None)


def model_id_of(spec: ModelSpec, in_path: str | None, request: Request | None) -> str | None:
    """The multiplexed model id a request names (URL `family:id` or Ray's header), checked; None for other models."""
    if spec.multiplex is None:
        if in_path is not None:
            raise RequestError(404, f"model {spec.name!r} is not a multiplexed family, so it has no model {in_path!r}")
        return None  # a client may send the header to every model; only families use it (read it only for them)
    header = request.headers.get(MULTIPLEX_HEADER) if request is not None else None
    if in_path is not None and header is not None and in_path != header:
        raise RequestError(400, f"the URL names model id {in_path!r} but the {MULTIPLEX_HEADER} header says {header!r}")
    model_id = in_path if in_path is not None else header
    if not model_id:
        raise RequestError(
            400,
            f"model {spec.name!r} is a family of models: name one, as /v2/models/{spec.name}:<model_id>/infer "
            f"or with the {MULTIPLEX_HEADER} header",
        )
    if not valid_model_id(model_id):
        raise RequestError(
            400, f"model id {model_id!r} is not valid: letters, digits, '_', '-' and '.', no '..', at most 128"
        )
    return model_id
