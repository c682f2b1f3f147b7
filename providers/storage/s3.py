"""s3:// with boto3. Endpoint and credentials: boto3's own settings (AWS_ENDPOINT_URL, AWS_PROFILE, ...)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ._base import CHUNK_BYTES, ObjectInfo
from ._errors import AccessDenied, ArtifactNotFound, StorageError, StorageUnavailable
from ._uri import ParsedURI

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


def _translate(uri: ParsedURI, exc: Exception) -> StorageError:
    if isinstance(exc, NoCredentialsError):
        return AccessDenied(
            str(uri), "no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return ArtifactNotFound(str(uri), f"no such object ({code}); check the bucket and key")
        if code in _DENIED:
            return AccessDenied(str(uri), f"access denied ({code}); check the credentials and bucket policy")
        return StorageUnavailable(str(uri), f"S3 answered {code}; retry later")
    return StorageUnavailable(
        str(uri), f"cannot reach S3 ({exc.__class__.__name__}: {exc}); check AWS_ENDPOINT_URL and the network"
    )


class Provider:
    @cached_property
    def client(self):
        # We retry whole downloads ourselves; keep botocore's own retries short so errors surface.
        return boto3.client(
            "s3", config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        )

    def is_dir(self, uri: ParsedURI) -> bool:
        return uri.is_dir

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(uri, exc) from None
        return ObjectInfo(head["ContentLength"], head["ETag"])

    def list(self, uri: ParsedURI) -> list[tuple[str, ObjectInfo]]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.key):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        found.append((obj["Key"][len(uri.key) :], ObjectInfo(obj["Size"], obj["ETag"])))
        except (BotoCoreError, ClientError) as exc:
            raise _translate(uri, exc) from None
        if not found:
            raise ArtifactNotFound(str(uri), "no objects under this prefix; check the bucket and prefix")
        return found

    def download(self, uri: ParsedURI, sink: BinaryIO) -> None:
        try:
            body = self.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
            for chunk in body.iter_chunks(CHUNK_BYTES):
                sink.write(chunk)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(uri, exc) from None

    def upload(self, local: Path, uri: ParsedURI) -> None:
        try:
            self.client.upload_file(str(local), uri.bucket, uri.key)  # multipart, streamed from disk
        except (BotoCoreError, ClientError) as exc:
            raise _translate(uri, exc) from None
        except Exception as exc:  # s3transfer wraps client errors in its own types
            cause = exc.__cause__
            raise _translate(uri, cause if isinstance(cause, Exception) else exc) from None
