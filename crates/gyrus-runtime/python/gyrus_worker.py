"""gyrus Python worker: runs one user predictor behind the replica's binary protocol.

The replica starts it as ``python3 -u gyrus_worker.py --fd 3`` with fd 3 a connected
AF_UNIX stream socket and the project snapshot as the working directory. Stdout and stderr
are the API's log; the protocol lives only on fd 3, so whatever user code prints is harmless.

Frames (little-endian): ``u32 len`` (bytes after this field), ``u8 kind``, ``u64 id``, body.

    1 INIT      replica -> worker  JSON: predictor_path, predictor_type, config, api_spec,
                                   job_spec, model_path, threads, api_name, worker_index
    2 REQUEST   replica -> worker  u8 flags (bit 0: debug, 3: request id), u16 ctype_len,
                                   u32 query_len, u32 headers_len, content type, query,
                                   headers JSON, [u8 id_len, request id], body
    3 SHUTDOWN  replica -> worker  finish in-flight work and exit 0 (EOF means the same)
    101 READY       worker -> replica  JSON: style, wants_query_params, wants_headers, pid
    102 INIT_FAILED worker -> replica  JSON: error, traceback (then exit 1)
    103 RESPONSE    worker -> replica  u16 status, u16 ctype_len, content type, body
    104 INFER       worker -> replica  onnx_client / tensorflow_client.predict: model name,
                                   flags, tensors
    4 INFER_RESULT  replica -> worker  output tensors
    5 INFER_ERROR   replica -> worker  u8 kind (0 server, 1 inputs, 2 overloaded), message

Tensors are raw little-endian bytes with a dtype code and a shape (see tensor_frame.rs);
INIT carries each model's signature under ``models``.

Only the standard library is used, and numpy for ONNX and TensorFlow predictors (whose
environment always has it). numpy values in a prediction are converted when user code has imported numpy.
"""

import collections
import email.message
import email.utils
import importlib.util
import inspect
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from urllib.parse import parse_qsl

INIT, REQUEST, SHUTDOWN, INFER_RESULT, INFER_ERROR = 1, 2, 3, 4, 5
READY, INIT_FAILED, RESPONSE, INFER = 101, 102, 103, 104

FRAME = struct.Struct("<IBQ")  # len, kind, id
REQUEST_HEAD = struct.Struct("<BHII")  # flags, ctype_len, query_len, headers_len
RESPONSE_HEAD = struct.Struct("<IBQHH")  # frame header, then status, ctype_len
FLAG_DEBUG = 1
FLAG_BATCH = 2  # a batch API's predict(payload, batch_id); the query is the batch id
FLAG_JOB_COMPLETE = 4  # a batch API's on_job_complete()
FLAG_REQUEST_ID = 8  # the request's X-Request-ID follows the headers (u8 length, bytes)

JSON_CT = b"application/json"
TEXT_CT = b"text/plain; charset=utf-8"
BYTES_CT = b"application/octet-stream"
DEBUG_LIMIT = 2000
SMALL_FRAME = 64 * 1024

CONSTRUCTOR_ARGS = ("config", "api_spec", "job_spec")
ONNX_CONSTRUCTOR_ARGS = ("onnx_client", "config", "api_spec", "job_spec")
TENSORFLOW_CONSTRUCTOR_ARGS = ("tensorflow_client", "config", "api_spec", "job_spec")
CLASS_PREDICT_ARGS = ("payload", "query_params", "headers")
BATCH_PREDICT_ARGS = ("payload", "batch_id")
FUNCTION_INIT_ARGS = ("model_path", "metadata", "config", "api_spec", "job_spec")
FUNCTION_PREDICT_ARGS = ("payload", "sample", "query_params", "headers", "metadata")
CLASS_NAMES = {"python": "PythonPredictor", "onnx": "ONNXPredictor", "tensorflow": "TensorFlowPredictor"}


class HTTPError(Exception):
    """A problem with the request, answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class InitError(Exception):
    """A problem gyrus found in the predictor itself; it has no useful traceback."""


class Overloaded(RuntimeError):
    """The engine refused a model call for load (its queue is full, or the call waited past the
    model's max_latency); answered with 503, unless predict() handles it."""


class InvalidInput(ValueError):
    """A model client's predict was given inputs that do not fit the model; answered with 400."""


# The engine's dtype codes: the index in gyrus_engine::DataType::ALL.
DTYPES = (
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64", "str",
)
TENSOR_HEAD = struct.Struct("<BB")  # dtype code, rank
U16, U32, U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_NP_DTYPES = []  # numpy dtypes by code, filled in when an ONNXClient is made (numpy is imported)


class ONNXClient:
    """Cortex's ``onnx_client``: runs the API's models in the replica's ONNX Runtime engine.

    ``predict`` returns what onnxruntime's ``InferenceSession.run`` returns: a list of numpy
    arrays, one per output, in the model's order.
    """

    def __init__(self, conn, models):
        import numpy

        self._np = numpy
        self._conn = conn
        self._models = {m["name"]: m for m in models}
        self._names = [m["name"] for m in models]
        self._plans = {m["name"]: _ModelPlan(m, len(models) > 1, numpy) for m in models}
        # As in Cortex, the name given for the only model is ignored.
        self._single = self._plans[self._names[0]] if len(models) == 1 else None
        global _NP_DTYPES
        _NP_DTYPES = _numpy_dtypes()

    @property
    def models(self):
        """The names of the API's models."""
        return list(self._names)

    def _model(self, model_name):
        if len(self._names) == 1:
            return self._models[self._names[0]]  # as in Cortex, the name is ignored
        if model_name is None:
            raise InvalidInput(
                "this API serves several models, so predict() needs model_name: "
                + ", ".join(f'"{n}"' for n in self._names)
            )
        model = self._models.get(model_name)
        if model is None:
            raise InvalidInput(
                f'unknown model "{model_name}"; this API serves ' + ", ".join(f'"{n}"' for n in self._names)
            )
        return model

    @staticmethod
    def _signature(tensors):
        return {
            t["name"]: {"type": t["dtype"], "shape": [None if d < 0 else d for d in t["shape"]]}
            for t in tensors
        }

    def input_signature(self, model_name=None):
        """``{input name: {"type": numpy dtype name, "shape": [None for any size, ...]}}``."""
        return self._signature(self._model(model_name)["inputs"])

    def output_signature(self, model_name=None):
        return self._signature(self._model(model_name)["outputs"])

    def predict(self, model_input, model_name=None):
        plan = self._single or self._plans[self._model(model_name)["name"]]
        return self._run(plan, model_input)

    # What a model_input that does not fit the signature is told, in this client's words
    # (TensorFlowClient says it as Cortex's tensorflow_client did).
    _MISSING_FIRST = False

    def _missing(self, plan, name):
        return f'missing input "{name}"; the model takes ' + ", ".join(f'"{n}"' for n in plan.input_names)

    def _unknown(self, plan, key):
        return f'unknown input "{key}"; the model takes ' + ", ".join(f'"{n}"' for n in plan.input_names)

    def _not_a_dict(self, plan):
        return (
            f"the model takes {len(plan.inputs)} inputs ("
            + ", ".join(f'"{n}"' for n in plan.input_names)
            + "); pass a dict of input name to value"
        )

    def _run(self, plan, model_input):
        """Runs ``plan``'s model on ``model_input`` (a dict of input name to value, or the bare
        value of a one-input model) and returns its outputs as numpy arrays, in order."""
        inputs = plan.inputs
        if isinstance(model_input, dict):
            names = plan.input_names
            missing = next((n for n in names if n not in model_input), None)
            unknown = next((k for k in model_input if k not in names), None)
            if missing is not None and (self._MISSING_FIRST or unknown is None):
                raise InvalidInput(self._missing(plan, missing))
            if unknown is not None:
                raise InvalidInput(self._unknown(plan, unknown))
            values = [(t, model_input[t.name]) for t in inputs]
        elif len(inputs) == 1:
            values = [(inputs[0], model_input)]
        else:
            raise InvalidInput(self._not_a_dict(plan))
        parts = [plan.head]
        for info, value in values:
            self._encode(parts, info, value)
        return self._decode(self._conn.infer(parts))

    def _encode(self, parts, info, value):
        np = self._np
        name, dtype = info.name, info.dtype
        try:
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        except ValueError as e:  # ragged nesting
            raise InvalidInput(f'input "{name}": not a rectangular array: {e}') from None
        kind = arr.dtype.kind
        if dtype == "str":
            if kind not in "USO":
                raise InvalidInput(f'input "{name}": expected strings, found {arr.dtype} numbers')
            items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in arr.reshape(-1).tolist()]
            data = b"".join(U32.pack(len(x)) + x for x in items)
        else:
            if dtype == "bfloat16":
                raise InvalidInput(f'input "{name}": bfloat16 inputs cannot be sent from Python (numpy has no bfloat16)')
            if kind in "USOV":
                found = {"U": "strings", "S": "bytes", "O": "Python objects", "V": "records"}[kind]
                raise InvalidInput(f'input "{name}": expected {dtype} numbers, found {found}')
            if dtype == "bool" and kind != "b":
                raise InvalidInput(f'input "{name}": expected bool values, found {arr.dtype}')
            if kind == "f" and info.np_dtype.kind in "iu" and arr.size and not np.all(np.mod(arr, 1) == 0):
                # numpy would truncate 1.7 to 1; TensorFlow Serving (and Cortex) refused it.
                raise InvalidInput(f'input "{name}": expected {dtype} values, found fractional numbers')
            if arr.dtype != info.np_dtype or not arr.flags.c_contiguous:
                try:
                    arr = np.asarray(arr, dtype=info.np_dtype, order="C")
                except (ValueError, TypeError, OverflowError) as e:
                    raise InvalidInput(f'input "{name}": cannot convert to {dtype}: {e}') from None
            # A small tensor is copied into the joined frame anyway; a large one goes to
            # sendmsg as a view of the array, without a copy.
            nbytes = arr.nbytes
            data = arr.tobytes() if nbytes <= SMALL_FRAME else memoryview(arr.reshape(-1)).cast("B")
        parts += [info.head, _tensor_head(arr.ndim).pack(info.code, arr.ndim, *arr.shape, len(data)), data]

    def _decode(self, body):
        np = self._np
        (count,) = U16.unpack_from(body, 0)
        at = 2
        outputs = []
        for _ in range(count):
            at += 2 + U16.unpack_from(body, at)[0]  # the name: outputs come in the model's order
            code, rank = TENSOR_HEAD.unpack_from(body, at)
            head = _output_head(rank)
            *shape, size = head.unpack_from(body, at + 2)
            at += 2 + head.size
            np_dtype = _NP_DTYPES[code] if code < len(_NP_DTYPES) else None
            if np_dtype is not None:
                if size % np_dtype.itemsize or at + size > len(body):
                    raise RuntimeError(f"malformed INFER_RESULT: {size} bytes of {DTYPES[code]}")
                # A view of the received buffer (writable, like onnxruntime's outputs): no copy.
                arr = np.frombuffer(body, np_dtype, size // np_dtype.itemsize, at).reshape(shape)
            elif DTYPES[code] == "str":
                data = memoryview(body)[at : at + size]
                items, i = [], 0
                while i < size:
                    (k,) = U32.unpack_from(data, i)
                    raw = bytes(data[i + 4 : i + 4 + k])
                    try:
                        items.append(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        items.append(raw)  # binary data (an encoded image, say) stays bytes
                    i += 4 + k
                arr = np.array(items, dtype=object).reshape(shape)
            else:  # bfloat16
                bits = np.frombuffer(body, "<u2", size // 2, at).astype(np.uint32) << 16
                arr = bits.view(np.float32).reshape(shape)
            at += size
            outputs.append(arr)
        return outputs


class TensorFlowClient(ONNXClient):
    """Cortex's ``tensorflow_client``: runs the API's SavedModels in the replica's TensorFlow
    engine (where Cortex called TensorFlow Serving over gRPC).

    ``predict`` takes a dict of signature input name to value (or the bare value when the
    signature has one input), converts each value to the signature's dtype, and returns a dict
    of output name to the output's values as a flat list, as TensorFlow Serving's predict
    answered through Cortex (``int(prediction["class_ids"][0])`` keeps working).
    """

    def predict(self, model_input, model_name=None, model_version=None):
        model = self._model(model_name)
        name = model["name"]
        if model_version is not None and str(model_version) not in ("highest", "latest", model["version"]):
            raise InvalidInput(
                f'model "{name}" has no version "{model_version}"; the version served is "{model["version"]}"'
            )
        outputs = self._run(self._plans[name], model_input)
        return {o["name"]: arr.reshape(-1).tolist() for o, arr in zip(model["outputs"], outputs)}

    _MISSING_FIRST = True

    def _missing(self, plan, name):
        return f'missing key "{name}" for model "{plan.model}"; its signature takes ' + self._takes(plan)

    def _unknown(self, plan, key):
        return f'unknown key "{key}" for model "{plan.model}"; its signature takes ' + self._takes(plan)

    def _not_a_dict(self, plan):
        return f'model "{plan.model}" takes {len(plan.inputs)} inputs ({self._takes(plan)}); pass a dict of input name to value'

    @staticmethod
    def _takes(plan):
        return ", ".join(f'"{n}"' for n in plan.input_names)


class _Input:
    """What encoding one model input needs, worked out once: its name's bytes, dtype code and
    numpy dtype."""

    __slots__ = ("name", "dtype", "code", "np_dtype", "head")

    def __init__(self, info, np):
        self.name, self.dtype = info["name"], info["dtype"]
        self.code = DTYPES.index(self.dtype)
        self.np_dtype = None if self.dtype in ("str", "bfloat16") else np.dtype(self.dtype).newbyteorder("<")
        encoded = self.name.encode()
        self.head = U16.pack(len(encoded)) + encoded


class _ModelPlan:
    """A model's INFER frame head (model name, flags, input count) and its inputs."""

    __slots__ = ("head", "inputs", "input_names", "model")

    def __init__(self, model, named, np):
        self.model = model["name"]
        self.inputs = [_Input(t, np) for t in model["inputs"]]
        self.input_names = [t.name for t in self.inputs]
        name = model["name"].encode() if named else b""
        self.head = U16.pack(len(name)) + name + bytes([1]) + U16.pack(len(self.inputs))


_TENSOR_HEADS = {}
_OUTPUT_HEADS = {}


def _tensor_head(rank):
    """dtype code, rank, shape, data length: one struct per rank."""
    head = _TENSOR_HEADS.get(rank)
    if head is None:
        head = _TENSOR_HEADS[rank] = struct.Struct(f"<BB{rank}QQ")
    return head


def _output_head(rank):
    """An output's shape (signed: the engine writes i64) and data length: one struct per rank."""
    head = _OUTPUT_HEADS.get(rank)
    if head is None:
        head = _OUTPUT_HEADS[rank] = struct.Struct(f"<{rank}qQ")
    return head


def _numpy_dtypes():
    """numpy's little-endian dtype per engine dtype code; None where decoding is special."""
    np = sys.modules.get("numpy")
    return [None if d in ("str", "bfloat16") else np.dtype(d).newbyteorder("<") for d in DTYPES]


class Headers(dict):
    """Request headers: names are stored lower case and looked up ignoring case."""

    __slots__ = ()

    def __getitem__(self, key):
        return dict.__getitem__(self, _lower(key))

    def __setitem__(self, key, value):
        dict.__setitem__(self, _lower(key), value)

    def __delitem__(self, key):
        dict.__delitem__(self, _lower(key))

    def __contains__(self, key):
        return dict.__contains__(self, _lower(key))

    def get(self, key, default=None):
        return dict.get(self, _lower(key), default)

    def pop(self, key, *default):
        return dict.pop(self, _lower(key), *default)

    def setdefault(self, key, default=None):
        return dict.setdefault(self, _lower(key), default)


def _lower(key):
    return key.lower() if isinstance(key, str) else key


def _headers_from_pairs(pairs):
    # Repeated headers are combined the way HTTP defines it, so no value is lost.
    headers = Headers()
    for name, value in pairs:
        name = name.lower()
        if dict.__contains__(headers, name):
            value = dict.__getitem__(headers, name) + ", " + value
        dict.__setitem__(headers, name, value)
    return headers


class FormData(dict):
    """Form fields and files: ``form[key]`` is the last value, ``getlist`` gives them all."""

    def __init__(self, items=()):
        self._items = list(items)
        super().__init__(self._items)

    def getlist(self, key):
        return [value for name, value in self._items if name == key]

    def multi_items(self):
        return list(self._items)

    def close(self):
        for value in self.values():
            if isinstance(value, UploadFile):
                value.close()


class UploadFile:
    """A file part of a multipart form; ``file`` is an ``io.BytesIO`` over its content."""

    def __init__(self, filename, content_type, headers, data):
        self.filename = filename
        self.content_type = content_type
        self.headers = headers
        self.size = len(data)
        self.file = io.BytesIO(data)

    def read(self, size=-1):
        return self.file.read(size)

    def seek(self, offset):
        return self.file.seek(offset)

    def close(self):
        self.file.close()

    def __repr__(self):
        return f"UploadFile(filename={self.filename!r}, content_type={self.content_type!r}, size={self.size})"


def _params(value, header="content-type"):
    """A message whose ``header`` is ``value``, to reuse email's parameter parsing."""
    msg = email.message.Message()
    msg[header] = value
    return msg


def decode_payload(ctype, body):
    media = ctype.partition(";")[0].strip().lower()
    if media == "application/json":
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise HTTPError(400, f"invalid JSON body: {e}") from None
    if media == "text/plain":
        charset = _params(ctype).get_content_charset() or "utf-8"
        try:
            return body.decode(charset)
        except LookupError:
            raise HTTPError(400, f"unknown charset in Content-Type: {charset}") from None
        except UnicodeDecodeError as e:
            raise HTTPError(400, f"text/plain body is not valid {charset}: {e}") from None
    if media == "application/x-www-form-urlencoded":
        try:
            return FormData(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, f"invalid form body: {e}") from None
    if media == "multipart/form-data":
        return _multipart(ctype, body)
    return body


def _multipart(ctype, body):
    boundary = _params(ctype).get_boundary()
    if not boundary:
        raise HTTPError(400, "multipart/form-data Content-Type has no boundary parameter")
    dash = b"--" + boundary.encode("latin-1", "replace")
    # Every delimiter but an opening one follows a CRLF, which belongs to the delimiter.
    if body.startswith(dash):
        pos = 0
    else:
        pos = body.find(b"\r\n" + dash)
        if pos < 0:
            raise HTTPError(400, "multipart body does not contain its boundary")
        pos += 2
    items = []
    while True:
        pos += len(dash)
        if body.startswith(b"--", pos):
            return FormData(items)
        eol = body.find(b"\r\n", pos)
        end = body.find(b"\r\n" + dash, pos)
        if eol < 0 or end < 0:
            raise HTTPError(400, "multipart body is truncated (no closing boundary)")
        items.append(_multipart_part(body, eol + 2, end))
        pos = end + 2


def _multipart_part(body, start, end):
    if body.startswith(b"\r\n", start):
        head_end, data_start = start, start + 2
    else:
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end < 0:
            raise HTTPError(400, "multipart part has no blank line after its headers")
        data_start = head_end + 4
    pairs = []
    for line in body[start:head_end].decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and pairs:
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + " " + line.strip())
        elif line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPError(400, f"malformed multipart part header: {line!r}")
            pairs.append((name.strip(), value.strip()))
    headers = _headers_from_pairs(pairs)
    disposition = _params(headers.get("content-disposition", ""), "content-disposition")
    name = disposition.get_param("name", header="content-disposition")
    if name is None:
        raise HTTPError(400, "multipart part has no name in its Content-Disposition")
    name = email.utils.collapse_rfc2231_value(name)
    data = body[data_start:end]
    filename = disposition.get_filename()
    if filename is not None:
        return name, UploadFile(filename, headers.get("content-type"), headers, data)
    charset = _params(headers.get("content-type", "text/plain")).get_content_charset() or "utf-8"
    try:
        return name, data.decode(charset)
    except (LookupError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"form field {name!r} is not valid {charset}: {e}") from None


def _json_default(value):
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Compact and strict like Cortex's JSON responses (NaN is not JSON, so it is an error).
JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default)


def encode_result(value):
    """Returns (status, content type, body) for what predict() returned."""
    if isinstance(value, (bytes, bytearray)):
        return 200, BYTES_CT, value
    if isinstance(value, memoryview):
        return 200, BYTES_CT, value.cast("B") if value.c_contiguous else value.tobytes()
    if isinstance(value, str):
        return 200, TEXT_CT, value.encode("utf-8", "replace")
    try:
        return 200, JSON_CT, JSON_ENCODER.encode(value).encode("utf-8", "replace")
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        return error_response(500, f"predict() returned a value that is not JSON serialisable: {e}")


def error_response(status, message):
    return status, JSON_CT, json.dumps({"error": message}).encode()


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= DEBUG_LIMIT else text[:DEBUG_LIMIT] + f"... ({len(text)} chars)"


def _tag(request_id):
    """The start of gyrus's own log lines about a request: its id, as the replica's lines have."""
    return f"[request_id={request_id}] " if request_id else ""


def _user_traceback(exc):
    """The traceback without the worker's own frames and importlib's, which only add noise."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename == __file__ or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _plan_call(fn, what, provided):
    """Which of the ``provided`` names to pass to ``fn``: (positional names, keyword names).

    Cortex passed only the arguments a function names; ``**kwargs`` gets all of them.
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # e.g. a builtin without a signature: pass nothing
        return [], []
    positional, keywords = [], []
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            keywords += [n for n in provided if n not in positional and n not in keywords]
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.name in provided:
            (positional if p.kind is p.POSITIONAL_ONLY else keywords).append(p.name)
        elif p.default is p.empty:
            raise InitError(
                f"{what} requires a parameter named {p.name!r}, which gyrus does not provide "
                f"(it provides: {', '.join(provided)})"
            )
    return positional, keywords


def _call(fn, plan, values):
    positional, keywords = plan
    return fn(*[values[n] for n in positional], **{n: values[n] for n in keywords})


class Predictor:
    """The user's predictor, loaded and constructed from the INIT message."""

    def __init__(self, init, conn):
        self.config = init.get("config") or {}
        self.batch = init.get("api_kind") == "BatchAPI"
        self.on_job_complete = None
        predictor_type = init.get("predictor_type") or "python"
        client_class = TensorFlowClient if predictor_type == "tensorflow" else ONNXClient
        model_client = client_class(conn, init["models"]) if init.get("models") else None
        path = os.path.abspath(init["predictor_path"])
        module = self._load_module(path)
        class_name = CLASS_NAMES.get(predictor_type, "PythonPredictor")
        cls = getattr(module, class_name, None)
        if inspect.isclass(cls):
            self.style = "class"
            values = {
                "config": self.config,
                "api_spec": init.get("api_spec"),
                "job_spec": init.get("job_spec"),
                "onnx_client": model_client,
                "tensorflow_client": model_client,
            }
            if model_client is None:
                names = CONSTRUCTOR_ARGS
            elif predictor_type == "tensorflow":
                names = TENSORFLOW_CONSTRUCTOR_ARGS
            else:
                names = ONNX_CONSTRUCTOR_ARGS
            instance = _call(cls, _plan_call(cls, f"{class_name}.__init__()", names), values)
            self.predict_fn = getattr(instance, "predict", None)
            if not callable(self.predict_fn):
                raise InitError(f"{class_name} in {init['predictor_path']} has no predict() method")
            provided = BATCH_PREDICT_ARGS if self.batch else CLASS_PREDICT_ARGS
            what = f"{class_name}.predict()"
            complete = getattr(instance, "on_job_complete", None)
            self.on_job_complete = complete if callable(complete) else None
        elif callable(getattr(module, "predict", None)) and not self.batch:
            self.style = "function"
            init_fn = getattr(module, "init", None)
            if callable(init_fn):
                values = {
                    "model_path": init.get("model_path"),
                    "metadata": self.config,
                    "config": self.config,
                    "api_spec": init.get("api_spec"),
                    "job_spec": init.get("job_spec"),
                }
                _call(init_fn, _plan_call(init_fn, "init()", FUNCTION_INIT_ARGS), values)
            self.predict_fn = module.predict
            provided = FUNCTION_PREDICT_ARGS
            what = "predict()"
        else:
            raise InitError(
                f"{init['predictor_path']} defines neither a class named {class_name} "
                f"nor a module-level predict() function"
            )
        self.plan = _plan_call(self.predict_fn, what, provided)
        wanted = set(self.plan[0]) | set(self.plan[1])
        self.wants_query_params = "query_params" in wanted
        self.wants_headers = "headers" in wanted
        # predict(payload), the usual form, is called without building the argument dict.
        self.payload_only = self.plan == ([], ["payload"])

    @staticmethod
    def _load_module(path):
        name = os.path.splitext(os.path.basename(path))[0]
        # A predictor called e.g. json.py must not replace a module the worker itself uses.
        if name in sys.modules:
            name = f"_gyrus_predictor_{name}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InitError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # so pickle, dataclasses and friends can find it
        spec.loader.exec_module(module)
        return module

    def predict_batch(self, payload, batch_id):
        return _call(self.predict_fn, self.plan, {"payload": payload, "batch_id": batch_id})

    def predict(self, payload, query, headers):
        if self.payload_only:
            return self.predict_fn(payload=payload)
        values = {
            "payload": payload,
            "sample": payload,
            "query_params": dict(parse_qsl(query, keep_blank_values=True)) if self.wants_query_params else None,
            "headers": headers,
            "metadata": self.config,
        }
        return _call(self.predict_fn, self.plan, values)


class _Waiter:
    """A thread waiting for one frame: the next request, or the reply to its INFER call.

    ``lock`` is held by its owner and released once by whoever wakes it, so a wake-up that
    comes before the owner sleeps is not lost.
    """

    __slots__ = ("lock", "done", "value", "sleeping", "wants_request")

    def __init__(self, wants_request):
        self.lock = None
        self.done = False
        self.value = None
        self.sleeping = False
        self.wants_request = wants_request


class Connection:
    """Frames over the socket: read by whichever thread needs one, written under a lock by any.

    No thread is dedicated to reading (leader/follower): a thread that needs a frame (the next
    request, or the reply to its own ``onnx_client.predict``) reads frames itself while no
    other thread does, keeps its own and hands the others over: a request to a thread waiting
    for one (or to the queue), a reply to the thread that made the call. A thread that finds
    another reading sleeps until that reader hands it its frame or stops reading, when one
    sleeper takes over. So with one predict thread a request and its INFER replies are read by
    the thread that uses them, without a thread switch; with several, a call made from any
    thread (one that predict() waits for included) is still answered, since a waiting thread
    reads when nobody else does.
    """

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.rfile = self.sock.makefile("rb", buffering=1 << 16)
        self.lock = threading.Lock()  # writes
        self.mu = threading.Lock()  # everything below
        self.reader = None  # the _Waiter whose thread reads frames, if any
        self.requests = collections.deque()  # read, and no thread was waiting for them
        self.idle = collections.deque()  # sleeping _Waiters for a request
        self.calls = {}  # call id -> _Waiter
        self.next_call = 0
        self.stopping = False  # SHUTDOWN or EOF: no more requests
        self.closed = False  # EOF: no more replies
        self.index = 0  # the worker's, for messages

    def next_request(self):
        """The next request, or None when the worker should stop (SHUTDOWN or EOF)."""
        with self.mu:
            if self.requests:
                return self.requests.popleft()
            if self.stopping:
                return None
            waiter = _Waiter(True)
            if self.reader is not None:
                self.idle.append(waiter)
        self._wait(waiter)
        return waiter.value

    def infer(self, parts):
        """Sends an INFER frame built from ``parts`` and returns the INFER_RESULT body."""
        waiter = _Waiter(False)
        with self.mu:
            if self.closed:
                raise RuntimeError("the replica closed the connection")
            self.next_call += 1
            cid = self.next_call
            self.calls[cid] = waiter
        size = sum(map(len, parts))
        parts.insert(0, FRAME.pack(size + FRAME.size - 4, INFER, cid))
        try:
            self.send(parts, size + FRAME.size)
        except BaseException:
            with self.mu:
                self.calls.pop(cid, None)
            raise
        self._wait(waiter)
        kind, body = waiter.value
        if kind == INFER_RESULT:
            return body
        message = bytes(body[1:]).decode("utf-8", "replace")
        if body[:1] == b"\x01":
            raise InvalidInput(message)
        if body[:1] == b"\x02":
            raise Overloaded(message)
        raise RuntimeError(message)

    def _wait(self, waiter):
        """Returns once ``waiter`` is done, reading frames meanwhile while no other thread is."""
        while True:
            with self.mu:
                if waiter.done:
                    return
                # A reader that stops hands the reading to a sleeper by making it the reader.
                lead = self.reader is None or self.reader is waiter
                if lead:
                    self.reader = waiter
                else:
                    if waiter.lock is None:
                        waiter.lock = threading.Lock()
                        waiter.lock.acquire()
                    waiter.sleeping = True
            if lead:
                self._lead(waiter)
                return
            waiter.lock.acquire()  # woken: done, or made the reader

    def _wake(self, waiter):
        # Under mu. Each sleep is ended by exactly one release.
        if waiter.sleeping:
            waiter.sleeping = False
            waiter.lock.release()

    def _lead(self, waiter):
        """Reads and hands over frames until ``waiter``'s own has come, then passes the reading
        on to a sleeping thread, if any."""
        try:
            while not waiter.done:
                try:
                    frame = self._read_frame()
                except (EOFError, OSError):
                    frame = None  # the replica went away, perhaps mid-frame
                except ValueError as e:
                    print(f"worker {self.index}: protocol error: {e}", file=sys.stderr)
                    os._exit(2)
                with self.mu:
                    self._dispatch(frame)
        finally:
            with self.mu:
                self.reader = None
                nxt = self.idle.popleft() if self.idle else None
                if nxt is None and self.calls:
                    nxt = next((w for w in self.calls.values() if w.sleeping), None)
                if nxt is not None:
                    self.reader = nxt
                    self._wake(nxt)

    def _dispatch(self, frame):
        """Hands one frame (None at EOF) to the thread it is for. Under mu."""
        if frame is None:
            self.stopping = self.closed = True
            calls, self.calls = list(self.calls.values()), {}
            for w in calls:
                self._finish(w, (INFER_ERROR, b"\x00the replica closed the connection"))
            self._stop_idle()
            return
        kind, rid, body = frame
        if kind == REQUEST:
            reader = self.reader
            if reader.wants_request and not reader.done:
                self._finish(reader, body)
            elif self.idle:
                self._finish(self.idle.popleft(), body)
            else:
                self.requests.append(body)
        elif kind == INFER_RESULT or kind == INFER_ERROR:
            w = self.calls.pop(rid, None)
            if w is not None:
                self._finish(w, (kind, body))
        elif kind == SHUTDOWN:
            # Stop taking requests, but keep reading: calls in flight still get replies.
            self.stopping = True
            self._stop_idle()
        else:
            raise AssertionError(kind)  # _read_frame checked the kind

    def _finish(self, waiter, value):
        waiter.value, waiter.done = value, True
        self._wake(waiter)

    def _stop_idle(self):
        reader = self.reader
        if reader is not None and reader.wants_request and not reader.done and not self.requests:
            self._finish(reader, None)
        while self.idle:
            self._finish(self.idle.popleft(), None)

    def _read_frame(self):
        """(kind, id, body), the body of a REQUEST parsed; None at EOF between frames."""
        head = self.rfile.read(FRAME.size)
        if not head:
            return None
        if len(head) != FRAME.size:
            raise EOFError
        length, kind, rid = FRAME.unpack(head)
        size = length - (FRAME.size - 4)
        if kind == REQUEST:
            return kind, rid, self._parse_request(rid, self.read_exact(size))
        if kind == INFER_RESULT or kind == INFER_ERROR:
            return kind, rid, self.read_body(size)
        if kind == SHUTDOWN:
            self.read_exact(size)
            return kind, rid, None
        raise ValueError(f"unexpected frame kind {kind}")

    @staticmethod
    def _parse_request(rid, data):
        """A REQUEST frame's body as (rid, flags, content type, query, headers JSON, body)."""
        if len(data) < REQUEST_HEAD.size:
            raise ValueError("REQUEST frame is shorter than its head")
        flags, ctype_len, query_len, headers_len = REQUEST_HEAD.unpack_from(data)
        a = REQUEST_HEAD.size
        b = a + ctype_len
        c = b + query_len
        d = c + headers_len
        if d > len(data):
            raise ValueError(f"REQUEST frame lengths are inconsistent (body length {len(data) - d})")
        ctype = data[a:b].decode("latin-1")
        query = data[b:c].decode("utf-8", "replace")
        request_id = ""
        if flags & FLAG_REQUEST_ID:
            if d >= len(data) or d + 1 + data[d] > len(data):
                raise ValueError("REQUEST frame's request id is truncated")
            request_id = bytes(data[d + 1 : d + 1 + data[d]]).decode("ascii", "replace")
            body = data[d + 1 + data[d] :]
        else:
            body = data[d:]
        return rid, flags, ctype, query, data[c:d], body, request_id

    def read_exact(self, n):
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise EOFError
        return data

    def read_body(self, n):
        """A writable buffer, so that numpy arrays made over it are writable like onnxruntime's."""
        buf = bytearray(n)
        got = self.rfile.readinto(buf)
        if got < n:
            view = memoryview(buf)
            while got < n:
                k = self.rfile.readinto(view[got:])
                if not k:
                    raise EOFError
                got += k
        return buf

    def read_frame_head(self):
        """(kind, id, body length), or None at EOF. Only before the predict threads start."""
        try:
            length, kind, rid = FRAME.unpack(self.read_exact(FRAME.size))
        except EOFError:
            return None
        return kind, rid, length - (FRAME.size - 4)

    def send(self, parts, size=None):
        """Writes one frame, given as parts, with one system call where the socket takes it."""
        if size is None:
            size = sum(map(len, parts))
        if size <= SMALL_FRAME:
            # Joining a small frame is cheaper than building memoryviews for sendmsg.
            data = b"".join(parts)
            with self.lock:
                self.sock.sendall(data)
            return
        # sendmsg hands the parts to the kernel without copying the body; loop on short writes.
        parts = [memoryview(p) for p in parts if len(p)]
        with self.lock:
            while parts:
                sent = self.sock.sendmsg(parts)
                while parts and sent >= parts[0].nbytes:
                    sent -= parts.pop(0).nbytes
                if sent:
                    parts[0] = parts[0][sent:]

    def send_json(self, kind, rid, value):
        body = json.dumps(value).encode()
        self.send([FRAME.pack(len(body) + FRAME.size - 4, kind, rid), body])

    def send_response(self, rid, status, ctype, body):
        size = RESPONSE_HEAD.size - 4 + len(ctype) + len(body)
        self.send([RESPONSE_HEAD.pack(size, RESPONSE, rid, status, len(ctype)), ctype, body])


class _Batcher:
    """Cortex's ``server_side_batching`` for Python predictors: the payloads of requests this
    worker's threads hold at once are grouped, up to ``max_batch_size`` or ``batch_interval``
    after the first, and ``predict`` is called once, on this batcher's thread, with the list;
    it must return a list of the same length, each element one request's response."""

    def __init__(self, predictor, max_batch_size, batch_interval, index):
        import queue

        self.predictor = predictor
        self.max_size = max(1, int(max_batch_size))
        self.interval = max(0.0, float(batch_interval))
        self.index = index
        self.queue = queue.SimpleQueue()
        self._empty = queue.Empty
        threading.Thread(target=self._run, name="server_side_batching", daemon=True).start()

    def call(self, payload, query, headers):
        """One request's response, once its batch ran (raises what predict raised)."""
        slot = [threading.Event(), None, None]  # done, result, exception
        self.queue.put((slot, payload, query, headers))
        slot[0].wait()
        if slot[2] is not None:
            raise slot[2]
        return slot[1]

    def _run(self):
        import time

        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.interval
            while len(batch) < self.max_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self.queue.get(timeout=left))
                except self._empty:
                    break
            self._predict(batch)

    def _predict(self, batch):
        p = self.predictor
        try:
            values = {
                "payload": [b[1] for b in batch],
                "sample": [b[1] for b in batch],
                "query_params": [dict(parse_qsl(b[2], keep_blank_values=True)) for b in batch]
                if p.wants_query_params
                else None,
                "headers": [b[3] for b in batch],
                "metadata": p.config,
            }
            results = p.predict_fn(payload=values["payload"]) if p.payload_only else _call(p.predict_fn, p.plan, values)
            if not isinstance(results, (list, tuple)) or len(results) != len(batch):
                got = f"a list of {len(results)}" if isinstance(results, (list, tuple)) else type(results).__name__
                raise TypeError(
                    f"predict() with server_side_batching gets a list of {len(batch)} payloads and must "
                    f"return a list of {len(batch)} responses, one per payload; it returned {got}"
                )
            for (slot, *_), result in zip(batch, results):
                slot[1] = result
        except BaseException as e:  # noqa: BLE001 - user code may raise anything; every request hears it
            import copy

            # Each waiting thread raises its own copy: one exception object raised in several
            # threads at once would have its traceback rewritten under them.
            for i, (slot, *_) in enumerate(batch):
                slot[2] = e if i == 0 else copy.copy(e)
        for slot, *_ in batch:
            slot[0].set()


class Worker:
    def __init__(self, conn, predictor, index, server_side_batching=None):
        self.conn = conn
        self.predictor = predictor
        self.index = index
        self.batcher = None
        if server_side_batching:
            self.batcher = _Batcher(
                predictor,
                server_side_batching["max_batch_size"],
                server_side_batching["batch_interval"],
                index,
            )

    def handle(self, rid, flags, ctype, query, headers_json, body, request_id=""):
        # Every request must get exactly one response, whatever user code raises.
        if flags & (FLAG_BATCH | FLAG_JOB_COMPLETE):
            return self.handle_job_call(rid, flags, ctype, query, body)
        try:
            try:
                payload = decode_payload(ctype, body)
                headers = None
                if self.predictor.wants_headers:
                    headers = json.loads(headers_json or b"{}", object_pairs_hook=_headers_from_pairs)
                if flags & FLAG_DEBUG:
                    print(f"{_tag(request_id)}debug: payload: {_short_repr(payload)}", file=sys.stderr)
                if self.batcher is not None:
                    result = self.batcher.call(payload, query, headers)
                else:
                    result = self.predictor.predict(payload, query, headers)
                if flags & FLAG_DEBUG:
                    print(f"{_tag(request_id)}debug: prediction: {_short_repr(result)}", file=sys.stderr)
                status, ct, out = encode_result(result)
            except HTTPError as e:
                status, ct, out = error_response(e.status, str(e))
            except InvalidInput as e:
                # The engine rejected the inputs predict() built, most likely from the payload.
                status, ct, out = error_response(400, str(e))
            except Overloaded as e:
                status, ct, out = error_response(503, str(e))
            except BaseException as e:  # noqa: BLE001 - user code may raise anything
                sys.stderr.write(
                    f"{_tag(request_id)}worker {self.index}: predict() raised an exception:\n{_user_traceback(e)}"
                )
                message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                status, ct, out = error_response(500, message)
            self.conn.send_response(rid, status, ct, out)
        except OSError:
            pass  # the replica is gone; the read loop sees EOF and ends the worker

    def handle_job_call(self, rid, flags, ctype, query, body):
        """A batch API's predict(payload, batch_id) or on_job_complete(): a failure is answered
        with the error and the user's traceback, which the job keeps with the batch."""
        try:
            try:
                if flags & FLAG_JOB_COMPLETE:
                    what = "on_job_complete()"
                    if self.predictor.on_job_complete is not None:
                        self.predictor.on_job_complete()
                    result = None
                else:
                    what = "predict()"
                    payload = decode_payload(ctype, body)
                    batch_id = query.decode("utf-8", "replace") if isinstance(query, bytes) else query
                    result = self.predictor.predict_batch(payload, batch_id)
                status, ct, out = encode_result(result)
            except BaseException as e:  # noqa: BLE001 - user code may raise anything
                tb = _user_traceback(e)
                sys.stderr.write(f"worker {self.index}: {what} raised an exception:\n{tb}")
                message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                out = json.dumps({"error": message, "traceback": tb}).encode()
                status, ct = 500, JSON_CT
            self.conn.send_response(rid, status, ct, out)
        except OSError:
            pass

    def serve(self, threads):
        """Serves requests on ``threads`` threads (this one included) until SHUTDOWN or EOF;
        each takes its next request itself (see Connection), so none waits on a dispatcher."""
        others = [
            threading.Thread(target=self._serve_one, name=f"predict_{i}", daemon=True) for i in range(1, threads)
        ]
        for t in others:
            t.start()
        self._serve_one()
        for t in others:
            t.join()

    def _serve_one(self):
        conn = self.conn
        while True:
            request = conn.next_request()
            if request is None:
                return
            self.handle(*request)


class _Stamped:
    """A text stream whose every line starts with the time (UTC), as the replica's and the
    daemon's lines in the same log do. Whole lines are written under a lock, so that threads
    printing at once do not interleave within a line's start."""

    def __init__(self, stream):
        self._stream = stream
        self._line_start = True
        self._lock = threading.Lock()

    def write(self, text):
        if not text:
            return 0
        with self._lock:
            parts = []
            for piece in text.splitlines(keepends=True):
                if self._line_start:
                    now = time.time()
                    parts.append(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z ")
                parts.append(piece)
                self._line_start = piece.endswith("\n")
            self._stream.write("".join(parts))
            self._stream.flush()
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main():
    fd = int(sys.argv[sys.argv.index("--fd") + 1]) if "--fd" in sys.argv else 3
    # What the predictor prints, and gyrus's own lines, carry the time like the rest of the log.
    sys.stdout = _Stamped(sys.stdout)
    sys.stderr = _Stamped(sys.stderr)
    # Ctrl-C in the daemon's terminal reaches the whole process group; the replica decides
    # when workers stop (SHUTDOWN, EOF, or the parent-death signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(fd, False)  # subprocesses of user code must not hold the protocol open
    # Imports resolve against the project (the cwd), not the directory of this script.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.path.insert(0, os.getcwd())

    conn = Connection(fd)
    head = conn.read_frame_head()
    if head is None or head[0] != INIT:
        print("gyrus worker: expected an INIT frame", file=sys.stderr)
        sys.exit(2)
    init = json.loads(conn.read_exact(head[2]))
    index = conn.index = init.get("worker_index", 0)
    try:
        predictor = Predictor(init, conn)
    except BaseException as e:  # noqa: BLE001 - report anything the user's code raised
        if isinstance(e, InitError):
            error, tb = str(e), f"{e}\n"
        else:
            error, tb = f"{type(e).__name__}: {e}", _user_traceback(e)
        sys.stderr.write(f"worker {index}: failed to initialise the predictor:\n{tb}")
        sys.stderr.flush()
        try:
            conn.send_json(INIT_FAILED, head[1], {"error": error, "traceback": tb})
        except OSError:
            pass
        sys.exit(1)
    ready = {
        "style": predictor.style,
        "wants_query_params": predictor.wants_query_params,
        "wants_headers": predictor.wants_headers,
        "pid": os.getpid(),
    }
    conn.send_json(READY, head[1], ready)
    Worker(conn, predictor, index, init.get("server_side_batching")).serve(max(1, int(init.get("threads") or 1)))
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(0)


if __name__ == "__main__":
    main()
