"""A Google Cloud Storage test double: the XML API requests the GCS backend sends,
answered and checked as Google documents them.

GCS is a service with no server to run locally, and the emulators that install here
(fake-gcs-server, gcp-storage-emulator) speak the JSON API, not the XML API the
backend's client uses for uploads, copies, deletes and multipart uploads. This double
keeps objects in memory and checks every request strictly:

- authentication: every request carries `Authorization: Bearer <JWT>` signed (RS256)
  by the test service account's key, with that account as issuer and a storage
  scope (`cloud-platform`, `devstorage.read_write` or `.full_control`), not expired; or it is a V4 signed URL (`GOOG4-RSA-SHA256`),
  whose canonical request, credential scope, expiry and RSA signature are verified;
- objects: PUT (with `x-goog-if-generation-match`), GET and HEAD (ranges, `If-Match`,
  `If-None-Match`, `If-(Un)Modified-Since`, `generation`), DELETE, copy
  (`x-goog-copy-source`), XML multipart uploads (initiate, parts of at least 5 MiB
  but the last, complete, abort), and list (`list-type=2`, prefix, delimiter,
  continuation token, `max-keys`, `start-after`);
- anything else, and any query parameter the operation does not take, is refused
  with a 400, never guessed at.

The one request it does not authenticate is test setup: creating a bucket through
the JSON API (`POST /storage/v1/b`, body `{"name": ...}`).

Signed URLs are checked against the host `storage.googleapis.com`, the host the
client signs for whatever endpoint it talks to.

Usage: gcs-double.py PORT SERVICE_ACCOUNT_JSON
"""

import base64
import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

SIGNED_HOST = "storage.googleapis.com"
MIN_PART = 5 << 20
# DER prefix of a SHA-256 DigestInfo (PKCS #1 v1.5 signatures).
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

# The OAuth scopes Google documents for Cloud Storage (read-only ones would need a
# per-method check, which this double does not make: it refuses them).
STORAGE_SCOPES = {
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.full_control",
    "https://www.googleapis.com/auth/devstorage.read_write",
}
ATTRIBUTE_HEADERS = ("content-type", "cache-control", "content-disposition", "content-encoding", "content-language")


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Key:
    """The service account's public key, read off its private key by openssl."""

    def __init__(self, account_path):
        with open(account_path) as f:
            account = json.load(f)
        self.email = account["client_email"]
        out = subprocess.run(
            ["openssl", "rsa", "-noout", "-modulus"], input=account["private_key"].encode(), capture_output=True, check=True
        ).stdout.decode()
        self.n = int(out.strip().split("=", 1)[1], 16)
        self.size = (self.n.bit_length() + 7) // 8

    def verify(self, message, signature):
        if len(signature) != self.size:
            return False
        em = pow(int.from_bytes(signature, "big"), 65537, self.n).to_bytes(self.size, "big")
        digest = SHA256_INFO + hashlib.sha256(message).digest()
        expected = b"\x00\x01" + b"\xff" * (self.size - len(digest) - 3) + b"\x00" + digest
        return em == expected


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Obj:
    def __init__(self, data, attrs, etag=None):
        self.data = data
        self.attrs = attrs
        self.etag = etag or '"%s"' % hashlib.md5(data).hexdigest()
        self.generation = next_generation()
        self.updated = datetime.now(timezone.utc)


_generation = [0]


def next_generation():
    _generation[0] = max(_generation[0] + 1, time.time_ns() // 1000)
    return _generation[0]


class State:
    def __init__(self, key):
        self.key = key
        self.lock = threading.Lock()
        self.buckets = {}
        self.uploads = {}
        self.tokens = {}


def rfc1123(when):
    return formatdate(when.timestamp(), usegmt=True)


def iso(when):
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (when.microsecond // 1000)


def xml(tag, children):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<%s>%s</%s>' % (tag, children, tag)).encode()


def el(tag, text):
    return "<%s>%s</%s>" % (tag, escape(str(text)), tag)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_any("GET")

    def do_HEAD(self):
        self.handle_any("HEAD")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")

    # --- plumbing -----------------------------------------------------------------

    def handle_any(self, method):
        self.method = method
        raw_path, _, raw_query = self.path.partition("?")
        self.raw_path = raw_path
        self.raw_query = raw_query
        self.query = dict(parse_qsl(raw_query, keep_blank_values=True))
        try:
            length = self.headers.get("content-length")
            if self.headers.get("transfer-encoding"):
                raise Refused(400, "InvalidArgument", "this double takes bodies with a Content-Length only")
            self.body = self.rfile.read(int(length)) if length else b""
            status, headers, body = self.route()
        except Refused as r:
            status, headers = r.status, {"Content-Type": "application/xml; charset=UTF-8"}
            body = xml("Error", el("Code", r.code) + el("Message", r.message))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status != 304 and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD" and status != 304:
            self.wfile.write(body)

    def allow(self, *names):
        extra = set(self.query) - set(names) - {"X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires",
                                                "X-Goog-SignedHeaders", "X-Goog-Signature"}
        if extra:
            raise Refused(400, "InvalidArgument", "query parameters not taken here: %s" % ", ".join(sorted(extra)))

    def route(self):
        st = self.state
        if self.method == "POST" and self.raw_path == "/storage/v1/b":
            name = json.loads(self.body or b"{}").get("name", "")
            with st.lock:
                st.buckets.setdefault(name, {})
            return 200, {"Content-Type": "application/json"}, json.dumps({"kind": "storage#bucket", "name": name}).encode()
        parts = self.raw_path.lstrip("/").split("/", 1)
        bucket_name = unquote(parts[0])
        key = unquote(parts[1]) if len(parts) > 1 and parts[1] else None
        signed = "X-Goog-Signature" in self.query
        if signed:
            self.check_signed_url()
            if key is None or self.method not in ("GET", "HEAD", "PUT"):
                raise Refused(403, "AccessDenied", "signed URLs here are for object GET, HEAD and PUT")
        else:
            self.check_bearer()
        with st.lock:
            bucket = st.buckets.get(bucket_name)
        if bucket is None:
            raise Refused(404, "NoSuchBucket", "The specified bucket does not exist.")
        if key is None:
            if self.method == "GET":
                return self.list_objects(bucket_name, bucket)
            raise Refused(400, "InvalidArgument", "%s on a bucket is not served by this double" % self.method)
        if self.method in ("GET", "HEAD"):
            return self.get_object(bucket, key)
        if self.method == "PUT":
            if "x-goog-copy-source" in self.headers:
                self.allow()
                return self.copy_object(bucket, key)
            if "uploadId" in self.query:
                self.allow("uploadId", "partNumber")
                return self.put_part(key)
            self.allow()
            return self.put_object(bucket, key)
        if self.method == "POST":
            if "uploads" in self.query:
                self.allow("uploads")
                return self.initiate(bucket_name, key)
            if "uploadId" in self.query:
                self.allow("uploadId")
                return self.complete(bucket_name, bucket, key)
            raise Refused(400, "InvalidArgument", "POST on an object takes ?uploads or ?uploadId")
        if self.method == "DELETE":
            if "uploadId" in self.query:
                self.allow("uploadId")
                with st.lock:
                    if st.uploads.pop(self.query["uploadId"], None) is None:
                        raise Refused(404, "NoSuchUpload", "The requested upload was not found.")
                return 204, {}, b""
            self.allow()
            with st.lock:
                if bucket.pop(key, None) is None:
                    raise Refused(404, "NoSuchKey", "The specified key does not exist.")
            return 204, {}, b""
        raise Refused(405, "MethodNotAllowed", self.method)

    # --- authentication -------------------------------------------------------------

    def check_bearer(self):
        auth = self.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise Refused(401, "AuthenticationRequired", "Authentication required.")
        token = auth[7:]
        st = self.state
        now = time.time()
        expires = st.tokens.get(token)
        if expires is None:
            try:
                header_b64, claims_b64, sig_b64 = token.split(".")
                header = json.loads(b64url(header_b64))
                claims = json.loads(b64url(claims_b64))
                ok = header.get("alg") == "RS256" and st.key.verify(
                    (header_b64 + "." + claims_b64).encode(), b64url(sig_b64)
                )
            except (ValueError, KeyError):
                ok = False
            if not ok:
                raise Refused(401, "InvalidAuthentication", "The bearer token is not signed by the service account.")
            scopes = set(claims.get("scope", "").split())
            if claims.get("iss") != st.key.email or not scopes & STORAGE_SCOPES:
                raise Refused(403, "AccessDenied", "The token's issuer or scope does not grant storage access.")
            expires = float(claims.get("exp", 0))
            st.tokens[token] = expires
        if expires < now:
            raise Refused(401, "AuthenticationRequired", "The bearer token has expired.")

    def check_signed_url(self):
        q = self.query
        for name in ("X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires", "X-Goog-SignedHeaders"):
            if name not in q:
                raise Refused(400, "InvalidArgument", "signed URL without %s" % name)
        if q["X-Goog-Algorithm"] != "GOOG4-RSA-SHA256":
            raise Refused(400, "InvalidArgument", "unknown signing algorithm")
        email, _, scope = q["X-Goog-Credential"].partition("/")
        date = q["X-Goog-Date"]
        if email != self.state.key.email or scope != "%s/auto/storage/goog4_request" % date[:8]:
            raise Refused(400, "AuthorizationQueryParametersError", "bad credential scope")
        expires = int(q["X-Goog-Expires"])
        if not 1 <= expires <= 604800:
            raise Refused(400, "AuthorizationQueryParametersError", "X-Goog-Expires must be 1 to 604800")
        signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        if datetime.now(timezone.utc) > signed_at + timedelta(seconds=expires):
            raise Refused(400, "ExpiredToken", "The signed URL has expired.")
        signed_headers = q["X-Goog-SignedHeaders"].split(";")
        if "host" not in signed_headers:
            raise Refused(400, "AuthorizationQueryParametersError", "the host header must be signed")
        header_lines = []
        for name in signed_headers:
            value = SIGNED_HOST if name == "host" else " ".join((self.headers.get(name) or "").split())
            header_lines.append("%s:%s" % (name, value))
        pairs = sorted((k, v) for k, v in parse_qsl(self.raw_query, keep_blank_values=True) if k != "X-Goog-Signature")
        canonical_query = "&".join("%s=%s" % (quote(k, safe="-._~"), quote(v, safe="-._~")) for k, v in pairs)
        canonical = "\n".join(
            [self.method, self.raw_path, canonical_query, "\n".join(header_lines), "", q["X-Goog-SignedHeaders"], "UNSIGNED-PAYLOAD"]
        )
        to_sign = "\n".join(["GOOG4-RSA-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        try:
            signature = bytes.fromhex(q["X-Goog-Signature"])
        except ValueError:
            signature = b""
        if not self.state.key.verify(to_sign.encode(), signature):
            raise Refused(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")

    # --- objects --------------------------------------------------------------------

    def object_headers(self, obj):
        h = {
            "ETag": obj.etag,
            "Last-Modified": rfc1123(obj.updated),
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": "1",
            "x-goog-stored-content-length": str(len(obj.data)),
            "x-goog-hash": "md5=" + base64.b64encode(hashlib.md5(obj.data).digest()).decode(),
            "Accept-Ranges": "bytes",
        }
        for name, value in obj.attrs.items():
            h[name] = value
        h.setdefault("content-type", "application/octet-stream")
        return h

    def attributes(self):
        attrs = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in ATTRIBUTE_HEADERS or lower.startswith("x-goog-meta-") or lower == "x-goog-storage-class":
                attrs[lower] = value
        return attrs

    def precondition(self, current):
        match = self.headers.get("x-goog-if-generation-match")
        if match is None:
            return
        try:
            wanted = int(match)
        except ValueError:
            raise Refused(400, "InvalidArgument", "x-goog-if-generation-match must be a number")
        have = current.generation if current else 0
        if wanted != have:
            raise Refused(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")

    def put_object(self, bucket, key):
        if self.headers.get("content-length") is None:
            raise Refused(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        obj = Obj(self.body, self.attributes())
        with self.state.lock:
            self.precondition(bucket.get(key))
            bucket[key] = obj
        return 200, {"ETag": obj.etag, "x-goog-generation": str(obj.generation), "x-goog-hash":
                     "md5=" + base64.b64encode(hashlib.md5(obj.data).digest()).decode()}, b""

    def copy_object(self, bucket, key):
        if self.body:
            raise Refused(400, "InvalidArgument", "a copy takes no body")
        src_bucket, _, src_key = self.headers["x-goog-copy-source"].lstrip("/").partition("/")
        with self.state.lock:
            source_bucket = self.state.buckets.get(unquote(src_bucket))
            source = source_bucket.get(unquote(src_key)) if source_bucket is not None else None
            if source is None:
                raise Refused(404, "NoSuchKey", "The specified key does not exist.")
            self.precondition(bucket.get(key))
            obj = Obj(source.data, dict(source.attrs), source.etag)
            bucket[key] = obj
        body = xml("CopyObjectResult", el("LastModified", iso(obj.updated)) + el("ETag", obj.etag))
        return 200, {"x-goog-generation": str(obj.generation), "Content-Type": "application/xml"}, body

    def get_object(self, bucket, key):
        self.allow("generation")
        with self.state.lock:
            obj = bucket.get(key)
        if obj is None or ("generation" in self.query and self.query["generation"] != str(obj.generation)):
            raise Refused(404, "NoSuchKey", "The specified key does not exist.")
        headers = self.object_headers(obj)
        if_match = self.headers.get("if-match")
        if if_match is not None and if_match.strip() not in ("*", obj.etag):
            raise Refused(412, "PreconditionFailed", "If-Match did not hold.")
        since = self.headers.get("if-unmodified-since")
        if since is not None and obj.updated.replace(microsecond=0) > parsedate_to_datetime(since):
            raise Refused(412, "PreconditionFailed", "If-Unmodified-Since did not hold.")
        if_none = self.headers.get("if-none-match")
        if if_none is not None and if_none.strip() in ("*", obj.etag):
            return 304, {"ETag": obj.etag, "Last-Modified": headers["Last-Modified"]}, b""
        since = self.headers.get("if-modified-since")
        if since is not None and obj.updated.replace(microsecond=0) <= parsedate_to_datetime(since):
            return 304, {"ETag": obj.etag, "Last-Modified": headers["Last-Modified"]}, b""
        size = len(obj.data)
        wanted = self.headers.get("range")
        if wanted is None:
            headers["Content-Length"] = str(size)
            return 200, headers, obj.data
        if not wanted.startswith("bytes=") or "," in wanted:
            raise Refused(400, "InvalidArgument", "Range must be one bytes= range")
        first, _, last = wanted[6:].partition("-")
        if first == "":
            start, end = max(size - int(last), 0), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            headers = {"Content-Range": "bytes */%d" % size, "Content-Type": "application/xml; charset=UTF-8"}
            return 416, headers, xml("Error", el("Code", "InvalidRange") + el("Message", "The requested range cannot be satisfied."))
        headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
        headers["Content-Length"] = str(end - start + 1)
        return 206, headers, obj.data[start : end + 1]

    # --- multipart uploads ------------------------------------------------------------

    def initiate(self, bucket_name, key):
        if self.body:
            raise Refused(400, "InvalidArgument", "initiating an upload takes no body")
        upload_id = uuid.uuid4().hex
        with self.state.lock:
            self.state.uploads[upload_id] = {"bucket": bucket_name, "key": key, "attrs": self.attributes(), "parts": {}}
        body = xml("InitiateMultipartUploadResult", el("Bucket", bucket_name) + el("Key", key) + el("UploadId", upload_id))
        return 200, {"Content-Type": "application/xml"}, body

    def upload(self, key):
        upload = self.state.uploads.get(self.query["uploadId"])
        if upload is None or upload["key"] != key:
            raise Refused(404, "NoSuchUpload", "The requested upload was not found.")
        return upload

    def put_part(self, key):
        try:
            number = int(self.query.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise Refused(400, "InvalidArgument", "partNumber must be 1 to 10000")
        etag = '"%s"' % hashlib.md5(self.body).hexdigest()
        with self.state.lock:
            self.upload(key)["parts"][number] = (etag, self.body)
        return 200, {"ETag": etag}, b""

    def complete(self, bucket_name, bucket, key):
        try:
            root = ElementTree.fromstring(self.body)
            listed = [(int(p.findtext("PartNumber")), p.findtext("ETag").strip()) for p in root.iter("Part")]
        except (ElementTree.ParseError, TypeError, ValueError, AttributeError):
            raise Refused(400, "MalformedXML", "The XML you provided was not well-formed.")
        if root.tag != "CompleteMultipartUpload" or not listed:
            raise Refused(400, "MalformedXML", "expected CompleteMultipartUpload with parts")
        if [n for n, _ in listed] != sorted({n for n, _ in listed}):
            raise Refused(400, "InvalidPartOrder", "Parts must be listed in ascending order.")
        with self.state.lock:
            upload = self.upload(key)
            chunks, digests = [], b""
            for i, (number, etag) in enumerate(listed):
                part = upload["parts"].get(number)
                if part is None or part[0].strip('"') != etag.strip('"'):
                    raise Refused(400, "InvalidPart", "Part %d was not uploaded or its ETag differs." % number)
                if i < len(listed) - 1 and len(part[1]) < MIN_PART:
                    raise Refused(400, "EntityTooSmall", "Every part but the last must be at least 5 MiB.")
                chunks.append(part[1])
                digests += bytes.fromhex(part[0].strip('"'))
            etag = '"%s-%d"' % (hashlib.md5(digests).hexdigest(), len(listed))
            obj = Obj(b"".join(chunks), upload["attrs"], etag)
            bucket[key] = obj
            del self.state.uploads[self.query["uploadId"]]
        body = xml(
            "CompleteMultipartUploadResult",
            el("Location", "http://%s/%s/%s" % (SIGNED_HOST, bucket_name, quote(key)))
            + el("Bucket", bucket_name) + el("Key", key) + el("ETag", obj.etag),
        )
        return 200, {"x-goog-generation": str(obj.generation), "Content-Type": "application/xml"}, body

    # --- listing ------------------------------------------------------------------------

    def list_objects(self, bucket_name, bucket):
        self.allow("list-type", "prefix", "delimiter", "continuation-token", "max-keys", "start-after")
        q = self.query
        if q.get("list-type") != "2":
            raise Refused(400, "InvalidArgument", "this double lists with list-type=2 only")
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter")
        try:
            max_keys = min(int(q.get("max-keys", "1000")), 1000)
        except ValueError:
            raise Refused(400, "InvalidArgument", "max-keys must be a number")
        after, skip = q.get("start-after", ""), None
        if "continuation-token" in q:
            try:
                resume = json.loads(b64url(q["continuation-token"]))
                after, skip = resume["after"], resume["skip"]
            except (ValueError, KeyError, TypeError):
                raise Refused(400, "InvalidArgument", "Invalid continuation token.")
        with self.state.lock:
            keys = sorted(k for k in bucket if k.startswith(prefix) and k > after and not (skip and k.startswith(skip)))
            objects = {k: bucket[k] for k in keys}
        contents, prefixes, entries, last, last_prefix, truncated = [], [], 0, None, None, False
        for k in keys:
            if delimiter:
                at = k.find(delimiter, len(prefix))
                if at >= 0:
                    common = k[: at + len(delimiter)]
                    if common == last_prefix:
                        continue
                    if entries == max_keys:
                        truncated = True
                        break
                    prefixes.append(el("Prefix", common))
                    entries, last, last_prefix = entries + 1, k, common
                    continue
            if entries == max_keys:
                truncated = True
                break
            obj = objects[k]
            contents.append(
                "<Contents>%s%s%s%s%s</Contents>"
                % (el("Key", k), el("Generation", obj.generation), el("LastModified", iso(obj.updated)),
                   el("ETag", obj.etag), el("Size", len(obj.data)))
            )
            entries, last, last_prefix = entries + 1, k, None
        children = el("Name", bucket_name) + el("Prefix", prefix) + el("KeyCount", entries) + el("MaxKeys", max_keys)
        if delimiter:
            children += el("Delimiter", delimiter)
        children += el("IsTruncated", "true" if truncated else "false")
        if truncated:
            token = json.dumps({"after": last, "skip": last_prefix})
            children += el("NextContinuationToken", base64.urlsafe_b64encode(token.encode()).decode().rstrip("="))
        children += "".join(contents) + "".join("<CommonPrefixes>%s</CommonPrefixes>" % p for p in prefixes)
        return 200, {"Content-Type": "application/xml"}, xml("ListBucketResult", children)


def main():
    port, account = int(sys.argv[1]), sys.argv[2]
    Handler.state = State(Key(account))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
