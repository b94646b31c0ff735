"""A real SMTP server (aiosmtpd) for platform-notify's email tests.

    smtp-sink.py SMTP_PORT SMTPS_PORT API_PORT CERT KEY

SMTP_PORT offers STARTTLS (required) and AUTH (PLAIN/LOGIN, user `notify`, password
`secret`, required before MAIL); SMTPS_PORT is the same with implicit TLS. Messages over
256 KiB are refused (552). Recipients script failures by their local part:
`gone…@` is refused `550 5.1.1`, `tempfail…@` is refused `451 4.3.0` the first time
and taken after, `full…@` is refused `452 4.2.2` every time.

API_PORT serves what arrived: `GET /messages?to=ADDRESS` answers a JSON list of
`{"mail_from", "rcpt_tos", "data"}` for the messages sent to ADDRESS.
"""

import http.server
import json
import ssl
import sys
import threading
import time
import urllib.parse

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

smtp_port, smtps_port, api_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cert, key = sys.argv[4], sys.argv[5]

messages = []
seen_tempfail = set()
lock = threading.Lock()


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("gone"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local.startswith("full"):
            return "452 4.2.2 Mailbox full"
        if local.startswith("tempfail"):
            with lock:
                first = address not in seen_tempfail
                seen_tempfail.add(address)
            if first:
                return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with lock:
            messages.append({
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": envelope.original_content.decode("utf-8", "replace"),
            })
        return "250 2.0.0 Ok: queued"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"notify" and auth_data.password == b"secret"
    return AuthResult(success=ok, handled=False)


class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        to = urllib.parse.parse_qs(url.query).get("to", [""])[0].lower()
        with lock:
            found = [m for m in messages if to in [r.lower() for r in m["rcpt_tos"]]]
        body = json.dumps(found).encode()
        self.send_response(200 if url.path == "/messages" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


common = dict(
    hostname="127.0.0.1",
    authenticator=authenticate,
    auth_required=True,
    data_size_limit=256 * 1024,
)
starttls = Controller(Handler(), port=smtp_port, tls_context=context(), require_starttls=True, **common)
# The connection is TLS from its first byte; aiosmtpd only counts STARTTLS as TLS.
implicit = Controller(Handler(), port=smtps_port, ssl_context=context(), auth_require_tls=False, **common)
starttls.start()
implicit.start()
server = http.server.ThreadingHTTPServer(("127.0.0.1", api_port), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    time.sleep(3600)
