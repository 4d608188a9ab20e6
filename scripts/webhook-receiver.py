#!/usr/bin/env python3
"""A webhook receiver for tests: verifies every request with the reference Standard Webhooks
library (not pglive's own signing code) and answers by a failure schedule.

Usage: webhook-receiver.py --secret whsec_... --log FILE [--port 0] [--schedule LIST] [--body TEXT]

The schedule is a comma-separated list, one item per request in arrival order; after its end
every request gets 200:
  ok | 2xx          200 (or that 2xx status): the request is accepted
  NNN               that status, with --body as the response body (for a 4xx or 5xx)
  429:S, 503:S      that status with `Retry-After: S`
  timeout:S         no answer for S seconds, then 503: with a client timeout below S the
                    client gives up first; never accepted

A request whose signature does not verify gets 401 and does not use up a schedule item.

The first line on stdout is the bound port (--port 0 picks a free one). Every request appends
one JSON line to the log, written before the response is sent:
  {"seq", "time", "path", "webhook_id", "webhook_timestamp", "status", "accepted",
   "verified", "error", "headers", "body"}
where time is when the request arrived (unix seconds), status the number answered (or
"timeout"), body the parsed JSON of the request body (the raw text if it is not JSON) and
headers every request header, names in lower case.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook


def parse_schedule(text):
    items = []
    for raw in filter(None, (s.strip() for s in text.split(","))):
        name, _, arg = raw.partition(":")
        if name == "ok":
            items.append((200, None))
        elif name == "timeout":
            items.append(("timeout", float(arg or 3)))
        elif name.isdigit():
            items.append((int(name), float(arg) if arg else None))
        else:
            raise SystemExit(f"webhook-receiver: unknown schedule item {raw!r}")
    return items


class State:
    def __init__(self, args):
        self.webhook = Webhook(args.secret)
        self.schedule = parse_schedule(args.schedule)
        self.body = args.body
        self.lock = threading.Lock()
        self.log = open(args.log, "a", encoding="utf-8")
        self.seq = 0

    def next_item(self):
        """The next schedule item, or 200 once the schedule is done (call with the lock held)."""
        if self.schedule:
            return self.schedule.pop(0)
        return (200, None)

    def record(self, entry):
        """Appends one line to the log (call with the lock held)."""
        self.seq += 1
        entry["seq"] = self.seq
        self.log.write(json.dumps(entry) + "\n")
        self.log.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set in main

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook-receiver: %s %s\n" % (self.address_string(), fmt % args))

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def do_POST(self):
        st = self.state
        raw = self.read_body()
        headers = {k.lower(): v for (k, v) in self.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry = {
            "time": time.time(),
            "path": self.path,
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "headers": headers,
            "body": body,
            "verified": False,
            "error": None,
        }
        try:
            st.webhook.verify(raw, headers)
            entry["verified"] = True
        except Exception as e:  # noqa: BLE001 - any failure is a rejection, logged
            entry["error"] = f"{type(e).__name__}: {e}"

        with st.lock:
            if entry["verified"]:
                status, arg = st.next_item()
            else:
                status, arg = 401, None
            entry["status"] = status
            entry["accepted"] = isinstance(status, int) and 200 <= status < 300
            st.record(entry)

        if status == "timeout":
            time.sleep(arg)
            self.close_connection = True
            self.answer(503, {}, "held past the client's timeout")
        elif entry["accepted"]:
            self.answer(status, {}, "")
        else:
            extra = {"Retry-After": str(int(arg))} if arg is not None else {}
            text = entry["error"] if status == 401 else st.body.replace("{status}", str(status))
            self.answer(status, extra, text)

    def answer(self, status, headers, text):
        data = text.encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (a held response)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--schedule", default="")
    p.add_argument(
        "--body",
        default="receiver schedule says {status}",
        help="response body of a scheduled non-2xx answer ({status} is replaced)",
    )
    args = p.parse_args()

    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
