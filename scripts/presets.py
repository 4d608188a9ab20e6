"""The relay stand-ins of webhook-receiver.py (--preset): each checks a request against the
relay's documented publish API and authentication, and returns the LiveEvents it carried.

  ably        POST /channels/{encodeURIComponent(channel)}/messages, Authorization: Basic
              base64(key); body [{"id":"<base>:<i>","name":<type>,"data":<LiveEvent>}] with
              <base> = the request id (see request_id) with ':' as '.'. Check: GET /channels/{ch}.
  centrifugo  POST /api/publish {"channel","data","idempotency_key"} or /api/batch
              {"commands":[{"publish":…}]}, X-API-Key; channel = LiveEvent channel with '/'
              as ':'; idempotency_key = meta.id. Check: POST /api/info.
  pusher      POST /apps/{id}/events {"name","channels":[ch],"data":"<LiveEvent JSON>"} or
              /apps/{id}/batch_events {"batch":[{"channel","name","data"}]} (at most 10);
              channel = LiveEvent channel with '/' as '-'. The signed query is recomputed
              with the official `pusher` library's Request class (for a GET, without a body,
              with its signing functions and no body_md5, as Pusher's Node.js library signs
              it). Check: GET /apps/{id}/channels.
A request that fails authentication raises Unauthorized (answered 401).
"""

import base64
import importlib.util
import json
import sys
import time
import types
from unittest import mock
from urllib.parse import parse_qsl, unquote, urlsplit


class Unauthorized(Exception):
    pass


class Probe(Exception):
    """An authenticated `pglive check` request: answered 200 with `answer`."""

    def __init__(self, answer):
        super().__init__("probe")
        self.answer = answer


def expect(cond, what):
    if not cond:
        raise ValueError(what)


def request_id(events):
    """The id of a request carrying `events`: the one event's meta.id, or for several
    "<first meta.id>..<last meta.id>" with ':' as '.'."""
    ids = [e["meta"]["id"] for e in events]
    if len(ids) == 1:
        return ids[0]
    return f"{ids[0]}..{ids[-1]}".replace(":", ".") if ids else None


def make(args):
    return {"ably": Ably, "centrifugo": Centrifugo, "pusher": Pusher}[args.preset](args)


class Ably:
    def __init__(self, args):
        self.auth = "Basic " + base64.b64encode(args.key.encode()).decode()

    def verify(self, method, path, headers, raw, body):
        if headers.get("authorization") != self.auth:
            raise Unauthorized("invalid credentials")
        parts = urlsplit(path).path.split("/")
        expect(len(parts) >= 3 and parts[1] == "channels", f"path {path}")
        channel = unquote(parts[2])
        if method == "GET" and len(parts) == 3:
            raise Probe({"channelId": channel, "status": {"isActive": False}})
        expect(method == "POST" and parts[3:] == ["messages"], f"{method} {path}")
        expect(isinstance(body, list) and body, "the body is not an array of messages")
        events = []
        base = request_id([m["data"] for m in body]).replace(":", ".")
        expect(len(raw) <= 64 * 1024, "the body is over 64 KiB")
        for i, m in enumerate(body):
            expect(set(m) == {"id", "name", "data"}, f"message keys {sorted(m)}")
            event = m["data"]
            expect(isinstance(event, dict), "data is not the LiveEvent object")
            expect(m["id"] == f"{base}:{i}", f"message id {m['id']} is not {base}:{i}")
            expect(m["name"] == event["type"], "name is not the event's type")
            expect(event["channel"] == channel, f"event of {event['channel']} on {channel}")
            events.append(event)
        return events

    def ok(self, body):
        return {"channel": body[0]["data"]["channel"], "messageId": body[0]["id"]}

    def error(self, status, text):
        return json.dumps({"error": {"code": status * 100, "statusCode": status, "message": text}})


class Centrifugo:
    def __init__(self, args):
        self.key = args.key

    def publish(self, p):
        expect(set(p) == {"channel", "data", "idempotency_key"}, f"publish keys {sorted(p)}")
        event = p["data"]
        expect(isinstance(event, dict), "data is not the LiveEvent object")
        expect(p["channel"] == event["channel"].replace("/", ":"), f"channel {p['channel']}")
        expect(p["idempotency_key"] == event["meta"]["id"], "idempotency_key is not meta.id")
        return event

    def verify(self, method, path, headers, raw, body):
        if headers.get("x-api-key") != self.key:
            raise Unauthorized("Unauthorized")
        expect(method == "POST", method)
        if path == "/api/info":
            raise Probe({"result": {"nodes": []}})
        if path == "/api/publish":
            return [self.publish(body)]
        expect(path == "/api/batch", f"path {path}")
        commands = body["commands"]
        expect(len(commands) > 1, "a batch of one")
        for c in commands:
            expect(set(c) == {"publish"}, f"command {sorted(c)}")
        return [self.publish(c["publish"]) for c in commands]

    def ok(self, body):
        if "commands" in body:
            return {"replies": [{"publish": {}} for _ in body["commands"]]}
        return {"result": {}}

    def error(self, status, text):
        return text


def centrifugo_error(body, code):
    """A 200 answer with error `code`: on the last reply of a batch."""
    error = {"error": {"code": code, "message": "scheduled error"}}
    if "commands" in body:
        return {"replies": [{"publish": {}} for _ in body["commands"][1:]] + [error]}
    return error


def pusher_http():
    """The official library's request module, without its package's __init__ (which needs
    network and crypto packages the signature does not)."""
    if "pusher.http" not in sys.modules:
        spec = importlib.util.find_spec("pusher")
        package = types.ModuleType("pusher")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["pusher"] = package
    import pusher.http

    return pusher.http


class Pusher:
    def __init__(self, args):
        self.client = types.SimpleNamespace(key=args.key, secret=args.secret)
        self.app_id = args.app_id

    def expected_query(self, method, path, raw, timestamp):
        """The query the pusher library signs for this request at `timestamp`."""
        http = pusher_http()
        if not raw:
            params = {"auth_key": self.client.key, "auth_timestamp": timestamp,
                      "auth_version": "1.0"}
            text = "\n".join([method, path, http.make_query_string(params)])
            return dict(params, auth_signature=http.sign(self.client.secret, text))
        with mock.patch.object(http.time, "time", return_value=float(timestamp)):
            request = http.Request(self.client, "GET", path, {})
            request.method, request.body, request.query_params = method, raw, {}
            request._generate_auth()
        return request.query_params

    def verify(self, method, path, headers, raw, body):
        url = urlsplit(path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        timestamp = query.get("auth_timestamp", "0")
        if query != self.expected_query(method, url.path, raw, timestamp):
            raise Unauthorized(f"Invalid signature: {sorted(query)}")
        if abs(time.time() - float(timestamp)) > 600:
            raise Unauthorized("Timestamp expired")
        prefix = f"/apps/{self.app_id}/"
        expect(url.path.startswith(prefix), f"path {url.path}")
        action = url.path[len(prefix):]
        if method == "GET" and action == "channels":
            raise Probe({"channels": {}})
        expect(method == "POST", method)
        if action == "events":
            expect(set(body) == {"name", "channels", "data"}, f"keys {sorted(body)}")
            expect(len(body["channels"]) == 1, "one channel")
            return [self.event(body["channels"][0], body)]
        expect(action == "batch_events", f"path {url.path}")
        batch = body["batch"]
        expect(1 < len(batch) <= 10, f"a batch of {len(batch)}")
        for e in batch:
            expect(set(e) == {"name", "channel", "data"}, f"keys {sorted(e)}")
        return [self.event(e["channel"], e) for e in batch]

    def event(self, channel, e):
        expect(isinstance(e["data"], str), "data is not a string")
        expect(len(e["data"].encode()) <= 10 * 1024, "data is over 10 KB")
        event = json.loads(e["data"])
        expect(channel == event["channel"].replace("/", "-"), f"channel {channel}")
        expect(e["name"] == event["type"], "name is not the event's type")
        return event

    def ok(self, body):
        return {}

    def error(self, status, text):
        return text
