"""The Open Inference Protocol's wire format (KServe v2 REST, as Triton implements it), both directions.

Only translation lives here; the classification itself is the shared `Pipeline`. What a model looks like
over the protocol, for every model in the store:

- one input, ``image``: BYTES, shape ``[N]`` or ``[N, 1]``, each element one encoded image file (JPEG, PNG,
  ...); the service decodes and cuts it exactly as ``POST /predict`` does;
- one output, ``probabilities``: FP32 ``[N, classes]``, the softmax averaged over the crop scheme's patches;
  with Triton's classification extension (``"parameters": {"classification": K}`` on the requested output)
  it is instead BYTES ``[N, K]`` of ``"probability:index:label"`` strings, highest first.

Request body: JSON, where a BYTES element is a base64 string (KServe's own examples send images so), or the
binary tensor data extension: the JSON header is the first ``Inference-Header-Content-Length`` bytes and each
input with ``"parameters": {"binary_data_size": B}`` takes the next B bytes, every element a 4-byte
little-endian length followed by its bytes (tritonclient's encoding). Request parameter ``crops``: ``ten``
or ``center`` (default: the model's own scheme). Outputs are JSON unless an output asks for
``binary_data`` (or the request for ``binary_data_output``); then the response uses the same extension.

Every malformed request is a `BadRequest` (400) naming the field: wrong datatype, wrong shape, bad base64, a
binary size that does not match, an unknown input or output.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from alexnet_store.vocabulary import CROP_SCHEMES
from service.errors import BadRequest, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
PROTOCOL_INPUT = "image"
PROTOCOL_OUTPUT = "probabilities"
PROTOCOL_INPUT_DATATYPE = "BYTES"
PROTOCOL_OUTPUT_DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository", "model_configuration", "parameters")
_LENGTH = struct.Struct("<I")


class Ranked(Protocol):
    """One ranked class (service.pipeline.Prediction)."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # top-K strings instead of probabilities when > 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    crops: str | None
    outputs: list[RequestedOutput]

    @property
    def classification(self) -> tuple[int, str]:
        """The most classes any output asks to rank (0: none), and that output's field, for the dataplane's check."""
        j = max(range(len(self.outputs)), key=lambda i: self.outputs[i].classification, default=None)
        if j is None or not self.outputs[j].classification:
            return 0, ""
        return self.outputs[j].classification, f"outputs[{j}].parameters.classification"


def _field(value: Any, where: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadRequest(f"{where}: expected {what}, got {json.dumps(value)[:80]}", reason="bad_request")
    return value


def _bool(value: Any, where: str) -> bool:
    return _field(value, where, bool, "true or false")


def _split_elements(raw: bytes, count: int, where: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a 4-byte little-endian length and that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: binary data ends inside the length of element {len(elements)}",
                             reason="bad_binary")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"{where}: element {len(elements)} says {length:,} bytes but only "
                             f"{len(raw) - offset:,} are left in its binary_data_size", reason="bad_binary")
        elements.append(raw[offset:offset + length])
        offset += length
    if len(elements) != count:
        raise BadRequest(f"{where}: binary data holds {len(elements)} elements but the shape says {count}",
                         reason="bad_shape")
    return elements


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"{where}: expected a list of base64 strings", reason="bad_request")
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item, where) if isinstance(item, list) else [item])
    return out


def parse_infer_request(body: bytes, header_length: str | None, *, max_images: int,
                        max_image_bytes: int) -> InferRequest:
    """An infer request's body → the images and what to answer; BadRequest/PayloadTooLarge naming the field."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
            raise BadRequest(f"{HEADER_LENGTH}: {header_length!r} is not a length within the body of "
                             f"{len(body):,} bytes", reason="bad_binary")
        body, binary = body[:int(header_length)], body[int(header_length):]
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}", reason="bad_json") from exc
    _field(request, "request", dict, "a JSON object")
    request_id = request.get("id")
    if request_id is not None:
        _field(request_id, "id", str, "a string")
    parameters = _field(request.get("parameters", {}), "parameters", dict, "an object")
    crops = parameters.get("crops")
    if crops is not None and crops not in CROP_SCHEMES:
        raise BadRequest(f"parameters.crops: expected one of {sorted(CROP_SCHEMES)}, got {json.dumps(crops)}",
                         reason="bad_parameter")
    binary_default = _bool(parameters.get("binary_data_output", False), "parameters.binary_data_output")

    inputs = _field(request.get("inputs"), "inputs", list, "a list with one input")
    if len(inputs) != 1:
        raise BadRequest(f"inputs: expected one input ({PROTOCOL_INPUT!r}), got {len(inputs)}", reason="bad_request")
    where = "inputs[0]"
    tensor = _field(inputs[0], where, dict, "an object")
    name = tensor.get("name")
    if name != PROTOCOL_INPUT:
        raise BadRequest(f"{where}.name: unknown input {json.dumps(name)} (this model's input is {PROTOCOL_INPUT!r})",
                         reason="unknown_input")
    if tensor.get("datatype") != PROTOCOL_INPUT_DATATYPE:
        raise BadRequest(f"{where}.datatype: expected {PROTOCOL_INPUT_DATATYPE} (encoded image files), got "
                         f"{json.dumps(tensor.get('datatype'))}", reason="bad_datatype")
    shape = _field(tensor.get("shape"), f"{where}.shape", list, "[N] or [N, 1]")
    if not (len(shape) in (1, 2) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and shape[0] >= 1 and (len(shape) == 1 or shape[1] == 1)):
        raise BadRequest(f"{where}.shape: expected [N] or [N, 1] with N >= 1, got {json.dumps(shape)}",
                         reason="bad_shape")
    count = shape[0]
    if count > max_images:
        raise PayloadTooLarge(f"{where}.shape: {count} images, more than the limit of {max_images} per request",
                              reason="too_many_files")
    input_parameters = _field(tensor.get("parameters", {}), f"{where}.parameters", dict, "an object")
    if "binary_data_size" in input_parameters:
        size = _field(input_parameters["binary_data_size"], f"{where}.parameters.binary_data_size", int,
                      "a byte count")
        if "data" in tensor:
            raise BadRequest(f"{where}: both 'data' and binary_data_size are given", reason="bad_request")
        if size < 0 or size > len(binary):
            raise BadRequest(f"{where}.parameters.binary_data_size: {size:,} bytes, but the body has "
                             f"{len(binary):,} after its JSON header", reason="bad_binary")
        images = _split_elements(binary[:size], count, where)
        binary = binary[size:]
    else:
        data = _flatten(tensor.get("data"), f"{where}.data")
        if len(data) != count:
            raise BadRequest(f"{where}: the shape {json.dumps(shape)} holds {count} elements but data has "
                             f"{len(data)}", reason="bad_shape")
        images = []
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise BadRequest(f"{where}.data[{i}]: expected a base64 string, got {type(item).__name__}",
                                 reason="bad_base64")
            try:
                images.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise BadRequest(f"{where}.data[{i}]: not valid base64 ({exc})", reason="bad_base64") from exc
    if binary:
        raise BadRequest(f"{len(binary):,} bytes after the inputs' binary data belong to no input",
                         reason="bad_binary")
    for i, image in enumerate(images):
        if len(image) > max_image_bytes:
            raise PayloadTooLarge(f"{where} element {i} is larger than the limit of {max_image_bytes:,} bytes",
                                  reason="too_large")

    outputs = []
    for j, spec in enumerate(_field(request.get("outputs", [{"name": PROTOCOL_OUTPUT}]), "outputs", list, "a list")):
        at = f"outputs[{j}]"
        _field(spec, at, dict, "an object")
        if spec.get("name") != PROTOCOL_OUTPUT:
            raise BadRequest(f"{at}.name: unknown output {json.dumps(spec.get('name'))} (this model's output is "
                             f"{PROTOCOL_OUTPUT!r})", reason="unknown_output")
        params = _field(spec.get("parameters", {}), f"{at}.parameters", dict, "an object")
        classes = params.get("classification", 0)
        _field(classes, f"{at}.parameters.classification", int, "a class count")
        if classes < 0:  # the upper bound, the model's classes, is the dataplane's rule for every transport
            raise BadRequest(f"{at}.parameters.classification: expected a class count >= 1, got {classes}",
                             reason="bad_parameter")
        binary_out = _bool(params.get("binary_data", binary_default), f"{at}.parameters.binary_data")
        outputs.append(RequestedOutput(PROTOCOL_OUTPUT, binary_out, classes))
    return InferRequest(request_id, images, crops, outputs)


def classification_strings(top: Sequence[Sequence[Ranked]], k: int) -> np.ndarray:
    """Triton's classification extension: each image's top-k (the pipeline's ranking) as
    ``"probability:index:label"``, highest first."""
    rows = [[f"{p.probability:f}:{p.index}:{p.label}" for p in ranked[:k]] for ranked in top]
    return np.array(rows, dtype=object).reshape(len(rows), k)


def _serialize_bytes(values: np.ndarray) -> bytes:
    parts = []
    for value in values.reshape(-1):
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def encode_infer_response(request: InferRequest, *, model_name: str, model_version: int, probabilities: np.ndarray,
                          top: Sequence[Sequence[Ranked]], parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, or a JSON header plus binary tensors when any output asks for them."""
    outputs, blobs = [], []
    for spec in request.outputs:
        if spec.classification:
            tensor = classification_strings(top, spec.classification)
            datatype = "BYTES"
        else:
            tensor = probabilities.astype(np.float32, copy=False)
            datatype = PROTOCOL_OUTPUT_DATATYPE
        out: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": list(tensor.shape)}
        if spec.binary:
            blob = _serialize_bytes(tensor) if datatype == "BYTES" else np.ascontiguousarray(tensor, "<f4").tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = tensor.reshape(-1).tolist()
        outputs.append(out)
    header = {"model_name": model_name, "model_version": str(model_version), "parameters": parameters,
              "outputs": outputs}
    if request.id is not None:
        header = {"id": request.id, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
