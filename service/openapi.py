"""The OpenAPI document, made to say what the server answers (tests/test_openapi_contract.py checks it with
schemathesis against a real server).

FastAPI's generator gets two things wrong for this service, and both are fixed here, once, for every route:

- **422**: FastAPI documents its own `HTTPValidationError` (`detail` a list), but the service answers validation
  errors in its two shapes (service/error_handlers.py): `ValidationErrorBody` on its own routes (`detail` a line,
  `errors` the list) and the protocol's `V2Error` under ``/v2``.
- **Hand-written request bodies** (``openapi_extra``: the v2 infer body) carry their nested models under
  ``$defs``, where a ``#/components/schemas/...`` reference does not find them; they are moved to the components.

And one thing the request middleware does for every route (service/observability.py) is documented on every
operation: the optional ``X-Request-ID`` header (its pattern), the 400 a malformed one gets, and the
``X-Request-ID`` every answer carries.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.error_handlers import V2_PREFIX
from service.requestctx import REQUEST_ID, REQUEST_ID_HEADER
from service.schemas import ErrorBody, V2Error, ValidationErrorBody

_REF = "#/components/schemas/{model}"
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")
_REQUEST_ID = {
    "name": REQUEST_ID_HEADER, "in": "header", "required": False,
    "description": "the request's id, echoed in the answer's X-Request-ID and logged with every line about the "
                   "request; without it the service makes one",
    "schema": {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"},
}
_REQUEST_ID_ANSWER = {"description": "the request's id: the client's X-Request-ID, or the one the service made",
                      "schema": {"type": "string"}}


def _request_id(operation: dict[str, Any], error: str) -> None:
    """The X-Request-ID header on one operation: the parameter, the 400 for a malformed one, the answers' header."""
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("name") == REQUEST_ID_HEADER for p in parameters):
        parameters.append(dict(_REQUEST_ID))
    responses = operation.setdefault("responses", {})
    responses.setdefault("400", {"description": "a malformed X-Request-ID header",
                                 "content": {"application/json": {"schema": {"$ref": _REF.format(model=error)}}}})
    for answer in responses.values():
        answer.setdefault("headers", {})[REQUEST_ID_HEADER] = dict(_REQUEST_ID_ANSWER)


def _hoist_defs(node: Any, components: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            components.setdefault(name, schema)
        for value in node.values():
            _hoist_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, components)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                           tags=app.openapi_tags)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (ValidationErrorBody, V2Error, ErrorBody):
        schema = model.model_json_schema(ref_template=_REF)
        _hoist_defs(schema, components)
        components[model.__name__] = schema
    for path, operations in document.get("paths", {}).items():
        body = V2Error if path == V2_PREFIX or path.startswith(V2_PREFIX + "/") else ValidationErrorBody
        for operation in operations.values():
            _hoist_defs(operation.get("requestBody", {}), components)
            answer = operation.get("responses", {}).get("422")
            if answer is not None and _FASTAPI_422[0] in str(answer):
                answer["content"] = {"application/json": {"schema": {"$ref": _REF.format(model=body.__name__)}}}
            _request_id(operation, "V2Error" if body is V2Error else "ErrorBody")
    for name in _FASTAPI_422:
        components.pop(name, None)
    app.openapi_schema = document
    return document


def install_openapi(app: FastAPI) -> None:
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
