#!/usr/bin/env python3
"""A TLS front for a plain-HTTP test server, so TLS clients are tested against a real handshake.

    tls-proxy.py LISTEN_PORT TARGET_PORT CERT_FILE KEY_FILE

Listens on 127.0.0.1:LISTEN_PORT with the certificate (a leaf signed by the test CA that
scripts/start-services makes), and forwards each connection's plaintext to
127.0.0.1:TARGET_PORT. Binds to loopback only.
"""

import socket
import ssl
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn, target):
    try:
        upstream = socket.create_connection(("127.0.0.1", target))
    except OSError:
        conn.close()
        return
    threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
    pipe(upstream, conn)


def main():
    listen, target, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", listen), reuse_port=False)
    while True:
        raw, _ = server.accept()
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(conn, target), daemon=True).start()


if __name__ == "__main__":
    main()
