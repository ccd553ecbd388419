#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The IoT Hub's two HTTPS file-upload endpoints for tests (protocol doc section 8), backed by
Azurite as the storage account. See README.md beside this file.

Hub side (SAS-checked like the MQTT side of the emulator: same registry, sr={hub}/devices/{id}):
  POST /devices/{id}/files?api-version=V                {"blobName": N} -> storage info (200)
  POST /devices/{id}/files/notifications?api-version=V  notification -> 204, recorded
Storage side: real blob SAS URLs for Azurite (IoT-Hub-style service SAS, sv=2018-03-28, sr=b,
sp=rw), optionally through /_storage/..., a forwarding proxy that can inject storage faults.
Control (header x-emulator-password): /_emu/... (faults, recorded notifications, blob checks).
Diagnostics for HTTP client tests: /_test/... (echo, status, delay, bytes).

Started by the C++ test support (FileUploadHub); prints "file-upload-hub listening on port N".
Only the standard library of Debian's python3: no pip packages.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import http.client
import http.server
import json
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

SAS_VERSION = "2018-03-28"  # the version IoT Hub hands out; its string-to-sign has no sr line
ACCOUNT_SAS_VERSION = "2020-08-04"
# IoT Hub quotas: at most 10 file uploads per device at once; a slot is freed by the upload's
# notification, or when the SAS it handed out expires (1 hour).
MAX_ACTIVE_UPLOADS = 10
SLOT_SECONDS = 3600


def enc(text):
    return urllib.parse.quote(text, safe="")


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def redact(text):
    # Never log a signature: request lines of the storage proxy carry blob SAS tokens.
    return re.sub(r"(sig=)[^&\s]*", r"\1REDACTED", text)


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.faults = {}
        self.notifications = []
        self.hub_requests = []
        self.uploads = {}
        self.active = {}  # correlation id -> (device, monotonic time the slot was handed out)
        self.registry = {}
        self.account_key = base64.b64decode(args.account_key)
        self.port = 0

    def load_registry(self):
        registry = {}
        if not self.args.registry:
            return
        with open(self.args.registry, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                ident, key = line.split(None, 1)
                registry[ident] = key.strip()
        with self.lock:
            self.registry = registry

    def take_fault(self, name):
        """Returns the fault dict for `name` if it applies to this request, counting it down."""
        with self.lock:
            fault = self.faults.get(name)
            if not fault:
                return None
            count = fault.get("count", -1)
            if count == 0:
                return None
            if count > 0:
                fault["count"] = count - 1
            return dict(fault)

    def limit(self, name, default):
        with self.lock:
            return int(self.faults.get("limits", {}).get(name, default))

    def active_uploads(self, device=None):
        """Active upload slots per device (expired ones are dropped first)."""
        oldest = time.monotonic() - self.limit("slotSeconds", SLOT_SECONDS)
        with self.lock:
            self.active = {c: (d, since) for c, (d, since) in self.active.items() if since > oldest}
            counts = {}
            for d, _ in self.active.values():
                counts[d] = counts.get(d, 0) + 1
        return counts if device is None else counts.get(device, 0)

    def take_storage_fault(self, method, target):
        with self.lock:
            for rule in self.faults.get("storage", []):
                if rule.get("count", -1) == 0:
                    continue
                if rule.get("method") and rule["method"] != method:
                    continue
                if rule.get("match", "") not in target:
                    continue
                if rule.get("count", -1) > 0:
                    rule["count"] -= 1
                return dict(rule)
        return None

    # --- SAS ---------------------------------------------------------------------------------

    def check_device_sas(self, header, device):
        """The hub's check of the Authorization header; returns None if fine, else the reason."""
        prefix = "SharedAccessSignature "
        if not header or not header.startswith(prefix):
            return "no SharedAccessSignature"
        fields = {}
        for pair in header[len(prefix):].split("&"):
            if "=" not in pair:
                return "malformed token field"
            k, v = pair.split("=", 1)
            if k not in ("sr", "sig", "se", "skn") or k in fields:
                return "unexpected token field " + k
            fields[k] = v
        if not all(k in fields for k in ("sr", "sig", "se")):
            return "token lacks sr, sig or se"
        sr = urllib.parse.unquote(fields["sr"])
        if sr != "%s/devices/%s" % (self.args.hub_host, device):
            return "sr does not name this device"
        with self.lock:
            key = self.registry.get(device)
        if key is None:
            return "unknown device"
        to_sign = (enc(sr) + "\n" + fields["se"]).encode()
        expected = base64.b64encode(hmac.new(base64.b64decode(key), to_sign, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, urllib.parse.unquote(fields["sig"]).encode()):
            return "signature mismatch"
        if int(fields["se"]) <= time.time():
            return "token expired"
        return None

    def blob_sas(self, blob_path, permissions, key=None, expiry=3600):
        """IoT-Hub-style service SAS for one blob (what the hub hands out), signed with the
        account key (or `key`, to make a SAS that storage refuses)."""
        se = iso(time.time() + expiry)
        canonical = "/blob/%s/%s/%s" % (self.args.account, self.args.container, blob_path)
        to_sign = "\n".join([permissions, "", se, canonical, "", "", "", SAS_VERSION, "", "", "", "", ""])
        sig = base64.b64encode(hmac.new(key or self.account_key, to_sign.encode(), hashlib.sha256).digest())
        return "?sv=%s&sr=b&sig=%s&se=%s&sp=%s" % (SAS_VERSION, enc(sig.decode()), enc(se), permissions)

    def account_sas(self):
        se = iso(time.time() + 3600)
        to_sign = "\n".join([self.args.account, "rwdlac", "b", "sco", "", se, "", "", ACCOUNT_SAS_VERSION, ""])
        sig = base64.b64encode(hmac.new(self.account_key, to_sign.encode(), hashlib.sha256).digest())
        return "sv=%s&ss=b&srt=sco&sp=rwdlac&se=%s&sig=%s" % (ACCOUNT_SAS_VERSION, enc(se), enc(sig.decode()))

    # --- storage access --------------------------------------------------------------------------

    def storage_connection(self):
        host, port = self.args.storage.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=self.args.ca)
        return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)

    def create_container(self):
        conn = self.storage_connection()
        conn.request("PUT", "/%s/%s?restype=container&%s" % (self.args.account, self.args.container, self.account_sas()),
                     body=b"", headers={"x-ms-version": ACCOUNT_SAS_VERSION, "Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status not in (201, 409):
            raise RuntimeError("cannot create container: HTTP %d" % resp.status)

    def blob_digest(self, blob_path):
        conn = self.storage_connection()
        path = "/%s/%s/%s%s" % (self.args.account, self.args.container,
                                urllib.parse.quote(blob_path, safe="/"), self.blob_sas(blob_path, "r"))
        conn.request("GET", path, headers={"x-ms-version": ACCOUNT_SAS_VERSION})
        resp = conn.getresponse()
        if resp.status == 404:
            resp.read()
            return {"exists": False}
        if resp.status != 200:
            body = resp.read()
            raise RuntimeError("GET blob: HTTP %d %s" % (resp.status, body[:200]))
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        info = {"exists": True, "size": size, "sha256": digest.hexdigest(),
                "blobType": resp.getheader("x-ms-blob-type", "")}
        conn.close()
        return info


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "file-upload-hub/1"

    @property
    def state(self):
        return self.server.state

    def date_time_string(self, timestamp=None):
        # Fault "date": the hub's clock is off by offsetSeconds (every answer's Date header).
        offset = self.state.faults.get("date", {}).get("offsetSeconds", 0)
        return super().date_time_string((time.time() if timestamp is None else timestamp) + offset)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), redact(fmt % args)))

    # --- plumbing ----------------------------------------------------------------------------

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data), True
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or "0")
        return (self.rfile.read(length) if length else b""), False

    def reply(self, status, body=b"", content_type="application/json", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        try:
            if path.startswith("/_storage/"):
                return self.storage_proxy(url)
            body, chunked = self.read_body()
            if path.startswith("/_test/"):
                return self.diagnostics(path, body, chunked)
            if path.startswith("/_emu/"):
                if self.headers.get("x-emulator-password") != self.server.state.args.control_password:
                    return self.reply(403, {"error": "control password required"})
                return self.control(path, query, body)
            m = re.fullmatch(r"/devices/([^/]+)/files(/notifications)?/?", path)
            if m and self.command == "POST":
                return self.hub(urllib.parse.unquote(m.group(1)), bool(m.group(2)), query, body)
            self.reply(404, {"Message": "no such endpoint"})
        except (ConnectionError, ssl.SSLError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # a test tool: report, never hide
            sys.stderr.write("error: %s\n" % redact(repr(e)))
            self.reply(500, {"Message": "emulator error: %s" % redact(str(e))})

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = route

    # --- the hub -----------------------------------------------------------------------------

    def hub(self, device, is_notification, query, body):
        state = self.state
        kind = "notification" if is_notification else "storage-info"
        record = {"kind": kind, "device": device, "apiVersion": query.get("api-version", [""])[0]}

        def answer(status, payload):
            record["status"] = status
            with state.lock:
                state.hub_requests.append(record)
            self.reply(status, payload)

        if not record["apiVersion"]:
            return answer(400, {"Message": "api-version is required"})
        state.load_registry()
        reason = state.check_device_sas(self.headers.get("Authorization"), device)
        if reason:
            record["reason"] = reason
            return answer(401, {"Message": "IotHubUnauthorizedAccess", "ExceptionMessage": reason})
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return answer(400, {"Message": "Content-Type must be application/json"})
        try:
            request = json.loads(body)
        except ValueError:
            return answer(400, {"Message": "body is not JSON"})
        fault = state.take_fault("notifications" if is_notification else "files")
        if fault and fault.get("status"):
            status = int(fault["status"])
            record["status"] = status
            with state.lock:
                state.hub_requests.append(record)
            headers = {"Retry-After": str(fault["retryAfter"])} if "retryAfter" in fault else None
            return self.reply(status, {"Message": "emulated fault", "ErrorCode": status}, headers=headers)
        if is_notification:
            return self.notification(device, request, answer)
        return self.storage_info(device, request, answer)

    def storage_info(self, device, request, answer):
        state = self.state
        name = request.get("blobName") if isinstance(request, dict) else None
        if not isinstance(name, str) or not name:
            return answer(400, {"Message": "blobName is required"})
        blob_path = "%s/%s" % (device, name)
        limit = state.limit("activeUploads", MAX_ACTIVE_UPLOADS)
        if limit > 0 and state.active_uploads(device) >= limit:
            return answer(403, {"Message": "DeviceMaximumActiveFileUploadLimitExceeded", "ErrorCode": 403006,
                                "ExceptionMessage": "Number of active file upload requests cannot exceed %d" % limit})
        fault = state.take_fault("sas") or {}
        host = fault.get("storageHost")
        if fault.get("proxy"):
            host = "localhost:%d/_storage" % state.port
        if host is None:
            # Without storage (tests of the hub endpoints alone) the host points nowhere.
            host = "localhost:%s" % (state.args.storage.rsplit(":", 1)[1] if state.args.storage else "1")
        key = b"wrong key for this account" if fault.get("bad") else None
        correlation_id = base64.b64encode(uuid.uuid4().bytes).decode()
        with state.lock:
            state.uploads[correlation_id] = {"device": device, "blobName": blob_path}
            state.active[correlation_id] = (device, time.monotonic())
        answer(200, {
            "correlationId": correlation_id,
            "hostName": "%s/%s" % (host, state.args.account),  # Azurite is path-style: /{account}/...
            "containerName": state.args.container,
            "blobName": blob_path,
            "sasToken": state.blob_sas(blob_path, "rw", key=key),
        })

    def notification(self, device, request, answer):
        state = self.state
        if not isinstance(request, dict):
            return answer(400, {"Message": "notification must be an object"})
        fields = {"correlationId": str, "isSuccess": bool, "statusCode": int, "statusDescription": str}
        for name, kind in fields.items():
            if not isinstance(request.get(name), kind) or (kind is int and isinstance(request.get(name), bool)):
                return answer(400, {"Message": "field %s missing or of the wrong type" % name})
        with state.lock:
            upload = state.uploads.get(request["correlationId"])
            known = upload is not None and upload["device"] == device
            entry = dict(request, device=device, known=known, blobName=upload["blobName"] if upload else "")
            state.notifications.append(entry)
            if known:
                state.active.pop(request["correlationId"], None)  # the slot is free again
        if not known:
            return answer(400, {"Message": "unknown correlationId"})
        answer(204, b"")

    # --- storage proxy with fault injection ----------------------------------------------------

    def storage_proxy(self, url):
        state = self.state
        body, _ = self.read_body()
        target = url.path[len("/_storage"):] + ("?" + url.query if url.query else "")
        rule = state.take_storage_fault(self.command, target)
        if rule:
            status = int(rule.get("status", 500))
            return self.reply(status, "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>EmulatedFault</Code>"
                              "<Message>emulated storage fault</Message></Error>", "application/xml",
                              {"x-ms-error-code": "EmulatedFault"})
        conn = state.storage_connection()
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "transfer-encoding", "expect", "connection", "content-length")}
        headers["Content-Length"] = str(len(body))
        conn.request(self.command, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        passed = {k: v for k, v in resp.getheaders()
                  if k.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive", "content-type")}
        self.reply(resp.status, data, resp.getheader("Content-Type", "application/octet-stream"), passed)

    # --- control -------------------------------------------------------------------------------

    def control(self, path, query, body):
        state = self.state
        if path == "/_emu/faults" and self.command == "POST":
            faults = json.loads(body or b"{}")
            with state.lock:
                state.faults = faults
            return self.reply(200, {"faults": faults})
        if path == "/_emu/notifications":
            with state.lock:
                return self.reply(200, {"notifications": list(state.notifications)})
        if path == "/_emu/active-uploads":
            return self.reply(200, {"devices": state.active_uploads()})
        if path == "/_emu/hub-requests":
            with state.lock:
                return self.reply(200, {"requests": list(state.hub_requests)})
        if path == "/_emu/blob":
            return self.reply(200, state.blob_digest(query["name"][0]))
        if path == "/_emu/upload-url":
            # A writable blob URL made like the hub's, for tools that bypass the hub (benchmark).
            name = query["name"][0]
            return self.reply(200, {"url": "https://localhost:%s/%s/%s/%s%s" % (
                state.args.storage.rsplit(":", 1)[1], state.args.account, state.args.container,
                urllib.parse.quote(name, safe="/"), state.blob_sas(name, "rw"))})
        self.reply(404, {"error": "unknown control endpoint"})

    # --- diagnostics for HTTP client tests -----------------------------------------------------

    def diagnostics(self, path, body, chunked):
        if path == "/_test/echo":
            return self.reply(200, {
                "method": self.command, "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "chunked": chunked, "headers": {k.lower(): v for k, v in self.headers.items()}})
        m = re.fullmatch(r"/_test/status/(\d+)", path)
        if m:
            return self.reply(int(m.group(1)), "status %s" % m.group(1), "text/plain", {"X-Test": "yes"})
        m = re.fullmatch(r"/_test/delay/(\d+)", path)
        if m:
            time.sleep(int(m.group(1)) / 1000.0)  # the server's thread waits, not the test
            return self.reply(200, "late", "text/plain")
        m = re.fullmatch(r"/_test/bytes/(\d+)", path)
        if m:
            return self.reply(200, b"x" * int(m.group(1)), "application/octet-stream")
        self.reply(404, {"error": "unknown diagnostic endpoint"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state, context):
        self.state = state
        self.context = context
        super().__init__(("127.0.0.1", 0), Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs on the connection's own thread, so a slow client never stalls
        # the accept loop.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            sys.stderr.write("TLS handshake failed: %s\n" % e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def shutdown_request(self, request):
        try:
            request.close()
        except OSError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("cert", "key", "ca", "control-password"):
        parser.add_argument("--" + name, required=True)
    parser.add_argument("--registry", default="", help="'<deviceId> <base64 key>' lines (HubEmulator's)")
    parser.add_argument("--storage", default="", help="Azurite's HOST:PORT; without it, /_test/ only")
    parser.add_argument("--account", default="devstoreaccount1")
    parser.add_argument("--account-key", default=base64.b64encode(b"no storage").decode())
    parser.add_argument("--container", default="uploads")
    parser.add_argument("--hub-host", default="localhost")
    args = parser.parse_args()
    state = State(args)
    state.load_registry()
    if args.storage:
        state.create_container()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    server = Server(state, context)
    state.port = server.server_address[1]
    print("file-upload-hub listening on port %d" % state.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
