"""Request bodies by Content-Type and responses by return type (cortex-semantics.md, section 2),
query parameters, headers, and ?debug=true. One API serves all of them: `?ret=...` picks what
predict() returns; by default it describes the payload it received.
"""

import hashlib
import json
import os

import pytest

from e2e_helpers import wait_until

API = "echo"

PREDICTOR = r'''
import hashlib
import json


class NotSerialisable:
    pass


def describe(payload):
    if isinstance(payload, (bytes, bytearray)):
        return {"type": "bytes", "hex": bytes(payload).hex()}
    if isinstance(payload, str):
        return {"type": "str", "value": payload}
    if isinstance(payload, (list, int, float, bool)) or payload is None:
        return {"type": type(payload).__name__, "value": payload}
    if isinstance(payload, dict) and type(payload) is dict:
        return {"type": "dict", "value": payload}
    # Form data (fields and files): a mapping; files have a filename and content.
    fields = {}
    for key in payload.keys():
        value = payload[key]
        if isinstance(value, str):
            fields[key] = value
        else:
            data = value.file.read() if hasattr(value, "file") else value.read()
            fields[key] = {
                "filename": getattr(value, "filename", None),
                "content_type": getattr(value, "content_type", None),
                "content": data.decode("utf-8"),
            }
    return {"type": "form", "value": fields}


class PythonPredictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params, headers):
        ret = query_params.get("ret", "describe")
        if ret == "describe":
            return describe(payload)
        if ret == "digest":
            return {"type": type(payload).__name__, "len": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        if ret == "big":
            return b"0123456789abcdef" * int(query_params["n"])
        if ret == "bytes":
            return b"\x00\x01\xfe\xffraw"
        if ret == "str":
            return "plain text, caf\u00e9"
        if ret == "dict":
            return {"a": 1, "b": [1, 2], "c": None}
        if ret == "list":
            return [1, "two", 3.5, None]
        if ret == "int":
            return 42
        if ret == "float":
            return 2.5
        if ret == "none":
            return None
        if ret == "set":
            return {1, 2, 3}
        if ret == "object":
            return NotSerialisable()
        if ret == "query":
            return dict(query_params)
        if ret == "headers":
            return {
                "lower": headers.get("x-custom-thing"),
                "upper": headers.get("X-CUSTOM-THING"),
                "exact": headers["X-Custom-Thing"],
                "contains": "X-Custom-Thing" in headers,
                "content_type": headers.get("content-type"),
            }
        raise ValueError(f"unknown ret {ret!r}")
'''


@pytest.fixture(scope="module")
def echo(gyrus, project):
    proj = project(API, PREDICTOR)
    gyrus.deploy_ok(proj, API)
    return gyrus


def post(g, body=None, ctype=None, ret=None, **kw):
    headers = kw.pop("headers", {})
    if ctype is not None:
        headers["Content-Type"] = ctype
    params = kw.pop("params", {})
    if ret:
        params["ret"] = ret
    return g.post(f"/{API}", data=body, headers=headers, params=params, **kw)


def ok_json(g, r):
    assert r.status_code == 200, g.diag(API, resp=r)
    assert r.headers["content-type"].startswith("application/json"), g.diag(API, resp=r)
    return r.json()


# --- payload by Content-Type ------------------------------------------------------------


def test_json_payload(echo):
    r = echo.post(f"/{API}", json={"x": [1, 2.5, "three"], "y": {"z": None}})
    assert ok_json(echo, r) == {"type": "dict", "value": {"x": [1, 2.5, "three"], "y": {"z": None}}}


@pytest.mark.parametrize("body, expected", [("[1, 2]", {"type": "list", "value": [1, 2]}),
                                            ("7", {"type": "int", "value": 7}),
                                            ('"s"', {"type": "str", "value": "s"}),
                                            ("null", {"type": "NoneType", "value": None})])
def test_json_payload_of_every_json_type(echo, body, expected):
    r = post(echo, body.encode(), "application/json")
    assert ok_json(echo, r) == expected


def test_json_with_charset_parameter(echo):
    r = post(echo, '{"k": "é"}'.encode("utf-8"), "application/json; charset=utf-8")
    assert ok_json(echo, r) == {"type": "dict", "value": {"k": "é"}}


def test_invalid_json_is_400(echo):
    r = post(echo, b'{"unterminated": ', "application/json")
    assert r.status_code == 400, echo.diag(API, resp=r)
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body


def test_text_plain_defaults_to_utf8(echo):
    r = post(echo, "héllo wörld".encode("utf-8"), "text/plain")
    assert ok_json(echo, r) == {"type": "str", "value": "héllo wörld"}


def test_text_plain_decoded_with_its_charset(echo):
    r = post(echo, "café crème".encode("latin-1"), "text/plain; charset=latin-1")
    assert ok_json(echo, r) == {"type": "str", "value": "café crème"}
    r = post(echo, "naïve".encode("iso-8859-1"), "text/plain; charset=ISO-8859-1")
    assert ok_json(echo, r) == {"type": "str", "value": "naïve"}


def test_text_plain_that_does_not_decode_is_400(echo):
    r = post(echo, b"\xff\xfe\xfa not utf-8", "text/plain; charset=utf-8")
    assert r.status_code == 400, echo.diag(API, resp=r)
    assert "error" in r.json(), r.text


def test_text_plain_with_an_unknown_charset_is_400(echo):
    r = post(echo, b"abc", "text/plain; charset=no-such-charset")
    assert r.status_code == 400, echo.diag(API, resp=r)
    assert "no-such-charset" in r.json()["error"], r.text


def test_large_binary_payload_arrives_intact(echo):
    raw = os.urandom(8 * 1024 * 1024)
    r = post(echo, raw, "application/octet-stream", ret="digest")
    assert ok_json(echo, r) == {"type": "bytes", "len": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def test_large_binary_response_arrives_intact(echo):
    r = post(echo, b"{}", "application/json", ret="big", params={"n": str(1024 * 1024)})
    assert r.status_code == 200, echo.diag(API, resp=r)
    assert r.content == b"0123456789abcdef" * (1024 * 1024)


def test_multipart_form_with_a_field_and_a_file(echo):
    r = echo.post(
        f"/{API}",
        data={"field": "value 1"},
        files={"upload": ("notes.txt", b"file content\nline 2", "text/plain")},
    )
    got = ok_json(echo, r)
    assert got["type"] == "form", got
    assert got["value"]["field"] == "value 1", got
    upload = got["value"]["upload"]
    assert upload["filename"] == "notes.txt", got
    assert upload["content"] == "file content\nline 2", got


def test_urlencoded_form(echo):
    r = echo.post(f"/{API}", data={"a": "1", "b": "x y&z"})
    assert r.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert ok_json(echo, r) == {"type": "form", "value": {"a": "1", "b": "x y&z"}}


@pytest.mark.parametrize("ctype", ["application/octet-stream", "image/png", "application/x-custom"])
def test_other_content_types_are_bytes(echo, ctype):
    raw = bytes(range(256))
    r = post(echo, raw, ctype)
    assert ok_json(echo, r) == {"type": "bytes", "hex": raw.hex()}


def test_no_content_type_is_bytes(echo):
    r = post(echo, b"just bytes")
    assert "content-type" not in {k.lower() for k in r.request.headers}
    assert ok_json(echo, r) == {"type": "bytes", "hex": b"just bytes".hex()}


# --- response by return type --------------------------------------------------------------


def test_bytes_are_octet_stream(echo):
    r = post(echo, b"{}", "application/json", ret="bytes")
    assert r.status_code == 200, echo.diag(API, resp=r)
    assert r.headers["content-type"] == "application/octet-stream", echo.diag(API, resp=r)
    assert r.content == b"\x00\x01\xfe\xffraw"


def test_str_is_text_plain(echo):
    r = post(echo, b"{}", "application/json", ret="str")
    assert r.status_code == 200, echo.diag(API, resp=r)
    assert r.headers["content-type"].startswith("text/plain"), echo.diag(API, resp=r)
    assert r.content.decode("utf-8") == "plain text, café"


@pytest.mark.parametrize(
    "ret, expected",
    [
        ("dict", {"a": 1, "b": [1, 2], "c": None}),
        ("list", [1, "two", 3.5, None]),
        ("int", 42),
        ("float", 2.5),
        ("none", None),
    ],
)
def test_json_serialisable_values_are_json(echo, ret, expected):
    r = post(echo, b"{}", "application/json", ret=ret)
    assert ok_json(echo, r) == expected


@pytest.mark.parametrize("ret, type_name", [("set", "set"), ("object", "NotSerialisable")])
def test_not_serialisable_is_500_with_a_clear_message(echo, ret, type_name):
    r = post(echo, b"{}", "application/json", ret=ret)
    assert r.status_code == 500, echo.diag(API, resp=r)
    err = r.json()["error"]
    assert "serializ" in err.lower() or "serialis" in err.lower(), err
    assert type_name in err, err
    # The replica keeps serving.
    assert ok_json(echo, post(echo, b"1", "application/json")) == {"type": "int", "value": 1}


# --- query parameters and headers ----------------------------------------------------------


def test_query_params_reach_predict(echo):
    r = echo.post(f"/{API}", json={}, params={"ret": "query", "a": "1", "b": "two words"})
    assert ok_json(echo, r) == {"ret": "query", "a": "1", "b": "two words"}


def test_headers_reach_predict_case_insensitively(echo):
    r = post(echo, b"{}", "application/json", ret="headers", headers={"X-Custom-Thing": "abc 123"})
    assert ok_json(echo, r) == {
        "lower": "abc 123",
        "upper": "abc 123",
        "exact": "abc 123",
        "contains": True,
        "content_type": "application/json",
    }


def test_predict_cli_with_content_type(echo):
    proc = echo.ok("predict", API, "plain words", "--content-type", "text/plain", apis=(API,))
    assert json.loads(proc.stdout) == {"type": "str", "value": "plain words"}, echo.diag(API, proc=proc)


# --- ?debug=true ---------------------------------------------------------------------------


def test_debug_logs_payload_and_prediction(echo):
    r = echo.post(f"/{API}", json={"debug_marker": "zebra-4711"}, params={"debug": "true"})
    got = ok_json(echo, r)
    assert got == {"type": "dict", "value": {"debug_marker": "zebra-4711"}}

    def logged():
        text = echo.cli_logs(API)
        lines = [line for line in text.splitlines() if "zebra-4711" in line]
        payload = [line for line in lines if "payload" in line.lower()]
        prediction = [line for line in lines if "predict" in line.lower() and line not in payload]
        return payload and prediction and (payload, prediction)

    wait_until(logged, 10, what=lambda: "the payload and prediction in `gyrus logs`\n" + echo.diag(API))


def test_without_debug_nothing_is_logged(echo):
    r = echo.post(f"/{API}", json={"quiet_marker": "okapi-9913"})
    ok_json(echo, r)
    assert "okapi-9913" not in echo.api_log(API)


def test_predict_cli_debug_flag(echo):
    echo.ok("predict", API, '{"cli_marker": "lynx-5150"}', "--debug", apis=(API,))
    wait_until(lambda: "lynx-5150" in echo.cli_logs(API), 10, what=lambda: echo.diag(API))
