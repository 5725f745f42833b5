#!/usr/bin/env python3
"""Dependency-free CQL native-protocol (v4) probe for the test Cassandra node.

    cql_probe.py [--host H] [--port P] [--timeout S]            # OPTIONS -> SUPPORTED
    cql_probe.py [--host H] [--port P] --query "SELECT ..."     # STARTUP + QUERY, prints rows

Exit status 0 when the server answered as expected, 1 otherwise (reason on stderr).
deploy/cassandra/start.sh uses the OPTIONS form as its readiness check.
"""
import argparse
import socket
import struct
import sys

VERSION = 0x04  # request frame, protocol v4 (responses carry 0x84)
OP_ERROR, OP_STARTUP, OP_READY, OP_OPTIONS, OP_SUPPORTED, OP_QUERY, OP_RESULT = (
    0x00, 0x01, 0x02, 0x05, 0x06, 0x07, 0x08)


class ProbeError(Exception):
    pass


def frame(opcode, body=b"", stream=0):
    return struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by server")
        buf += chunk
    return buf


def read_frame(sock):
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    if version & 0x7F != VERSION or not version & 0x80:
        raise ProbeError("unexpected response version byte 0x%02x" % version)
    return opcode, recv_exact(sock, length) if length else b""


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        out = self.data[self.pos:self.pos + n]
        if len(out) != n:
            raise ProbeError("truncated response body")
        self.pos += n
        return out

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode("utf-8", "replace")

    def string_list(self):
        return [self.string() for _ in range(self.short())]

    def string_multimap(self):
        return {self.string(): self.string_list() for _ in range(self.short())}

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def type_option(self):
        tid = self.short()
        if tid == 0x0000:  # custom
            self.string()
        elif tid in (0x0020, 0x0022):  # list, set
            self.type_option()
        elif tid == 0x0021:  # map
            self.type_option()
            self.type_option()
        elif tid == 0x0030:  # udt
            self.string()
            self.string()
            for _ in range(self.short()):
                self.string()
                self.type_option()
        elif tid == 0x0031:  # tuple
            for _ in range(self.short()):
                self.type_option()
        return tid


def error_text(body):
    r = Reader(body)
    code = r.int()
    return "server error 0x%04x: %s" % (code, r.string())


def decode_value(tid, raw):
    if raw is None:
        return "null"
    if tid in (0x0001, 0x000D):  # ascii, varchar
        return raw.decode("utf-8", "replace")
    if tid in (0x0002, 0x0009, 0x0013, 0x0014) and len(raw) in (1, 2, 4, 8):  # bigint/int/smallint/tinyint
        return str(int.from_bytes(raw, "big", signed=True))
    if tid == 0x0004 and len(raw) == 1:  # boolean
        return "true" if raw[0] else "false"
    if tid in (0x000C, 0x000F) and len(raw) == 16:  # uuid, timeuuid
        h = raw.hex()
        return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
    return "0x" + raw.hex()


def options(sock):
    sock.sendall(frame(OP_OPTIONS))
    opcode, body = read_frame(sock)
    if opcode == OP_ERROR:
        raise ProbeError(error_text(body))
    if opcode != OP_SUPPORTED:
        raise ProbeError("expected SUPPORTED (0x06), got opcode 0x%02x" % opcode)
    return Reader(body).string_multimap()


def query(sock, cql):
    startup = struct.pack(">H", 1)
    for s in ("CQL_VERSION", "3.0.0"):
        b = s.encode()
        startup += struct.pack(">H", len(b)) + b
    sock.sendall(frame(OP_STARTUP, startup))
    opcode, body = read_frame(sock)
    if opcode == OP_ERROR:
        raise ProbeError(error_text(body))
    if opcode != OP_READY:
        raise ProbeError("expected READY (0x02) after STARTUP, got opcode 0x%02x "
                         "(authentication enabled?)" % opcode)
    q = cql.encode()
    # <long string query><short consistency=ONE><byte flags=0>
    sock.sendall(frame(OP_QUERY, struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0), stream=1))
    opcode, body = read_frame(sock)
    if opcode == OP_ERROR:
        raise ProbeError(error_text(body))
    if opcode != OP_RESULT:
        raise ProbeError("expected RESULT (0x08), got opcode 0x%02x" % opcode)
    r = Reader(body)
    kind = r.int()
    if kind != 0x0002:  # Void, Set_keyspace, Schema_change, ...
        return None, []
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:  # has_more_pages
        r.bytes()
    global_spec = flags & 0x0001
    if global_spec:
        r.string()
        r.string()
    cols = []
    if not flags & 0x0004:  # no_metadata
        for _ in range(ncols):
            if not global_spec:
                r.string()
                r.string()
            name = r.string()
            cols.append((name, r.type_option()))
    rows = []
    for _ in range(r.int()):
        raw = [r.bytes() for _ in range(ncols)]
        rows.append([decode_value(cols[i][1] if cols else -1, v) for i, v in enumerate(raw)])
    return [c[0] for c in cols], rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9042)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--query", help="run this CQL statement (consistency ONE) and print the rows")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args()
    try:
        with socket.create_connection((a.host, a.port), timeout=a.timeout) as sock:
            sock.settimeout(a.timeout)
            if a.query is None:
                supported = options(sock)
                if not a.quiet:
                    print("SUPPORTED " + " ".join(
                        "%s=%s" % (k, ",".join(v)) for k, v in sorted(supported.items())))
            else:
                names, rows = query(sock, a.query)
                if names is not None and not a.quiet:
                    print(" | ".join(names))
                    for row in rows:
                        print(" | ".join(row))
    except (OSError, ProbeError) as e:
        if not a.quiet:
            print("cql_probe: %s:%d: %s" % (a.host, a.port, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
