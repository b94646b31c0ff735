"""Deletes the JetStream streams test runs leave on the shared NATS server.

Only streams named like the tests name them (`PQ_conf-0123456789ab`, its `_dlq`
companion, the bench's `raw_0123456789ab`) go; anything else is left alone. Speaks the
NATS text protocol directly so no client needs installing. Prints how many went.
"""

import json
import re
import socket
import sys

TEST_STREAM = re.compile(r"^(PQ_[a-z]+-[0-9a-f]{12}(_.*)?|raw_[0-9a-f]{12})$")


def main():
    sock = socket.create_connection(("127.0.0.1", 4222), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.platform-sweep 1\r\n')

    def request(subject, body):
        payload = json.dumps(body).encode()
        sock.sendall(b"PUB %s _INBOX.platform-sweep %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
        while True:
            line = reader.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ConnectionError(line.decode().strip())
            elif line.startswith(b"MSG"):
                size = int(line.split()[-1])
                return json.loads(reader.read(size + 2)[:-2] or b"{}")

    names, offset = [], 0
    while True:
        page = request("$JS.API.STREAM.NAMES", {"offset": offset})
        got = page.get("streams") or []
        names += got
        offset += len(got)
        if not got or offset >= page.get("total", 0):
            break
    doomed = [n for n in names if TEST_STREAM.match(n)]
    for name in doomed:
        request("$JS.API.STREAM.DELETE." + name, {})
    print(f"{len(doomed)} test streams deleted, {len(names) - len(doomed)} kept")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        sys.exit(f"could not sweep NATS: {e}")
