"""The spec's `logging:` section: light (pydantic only), so reading a spec never imports the writer (numpy,
monitoring/payload_log.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from groundwork.specs import Strict
from providers.storage import PROVIDERS, StorageError, UnsupportedScheme, parse_uri, scheme_of

__all__ = ["WRITABLE_SCHEMES", "PayloadLogSettings"]

# providers/storage/http.py refuses uploads: a payload log cannot go there.
_READ_ONLY_SCHEMES = frozenset({"http", "https"})
WRITABLE_SCHEMES = tuple(sorted(scheme for scheme in PROVIDERS if scheme not in _READ_ONLY_SCHEMES))


def _schemes() -> str:
    return ", ".join(f"{scheme}://" for scheme in WRITABLE_SCHEMES) + " or a plain path"


class PayloadLogSettings(Strict):
    """`logging: {...}` on a model: which requests and responses are written, where, and how."""

    sample_rate: float = Field(
        default=0.05, gt=0, le=1, description="Share of requests logged, with their responses (0.05: one in 20)."
    )
    redact: list[str] = Field(
        default_factory=list,
        description='Input and output names whose values are written as "[redacted]" (e.g. card_number).',
    )
    destination: str = Field(
        min_length=1,
        description=(
            "The folder objects are written under: a plain path (relative to the spec), file://, s3://, gs:// or "
            "az://. Objects are named DESTINATION/APP/MODEL/YYYY/MM/DD/HH/UNIX_MS-ID.jsonl (or .parquet)."
        ),
    )
    mode: Literal["all", "request", "response"] = Field(
        default="all", description="What is logged of a sampled request: both events, or only one of them."
    )
    batch_records: int = Field(
        default=1000, ge=1, description="Events (lines or rows) per object; a full batch is written at once."
    )
    flush_s: float = Field(
        default=10, gt=0, description="Longest wait before the events of a batch that is not full are written."
    )
    max_queue: int = Field(
        default=10_000,
        ge=1,
        description="Sampled requests waiting for the writer; beyond it they are dropped and counted, never waited on.",
    )
    format: Literal["jsonl", "parquet", "auto"] = Field(
        default="auto",
        description="Object format: JSON lines, Parquet (needs pyarrow), or auto (Parquet when pyarrow is installed).",
    )

    @field_validator("destination")
    @classmethod
    def _writable(cls, destination: str) -> str:
        try:
            scheme = scheme_of(destination)
        except UnsupportedScheme:
            scheme = destination.split("://", 1)[0]
        if scheme not in WRITABLE_SCHEMES:
            what = "is read-only" if scheme in PROVIDERS else "is not a storage scheme"
            raise ValueError(f"{destination!r}: {scheme}:// {what}; write payload logs to {_schemes()}")
        try:
            parse_uri(destination)
        except StorageError as exc:  # s3:// without a bucket
            raise ValueError(f"{destination!r}: {str(exc).removeprefix(f'{exc.uri}: ')}") from None
        return destination
