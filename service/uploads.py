"""Reading the images of a multipart/form-data request, with every limit enforced while the body streams in.

FastAPI's ``UploadFile`` parameters read the whole body (spooling it to disk) before the route runs, so a
limit checked afterwards is checked too late. Here python-multipart's streaming parser is fed from
``request.stream()`` chunk by chunk:

- a ``Content-Length`` above ``max_request_bytes`` is refused before a byte of the body is read (with
  ``Expect: 100-continue`` — curl sends it for large uploads — the client does not even send the body);
- a body that grows past ``max_request_bytes`` (chunked uploads have no Content-Length) is cut off there;
- a file that grows past ``max_file_bytes`` is cut off as soon as its part does, with a 413 naming it;
- a file beyond ``max_files`` is refused as soon as its part's headers arrive.

Only the parts named ``files`` (repeatable), ``file`` or ``files[]`` are kept, in memory (each at most
``max_file_bytes``); other parts are skipped without being stored, but count towards ``max_request_bytes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.admission import Ticket
from service.errors import BadRequest, PayloadTooLarge, ServiceError, Unprocessable, UnsupportedMediaType

FILE_FIELDS = ("files", "file", "files[]")
MAX_FILENAME = 255


@dataclass(frozen=True)
class UploadLimits:
    """From `Settings` (ALEXNET_MAX_FILE_BYTES, ALEXNET_MAX_REQUEST_BYTES, ALEXNET_MAX_FILES_PER_REQUEST)."""

    max_file_bytes: int
    max_request_bytes: int
    max_files: int


@dataclass
class Upload:
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class _Part:
    field_name: str = ""
    filename: str | None = None
    content_type: str | None = None
    keep: bool = False
    unnamed: bool = False  # a plain form value: it gets a made-up filename
    data: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)


class _Collector:
    """python-multipart callbacks; limit violations are recorded and raised after each `write`."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self.other_fields: list[str] = []
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.error: ServiceError | None = None
        self.ended = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        disposition = self.part.headers.get(b"content-disposition")
        if disposition is None:
            self.error = self.error or BadRequest("malformed multipart body: a part has no Content-Disposition header")
            return
        _, options = parse_options_header(disposition)
        self.part.field_name = _text(options.get(b"name", b""))
        if b"filename" in options:
            self.part.filename = _text(options[b"filename"])[:MAX_FILENAME]
        content_type = self.part.headers.get(b"content-type")
        self.part.content_type = _text(content_type) if content_type else None
        self.part.keep = self.part.field_name in FILE_FIELDS
        if not self.part.keep:
            self.other_fields.append(self.part.field_name)
            return
        if self.part.filename == "":  # a browser form's file input left empty: no file, not a file
            self.part.keep = False
            return
        if self.part.filename is None:
            self.part.filename = f"{self.part.field_name}[{len(self.uploads)}]"
            self.part.unnamed = True
        if len(self.uploads) + 1 > self.limits.max_files:
            self.error = self.error or PayloadTooLarge(
                f"too many files: at most {self.limits.max_files} images per request, and "
                f"{self.part.filename!r} is number {len(self.uploads) + 1}",
                filename=self.part.filename, reason="too_many_files")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.part.keep or self.error is not None:
            return
        if len(self.part.data) + (end - start) > self.limits.max_file_bytes:
            name = self.part.filename or self.part.field_name
            self.error = PayloadTooLarge(
                f"file {name!r} is larger than the limit of {self.limits.max_file_bytes:,} bytes",
                filename=name, reason="too_large")
            self.part.keep = False
            self.part.data = bytearray()
            return
        self.part.data += data[start:end]

    def on_part_end(self) -> None:
        part = self.part
        # an empty part that is not a named file (a form's empty value) is no upload; an empty named file is
        if part.keep and self.error is None and (part.data or not part.unnamed):
            self.uploads.append(Upload(part.filename or part.field_name, part.content_type, bytes(part.data)))
        self.part = _Part()

    def on_end(self) -> None:
        self.ended = True


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _no_files(other_fields: list[str]) -> Unprocessable:
    got = f"; the request had only the fields {sorted(set(other_fields))}" if other_fields else ""
    return Unprocessable(
        f"no file uploaded: send the images as multipart/form-data in the field 'files' (or 'file'){got}",
        reason="no_file")


async def read_uploads(request: Request, limits: UploadLimits, ticket: Ticket | None = None) -> list[Upload]:
    """The uploaded files in the order they were sent; raises ServiceError for every kind of bad body."""
    content_type = request.headers.get("content-type")
    if not content_type:
        raise _no_files([])
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type must be multipart/form-data with the images in the field 'files' "
            f"(got {media_type.decode('latin-1')!r})")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("malformed multipart body: the Content-Type has no boundary")

    collector = _Collector(limits)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    async for chunk in stream_body(request, limits, ticket):
        received += len(chunk)
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        if collector.error is not None:
            raise collector.error
    parser.finalize()
    if collector.error is not None:
        raise collector.error
    if not collector.ended:
        if received == 0 and not collector.uploads:
            raise _no_files([])
        raise BadRequest("malformed multipart body: it ends before the closing boundary (interrupted upload?)")
    if not collector.uploads:
        raise _no_files(collector.other_fields)
    return collector.uploads


def declared_length(request: Request, limits: UploadLimits) -> int | None:
    """The body's Content-Length (None without one); PayloadTooLarge before a byte is read when it is too big."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limits.max_request_bytes:
        raise PayloadTooLarge(
            f"request body of {int(declared):,} bytes is larger than the limit of {limits.max_request_bytes:,} "
            "bytes; send fewer or smaller images per request", reason="request_too_large")
    return int(declared)


async def stream_body(request: Request, limits: UploadLimits, ticket: Ticket | None = None) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, refused from its Content-Length or cut off at ``max_request_bytes``; what
    arrives is charged to the request's admission `ticket` (beyond the Content-Length it was admitted with)."""
    declared_length(request, limits)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise PayloadTooLarge(
                    f"request body is larger than the limit of {limits.max_request_bytes:,} bytes; "
                    "send fewer or smaller images per request", reason="request_too_large")
            if ticket is not None:
                ticket.received(received)
            yield chunk
    except ClientDisconnect as exc:
        raise BadRequest("the client disconnected before the upload was complete") from exc


async def read_body(request: Request, limits: UploadLimits, ticket: Ticket | None = None) -> bytes:
    """The whole body (for the Open Inference Protocol's JSON or binary requests), within the same limits."""
    body = bytearray()
    async for chunk in stream_body(request, limits, ticket):
        body += chunk
    return bytes(body)
