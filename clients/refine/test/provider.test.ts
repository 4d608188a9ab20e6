import { test } from "node:test";
import assert from "node:assert/strict";

import { channelSegment, liveProvider, type LiveEvent, type SocketLike } from "../src/index.js";

/** A socket double: records what the provider sends; the test plays the relay. */
class FakeSocket implements SocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: any[] = [];
  onopen: ((ev: any) => void) | null = null;
  onmessage: ((ev: { data: any }) => void) | null = null;
  onclose: ((ev: any) => void) | null = null;
  onerror: ((ev: any) => void) | null = null;
  constructor(public url: string) {
    FakeSocket.all.push(this);
  }
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(f: object) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  drop() {
    this.readyState = 3;
    this.onclose?.({});
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));
const until = async (cond: () => boolean) => {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    assert.ok(Date.now() < deadline, "condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
};

function event(type: string, ids: (number | string)[] | undefined, id = "0/1:0") {
  return {
    channel: "resources/posts",
    type,
    payload: ids === undefined ? {} : { ids },
    date: "2026-11-29T10:00:00.123456Z",
    meta: { id, lsn: id.split(":")[0], xid: 1, schema: "public", table: "posts" },
  };
}

function setup(token?: string | (() => string)) {
  FakeSocket.all = [];
  const provider = liveProvider({
    url: "ws://relay/live",
    token,
    WebSocket: FakeSocket,
    backoff: { initialMs: 1, maxMs: 4 },
    onError: () => {},
  });
  return provider;
}

test("one socket, one subscribe per channel, unsubscribe when the last subscriber leaves", async () => {
  const p = setup("t.o.k");
  const a = p.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  const b = p.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await tick();
  assert.equal(FakeSocket.all.length, 1);
  const ws = FakeSocket.all[0];
  assert.equal(ws.url, "ws://relay/live?token=t.o.k");
  ws.open();
  p.subscribe({ channel: "resources/tags", types: ["*"], callback: () => {} });
  assert.deepEqual(ws.sent, [
    { op: "subscribe", channel: "resources/posts" },
    { op: "subscribe", channel: "resources/tags" },
  ]);
  p.unsubscribe(a);
  assert.equal(ws.sent.length, 2, "another subscriber is left");
  p.unsubscribe(b);
  assert.deepEqual(ws.sent[2], { op: "unsubscribe", channel: "resources/posts" });
  p.close();
});

test("ids are compared as strings, an empty list does not filter, created always passes", async () => {
  const p = setup();
  const got: Record<string, LiveEvent[]> = { one: [], all: [], empty: [] };
  p.subscribe({ channel: "resources/posts", types: ["*"], params: { ids: ["7"] }, callback: (e) => got.one.push(e) });
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: (e) => got.all.push(e) });
  p.subscribe({ channel: "resources/posts", types: ["*"], params: { ids: [] }, callback: (e) => got.empty.push(e) });
  await tick();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.frame({ op: "subscribed", channel: "resources/posts" });
  ws.frame(event("updated", [7], "0/1:0"));
  ws.frame(event("updated", [8], "0/2:0"));
  ws.frame(event("created", [9], "0/3:0"));
  ws.frame(event("deleted", undefined, "0/4:0"));
  assert.deepEqual(got.one.map((e) => e.meta?.id), ["0/1:0", "0/3:0", "0/4:0"]);
  assert.equal(got.all.length, 4);
  assert.equal(got.empty.length, 4);
  assert.ok(got.all[0].date instanceof Date);
  assert.equal(got.all[0].date.toISOString(), "2026-11-29T10:00:00.123Z");
  p.close();
});

test("types filter unless the subscriber takes every type; a * event reaches everyone", async () => {
  const p = setup();
  const got: string[] = [];
  p.subscribe({ channel: "resources/posts", types: ["deleted"], callback: (e) => got.push(e.type) });
  await tick();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.frame(event("updated", [1]));
  ws.frame(event("deleted", [1]));
  ws.frame(event("*", undefined));
  ws.frame({ op: "resync", channel: "resources/posts" });
  assert.deepEqual(got, ["deleted", "*", "*"]);
  p.close();
});

test("after a dropped connection it reconnects and resumes each channel from its last event", async () => {
  let n = 0;
  const p = setup(() => `token${++n}`);
  const got: LiveEvent[] = [];
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: (e) => got.push(e) });
  p.subscribe({ channel: "resources/tags", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  const first = FakeSocket.all[0];
  first.open();
  first.frame(event("created", [1], "0/AA:0"));
  first.drop();
  await until(() => FakeSocket.all.length === 2);
  const second = FakeSocket.all[1];
  assert.equal(second.url, "ws://relay/live?token=token2", "a fresh token for each connection");
  second.open();
  assert.deepEqual(second.sent, [
    { op: "subscribe", channel: "resources/posts", since: "0/AA:0" },
    { op: "subscribe", channel: "resources/tags" },
  ]);
  // The relay no longer holds what was missed: the subscriber gets an event without ids.
  second.frame({ op: "resync", channel: "resources/posts" });
  assert.equal(got.length, 2);
  assert.deepEqual(got[1].payload, {});
  assert.equal(got[1].channel, "resources/posts");
  p.close();
});

test("no publish: changes come from the database", () => {
  const p = setup();
  assert.equal((p as any).publish, undefined);
  p.close();
});

test("relay errors reach onError", async () => {
  FakeSocket.all = [];
  const errors: any[] = [];
  const p = liveProvider({ url: "ws://relay/live", WebSocket: FakeSocket, onError: (e) => errors.push(e) });
  p.subscribe({ channel: "resources/secrets", types: ["*"], callback: () => assert.fail("no events") });
  await tick();
  FakeSocket.all[0].open();
  FakeSocket.all[0].frame({ op: "error", channel: "resources/secrets", code: "forbidden", message: "no" });
  assert.equal(errors[0].code, "forbidden");
  p.close();
});

test("a token that cannot be had is retried", async () => {
  FakeSocket.all = [];
  let calls = 0;
  const errors: any[] = [];
  const p = liveProvider({
    url: "ws://relay/live",
    WebSocket: FakeSocket,
    backoff: { initialMs: 1, maxMs: 2 },
    onError: (e) => errors.push(e),
    token: () => {
      calls += 1;
      if (calls === 1) throw new Error("auth server down");
      return "late";
    },
  });
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  assert.equal(FakeSocket.all[0].url, "ws://relay/live?token=late");
  assert.equal(errors[0].code, "token");
  p.close();
});

/** An unsigned JWT-shaped token expiring `inMs` from now (the provider only reads `exp`). */
function jwt(inMs: number, n = 0) {
  const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const exp = (Date.now() + inMs) / 1000;
  return `${enc({ alg: "HS256" })}.${enc({ exp, channels: ["*"], n })}.sig`;
}

test("a token function is asked again before exp and the fresh token sent on the open socket", async () => {
  FakeSocket.all = [];
  const issued: string[] = [];
  const p = liveProvider({
    url: "ws://relay/live",
    WebSocket: FakeSocket,
    renewBeforeMs: 60_000,
    onError: () => {},
    // Each token lives 200 ms: renewals come at half of what is left.
    token: () => {
      const t = jwt(200, issued.length);
      issued.push(t);
      return t;
    },
  });
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  const ws = FakeSocket.all[0];
  assert.equal(ws.url, `ws://relay/live?token=${encodeURIComponent(issued[0])}`);
  ws.open();
  await until(() => ws.sent.filter((m) => m.op === "auth").length >= 2);
  const auths = ws.sent.filter((m) => m.op === "auth");
  assert.deepEqual(
    auths.map((m) => m.token),
    issued.slice(1, auths.length + 1),
    "each renewal sends the token just issued",
  );
  assert.equal(FakeSocket.all.length, 1, "no reconnection needed");
  p.close();
  const sent = ws.sent.length;
  await new Promise((r) => setTimeout(r, 250));
  assert.equal(ws.sent.length, sent, "no renewal after close");
});

test("a fixed token is not renewed, and a closed socket stops renewing", async () => {
  FakeSocket.all = [];
  const fixed = liveProvider({ url: "ws://relay/live", WebSocket: FakeSocket, token: jwt(100) });
  fixed.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  FakeSocket.all[0].open();
  await new Promise((r) => setTimeout(r, 150));
  assert.deepEqual(
    FakeSocket.all[0].sent.filter((m) => m.op === "auth"),
    [],
    "nothing to renew with",
  );
  fixed.close();

  FakeSocket.all = [];
  let calls = 0;
  const p = liveProvider({
    url: "ws://relay/live",
    WebSocket: FakeSocket,
    backoff: { initialMs: 10_000, maxMs: 10_000 },
    token: () => {
      calls += 1;
      return jwt(100);
    },
  });
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  FakeSocket.all[0].open();
  FakeSocket.all[0].drop();
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(calls, 1, "the dropped socket's renewal was cancelled");
  p.close();
});

test("a token valid for months waits without overflowing the timer, and a cached token is not resent in a loop", async () => {
  FakeSocket.all = [];
  let warned = false;
  const onWarning = () => (warned = true);
  process.on("warning", onWarning);
  let calls = 0;
  const long = liveProvider({
    url: "ws://relay/live",
    WebSocket: FakeSocket,
    token: () => {
      calls += 1;
      return jwt(90 * 86_400_000);
    },
  });
  long.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  FakeSocket.all[0].open();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(calls, 1, "no renewal months ahead of exp");
  assert.equal(warned, false, "no TimeoutOverflowWarning");
  long.close();
  process.off("warning", onWarning);

  // The same token every time: renewal asks again at most once a second, and sends nothing.
  FakeSocket.all = [];
  calls = 0;
  const cached = jwt(2500);
  const p = liveProvider({
    url: "ws://relay/live",
    WebSocket: FakeSocket,
    token: () => {
      calls += 1;
      return cached;
    },
  });
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: () => {} });
  await until(() => FakeSocket.all.length === 1);
  FakeSocket.all[0].open();
  await new Promise((r) => setTimeout(r, 2000));
  assert.ok(calls <= 3, `${calls} calls in 2 s`);
  assert.deepEqual(FakeSocket.all[0].sent.filter((m) => m.op === "auth"), []);
  p.close();
});

test("with origin, events this tab caused are skipped but still resumed from", async () => {
  FakeSocket.all = [];
  const p = liveProvider({ url: "ws://relay/live", origin: "tab-1", WebSocket: FakeSocket, backoff: { initialMs: 1, maxMs: 4 } });
  const got: LiveEvent[] = [];
  p.subscribe({ channel: "resources/posts", types: ["*"], callback: (e) => got.push(e) });
  await tick();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.frame({ op: "subscribed", channel: "resources/posts" });
  const mine = event("created", [1], "0/1:0");
  ws.frame({ ...mine, meta: { ...mine.meta, origin: "tab-1" } });
  const theirs = event("created", [2], "0/2:0");
  ws.frame({ ...theirs, meta: { ...theirs.meta, origin: "tab-2" } });
  const own = event("deleted", [3], "0/3:0");
  ws.frame({ ...own, meta: { ...own.meta, origin: "tab-1" } });
  ws.frame(event("updated", [4], "0/4:0"));
  assert.deepEqual(got.map((e) => e.meta?.id), ["0/2:0", "0/4:0"]);
  // Skipped events count for `since`: a reconnect resumes after the last one seen.
  const last = event("updated", [5], "0/5:0");
  ws.frame({ ...last, meta: { ...last.meta, origin: "tab-1" } });
  assert.equal(got.length, 2);
  ws.drop();
  await until(() => FakeSocket.all.length === 2);
  const again = FakeSocket.all[1];
  again.open();
  assert.deepEqual(again.sent, [{ op: "subscribe", channel: "resources/posts", since: "0/5:0" }]);
  p.close();
});

test("channelSegment writes values as pglive's templates do", () => {
  assert.equal(channelSegment(42), "42");
  assert.equal(channelSegment("6f1b8c3e-0d5c"), "6f1b8c3e-0d5c");
  assert.equal(channelSegment("a.b@c/é"), "a=2Eb=40c=2F=C3=A9");
  assert.equal(channelSegment(null), "=");
  assert.equal(channelSegment(""), "=");
});

test("with channel, Refine's channel is subscribed to under the relay's name and events come back under Refine's", async () => {
  FakeSocket.all = [];
  const p = liveProvider({
    url: "ws://relay/live",
    channel: (c) => `tenants/42/${c}`,
    WebSocket: FakeSocket,
    backoff: { initialMs: 1, maxMs: 4 },
  });
  const got: LiveEvent[] = [];
  const sub = p.subscribe({ channel: "resources/posts", types: ["*"], callback: (e) => got.push(e) });
  await tick();
  const ws = FakeSocket.all[0];
  ws.open();
  assert.deepEqual(ws.sent, [{ op: "subscribe", channel: "tenants/42/resources/posts" }]);
  ws.frame({ op: "subscribed", channel: "tenants/42/resources/posts" });
  ws.frame({ ...event("created", [1], "0/1:0"), channel: "tenants/42/resources/posts" });
  // Another tenant's channel was never subscribed to: nothing of it reaches Refine.
  ws.frame({ ...event("created", [2], "0/2:0"), channel: "tenants/7/resources/posts" });
  assert.deepEqual(got.map((e) => [e.channel, e.payload.ids]), [["resources/posts", [1]]]);
  p.unsubscribe(sub);
  assert.deepEqual(ws.sent.at(-1), { op: "unsubscribe", channel: "tenants/42/resources/posts" });
  p.close();
});
