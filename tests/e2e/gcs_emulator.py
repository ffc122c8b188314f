"""gcp-storage-emulator (PyPI), run with the few XML-API behaviours it lacks and that Google
Cloud Storage clients which use the XML API (object_store's, hence gyrus's) rely on:

- `HEAD /{bucket}/{object}`: the object's headers without its body (the emulator answers 501);
- `ETag` and `Last-Modified` on `GET /{bucket}/{object}` (it sends neither);
- `GET /{bucket}?list-type=2&prefix=...`: the XML listing (it has only the JSON API's).

Everything else (storage, uploads through the JSON API, downloads, ranges) is the emulator's own.

    python gcs_emulator.py PORT BUCKET
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from email.utils import format_datetime
from http import HTTPStatus
from xml.sax.saxutils import escape

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.server import GET, HANDLERS, RequestHandler, create_server


def _validators(response, obj: dict) -> None:
    response["ETag"] = f'"{obj.get("etag") or obj.get("md5Hash")}"'
    updated = datetime.strptime(obj["updated"], "%Y-%m-%dT%H:%M:%S.%fZ")
    response["Last-Modified"] = format_datetime(updated.replace(tzinfo=timezone.utc), usegmt=True)
    response["x-goog-generation"] = str(obj.get("generation", ""))


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        _validators(response, obj)
    except NotFound:
        pass
    objects.download(request, response, storage, *args, **kwargs)


def list_v2(request, response, storage, *args, **kwargs):
    bucket = request.params["bucket_name"]
    if request.query.get("list-type", [""])[0] != "2":
        response.status = HTTPStatus.NOT_IMPLEMENTED
        return
    prefix = request.query.get("prefix", [None])[0]
    delimiter = request.query.get("delimiter", [None])[0]
    try:
        items, prefixes = storage.get_file_list(bucket, prefix, delimiter)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        response.write("<Error><Code>NoSuchBucket</Code></Error>")
        return
    parts = [f"<ListBucketResult><Name>{escape(bucket)}</Name><Prefix>{escape(prefix or '')}</Prefix>"]
    for o in items:
        updated = datetime.strptime(o["updated"], "%Y-%m-%dT%H:%M:%S.%fZ").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        parts.append(
            f"<Contents><Key>{escape(o['name'])}</Key><Size>{o['size']}</Size>"
            f"<LastModified>{updated}</LastModified><ETag>\"{o.get('etag') or o.get('md5Hash')}\"</ETag></Contents>"
        )
    for p in prefixes:
        parts.append(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>")
    parts.append("<IsTruncated>false</IsTruncated></ListBucketResult>")
    response["Content-Type"] = "application/xml"
    response.write("".join(parts))


class _Discard:
    def write(self, data):
        return len(data)

    def flush(self):
        pass


def do_HEAD(self):
    # Routed as a GET; once the headers are out, the body is dropped.
    real = self.wfile
    end_headers = self.end_headers

    def end_and_mute():
        end_headers()
        self.wfile = _Discard()

    self.end_headers = end_and_mute
    try:
        server.Router(self).handle(GET)
    finally:
        self.wfile = real
        del self.end_headers


def patch() -> None:
    routes = list(HANDLERS)
    public = r"^/(?P<bucket_name>[-.\w]+)/(?P<object_id>.*[^/]+)$"
    for i, (regex, handlers) in enumerate(routes):
        if regex == public:
            routes[i] = (regex, {**handlers, GET: download})
    routes.append((r"^/(?P<bucket_name>[-.\w]+)/?$", {GET: list_v2}))
    server.HANDLERS = tuple(routes)
    RequestHandler.do_HEAD = do_HEAD


if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    patch()
    srv = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    srv.run()
