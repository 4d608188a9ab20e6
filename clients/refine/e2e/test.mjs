// The end-to-end proof: a real Refine app (this directory's Vite build, simple-rest against a
// small REST API over PostgreSQL, @pglive/refine for live updates) in headless Chromium, and
// the real pglive. Rows changed with SQL must show up on the page without a reload, also
// across a restart of what serves the page's WebSocket, with short-lived tokens the provider
// renews on its open socket. Two setups:
//
//   PGLIVE_BIN=… DATABASE_URL=postgres://…(wal_level=logical) node test.mjs
//     the in-process relay: `pglive run` with a websocket sink serves the page; pglive is
//     killed and restarted, and the page keeps one connection through several token renewals.
//   PGLIVE_BIN=… DATABASE_URL=… AMQP_URL=amqp://…/<a vhost of its own> node test.mjs relay-node
//     a relay node: `pglive run` publishes to a RabbitMQ stream (its amqp sink's `stream`) and a
//     `pglive relay` node reading that stream serves the page; the node is stopped (SIGTERM), a
//     change is made meanwhile, and once the node is back and ready (/readyz) the page shows
//     it: the provider resumes with `since`, and the node replays the change from the stream's
//     history, with no `resync` (also when the page resubscribed before the node was ready:
//     a node still reading its history holds the `since` until it has read that far).
//
// Every wait is for a condition, with a deadline.
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import {
  WAIT,
  appServer,
  connectDb,
  createPosts,
  dropAll,
  freePort,
  launchChromium,
  listen,
  pgliveConfig,
  startPglive,
  startRelayNode,
  waitFor,
} from "./support.mjs";

const bin = process.env.PGLIVE_BIN;
const dbUrl = process.env.DATABASE_URL;
const amqpUrl = process.env.AMQP_URL;
const mode = process.argv[2] ?? "in-process";
if (!bin || !dbUrl) throw new Error("set PGLIVE_BIN and DATABASE_URL");
if (!["in-process", "relay-node"].includes(mode)) {
  throw new Error(`unknown setup ${mode}: in-process (the default) or relay-node`);
}
if (mode === "relay-node" && !amqpUrl) throw new Error("set AMQP_URL (a vhost of the test's own)");
const NAME = mode === "relay-node" ? "pglive_e2e_node" : "pglive_e2e";

const db = await connectDb(dbUrl);
const sql = (text, values) => db.query(text, values);

// ---- tokens, as the application's backend would issue them ----
const SECRET = crypto.randomBytes(32).toString("hex");
const TOKEN_LIFETIME_S = 6;
let tokensIssued = 0;
function issueToken() {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000) + TOKEN_LIFETIME_S;
  const body = `${enc({ alg: "HS256", typ: "JWT" })}.${enc({ channels: ["resources/*"], exp })}`;
  const sig = crypto.createHmac("sha256", SECRET).update(body).digest("base64url");
  tokensIssued += 1;
  return `${body}.${sig}`;
}

// ---- the application's backend: tokens, the REST API simple-rest expects, the built app ----
const wsPort = await freePort();
const apiPort = await freePort();
const api = appServer(db, {
  routes: { "/api/token": issueToken },
  headScript: () => `window.PGLIVE_WS_PORT=${wsPort}`,
});

// ---- pglive: the page's WebSocket is served by the in-process relay or by a relay node ----
const work = fs.mkdtempSync(path.join(os.tmpdir(), "pglive-e2e-"));
function writeConfig(name, text) {
  const file = path.join(work, name);
  fs.writeFileSync(file, text, { mode: 0o600 });
  return file;
}
const websocketSink = `[[sinks]]
type = "websocket"
listen = "127.0.0.1:${wsPort}"
jwt_secret = "${SECRET}"
jwt_leeway = "0s"
allowed_origins = ["http://127.0.0.1:${apiPort}"]
`;

/** `pglive run` with the websocket sink; its restart is a crash. */
function inProcessRelay() {
  const config = writeConfig("pglive.toml", pgliveConfig(dbUrl, NAME, websocketSink));
  let daemon;
  const start = async () =>
    (daemon = await startPglive(bin, config, ["WebSocket relay listening", "streaming"]));
  return {
    what: "pglive",
    start,
    async restart(change) {
      await daemon.stop("SIGKILL");
      await change();
      await start();
    },
    stop: () => daemon?.stop(),
    logs: () => `--- pglive log:\n${daemon?.output ?? ""}`,
  };
}

/**
 * `pglive run` publishing to a stream in AMQP_URL's vhost, and a `pglive relay` node reading
 * it; its restart is a graceful stop and a start with the same configuration. `readyAt`: when
 * the node last answered /readyz with 200.
 */
async function relayNode() {
  const [sourceOps, nodeOps] = [await freePort(), await freePort()];
  const stream = "pglive.e2e";
  const amqpSink = `[[sinks]]
type = "amqp"
url = "${amqpUrl}"
stream = "${stream}"
[ops]
listen = "127.0.0.1:${sourceOps}"
`;
  const source = writeConfig("source.toml", pgliveConfig(dbUrl, NAME, amqpSink));
  const config = writeConfig(
    "relay.toml",
    `[relay]
url = "${amqpUrl}"
stream = "${stream}"
${websocketSink}history_age = "5m"
[[tables]]
name = "posts"
[ops]
listen = "127.0.0.1:${nodeOps}"
`,
  );
  let daemon, node;
  const relay = { what: "the relay node", readyAt: undefined };
  const startNode = async () => {
    node = await startRelayNode(bin, config, `http://127.0.0.1:${nodeOps}/readyz`);
    relay.readyAt = Date.now();
  };
  // The events the broker confirmed to the source's amqp sink.
  const published = async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${sourceOps}/metrics`)).text();
    return metrics
      .split("\n")
      .filter((l) => l.startsWith("pglive_events_published_total{") && l.includes('sink="amqp"'))
      .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
  };
  return Object.assign(relay, {
    async start() {
      // The source declares the stream before it publishes; the node then reads it.
      daemon = await startPglive(bin, source, ["publishing to AMQP", "streaming"]);
      await startNode();
    },
    async restart(change) {
      await node.stop("SIGTERM");
      const { exitCode, signalCode } = node.child;
      if (exitCode !== 0) throw new Error(`the relay node ended with ${exitCode ?? signalCode}`);
      const before = await published();
      await change();
      await waitFor("the change in the stream", async () => (await published()) > before);
      await startNode();
    },
    async stop() {
      await node?.stop();
      await daemon?.stop();
    },
    logs: () =>
      `--- pglive run log:\n${daemon?.output ?? ""}\n--- pglive relay log:\n${node?.output ?? ""}`,
  });
}

const relay = mode === "relay-node" ? await relayNode() : inProcessRelay();
const step = (what) => console.log(`ok - ${what}`);

// ---- the page's sockets: every frame, as { socket (numbered from 1), way, frame, at } ----
const frames = [];
let sockets = 0;
function keepFrames(page) {
  const parse = (text) => {
    try {
      return JSON.parse(text);
    } catch {
      return undefined;
    }
  };
  page.on("websocket", (ws) => {
    const socket = (sockets += 1);
    const keep = (way) => (f) =>
      frames.push({ socket, way, frame: parse(String(f.payload)), at: Date.now() });
    ws.on("framesent", keep("sent"));
    ws.on("framereceived", keep("received"));
  });
}

/**
 * How the page caught up on the sockets after the first `before`: the `since` it resumed from
 * (and when it sent it), the `resync` frames it got, and whether post `id`'s INSERT came as an
 * event.
 */
function resumption(before, id) {
  const after = frames.filter((f) => f.socket > before);
  const got = after.filter((f) => f.way === "received").map((f) => f.frame);
  const resubscribed = after.find((f) => f.way === "sent" && f.frame?.op === "subscribe");
  const since = resubscribed?.frame.since;
  const resyncs = got.filter((f) => f?.op === "resync").length;
  const replayed = got.some(
    (f) => f?.type === "created" && (f.payload?.ids ?? []).map(String).includes(String(id)),
  );
  const how = [
    since === undefined ? "subscribed without since" : `resumed with since ${since}`,
    replayed ? "the change came as its event" : "no event for it",
    resyncs ? `${resyncs} resync (Refine refetched)` : "no resync",
  ].join("; ");
  const fromHistory = since !== undefined && replayed && !resyncs;
  return { at: resubscribed?.at, fromHistory, how };
}

/**
 * A relay node serves `since` from the history it read from the stream: it replays what the
 * page missed, no resync — whether the page resubscribed before or after the node was ready
 * (a node still reading its history holds the `since` until it has read that far).
 */
function expectReplay(resumed) {
  if (resumed.at === undefined) throw new Error(`the page did not resubscribe: ${resumed.how}`);
  if (!resumed.fromHistory) {
    throw new Error(`the node did not replay the change from history: ${resumed.how}`);
  }
  return `${resumed.how}; resubscribed ${resumed.at - relay.readyAt} ms after the node was ready`;
}

/** Outlives a few tokens: each is renewed on the open socket, none expires on it. */
async function outliveTokens(page) {
  const issued = tokensIssued;
  await waitFor(
    "three token renewals",
    () => tokensIssued >= issued + 3,
    4 * TOKEN_LIFETIME_S * 1000,
  );
  await sql("INSERT INTO posts VALUES (4, 'after three renewals')");
  await page.waitForSelector('#posts li[data-id="4"]', { timeout: WAIT });
  if (sockets !== 1) {
    throw new Error(`${sockets} sockets opened; the connection was not kept through renewals`);
  }
  step("short-lived tokens are renewed on the open socket: one connection throughout");
}

let browser;
let failed = false;
try {
  await createPosts(db);
  await relay.start();
  await listen(api, apiPort);

  browser = await launchChromium();
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  keepFrames(page);
  await page.goto(`http://127.0.0.1:${apiPort}/`);
  await page.waitForSelector('#posts li[data-id="1"]', { timeout: WAIT });
  await page.evaluate(() => (window.__sameDocument = true));

  await sql("INSERT INTO posts VALUES (2, 'second')");
  await page.waitForSelector('#posts li[data-id="2"]', { timeout: WAIT });
  step("an INSERT appears in the list");

  await sql("UPDATE posts SET title = 'first, edited' WHERE id = 1");
  await page.waitForFunction(
    () =>
      document.querySelector('#posts li[data-id="1"]')?.textContent === "first, edited" &&
      document.querySelector("#detail")?.textContent === "first, edited",
    null,
    { timeout: WAIT },
  );
  step("an UPDATE changes the list and the useOne detail");

  await sql("DELETE FROM posts WHERE id = 2");
  await page.waitForSelector('#posts li[data-id="2"]', { state: "detached", timeout: WAIT });
  step("a DELETE removes the row");

  if (mode === "in-process") await outliveTokens(page);

  const before = sockets;
  await relay.restart(() => sql(`INSERT INTO posts VALUES (3, 'while ${relay.what} was down')`));
  await page.waitForSelector('#posts li[data-id="3"]', { timeout: WAIT });
  const resumed = resumption(before, 3);
  const how = mode === "relay-node" ? expectReplay(resumed) : resumed.how;
  step(`a change made while ${relay.what} was down shows up after its restart (${how})`);

  if (!(await page.evaluate(() => window.__sameDocument === true))) {
    throw new Error("the page was reloaded");
  }
  step("all without a reload");
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}\n${relay.logs()}`);
} finally {
  await browser?.close();
  await relay.stop();
  api.close();
  await dropAll(db, NAME);
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
