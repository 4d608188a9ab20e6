#!/usr/bin/env python3
"""A webhook receiver for tests: verifies every request with the reference Standard Webhooks
library (not pglive's own signing code) and answers by a failure schedule; with --preset, it
stands in for a relay's publish API instead (see presets.py next to this file).

Usage: webhook-receiver.py --secret whsec_... --log FILE [--port 0] [--schedule LIST] [--body TEXT]
       webhook-receiver.py --preset ably|centrifugo|pusher [--key K] [--secret S] [--app-id N] ...

The schedule is a comma-separated list, one item per request in arrival order; after its end
every request gets 200:
  ok | 2xx          200 (or that 2xx status): the request is accepted
  NNN               that status, with --body as the response body (for a 4xx or 5xx)
  429:S, 503:S      that status with `Retry-After: S`
  timeout:S         no answer for S seconds, then 503: with a client timeout below S the
                    client gives up first; never accepted
  cerr:CODE         (centrifugo) 200 with {"error":{"code":CODE}} (a batch: on its last reply)

A request whose signature does not verify gets 401 and does not use up a schedule item.

The first line on stdout is the bound port (--port 0 picks a free one). Every request appends
one JSON line to the log, written before the response is sent:
  {"seq", "time", "method", "path", "webhook_id", "webhook_timestamp", "status", "accepted",
   "verified", "error", "headers", "body", "events"}
where time is when the request arrived (unix seconds), status the number answered (or
"timeout"), body the parsed JSON of the request body (the raw text if it is not JSON),
headers every request header, names in lower case, and events the LiveEvents the request
carried, in order (webhook_id is, for a preset, the request's id: the one event's meta.id,
or "<first>..<last>" of several with ':' as '.', as pglive names a batch).
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

import presets


def parse_schedule(text):
    items = []
    for raw in filter(None, (s.strip() for s in text.split(","))):
        name, _, arg = raw.partition(":")
        if name == "ok":
            items.append((200, None))
        elif name == "timeout":
            items.append(("timeout", float(arg or 3)))
        elif name == "cerr":
            items.append(("cerr", int(arg)))
        elif name.isdigit():
            items.append((int(name), float(arg) if arg else None))
        else:
            raise SystemExit(f"webhook-receiver: unknown schedule item {raw!r}")
    return items


class State:
    def __init__(self, args):
        self.preset = presets.make(args) if args.preset else None
        self.webhook = None if args.preset else Webhook(args.secret)
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

    def do_GET(self):
        self.do_POST()

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
            "method": self.command,
            "path": self.path,
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "headers": headers,
            "body": body,
            "events": [],
            "verified": False,
            "error": None,
        }
        try:
            if st.preset:
                entry["events"] = st.preset.verify(self.command, self.path, headers, raw, body)
                entry["webhook_id"] = presets.request_id(entry["events"])
            else:
                st.webhook.verify(raw, headers)
                entry["events"] = body if isinstance(body, list) else [body]
            entry["verified"] = True
        except presets.Probe as probe:
            entry["verified"] = True
            entry["status"] = 200
            entry["accepted"] = False
            with st.lock:
                st.record(entry)
            self.answer(200, {}, json.dumps(probe.answer), "application/json")
            return
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
        elif status == "cerr":
            answer = presets.centrifugo_error(body, arg)
            self.answer(200, {}, json.dumps(answer), "application/json")
        elif entry["accepted"]:
            if st.preset:
                self.answer(status, {}, json.dumps(st.preset.ok(body)), "application/json")
            else:
                self.answer(status, {}, "")
        else:
            extra = {"Retry-After": str(int(arg))} if arg is not None else {}
            refused = status == 401 and entry["error"]
            text = entry["error"] if refused else st.body.replace("{status}", str(status))
            if st.preset:
                text = st.preset.error(status, text)
            self.answer(status, extra, text)

    def answer(self, status, headers, text, content_type="text/plain; charset=utf-8"):
        data = text.encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (a held response)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--preset", choices=["ably", "centrifugo", "pusher"])
    p.add_argument("--secret", help="the Standard Webhooks secret, or Pusher's app secret")
    p.add_argument("--key", help="Ably's or Centrifugo's API key, or Pusher's app key")
    p.add_argument("--app-id", help="Pusher's app id")
    p.add_argument("--log", required=True)
    p.add_argument("--schedule", default="")
    p.add_argument(
        "--body",
        default="receiver schedule says {status}",
        help="response body of a scheduled non-2xx answer ({status} is replaced)",
    )
    args = p.parse_args()
    if not args.preset and not args.secret:
        p.error("--secret is required without --preset")

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
