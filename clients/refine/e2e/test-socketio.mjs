// The end-to-end proof for pglive's redis sink in mode "socketio": a Socket.IO cluster of two
// servers sharing a Redis through @socket.io/redis-adapter, a Refine app in headless Chromium
// whose live provider (src/socketioLiveProvider.js) uses socket.io-client on one of them, and
// a Node socket.io-client on the other. pglive publishes each LiveEvent once to that Redis;
// rows changed with SQL must show up on the page (a useList and a useOne) without a reload,
// and reach the other server's client too; a change published while the page is disconnected
// shows up once it reconnects; after Redis is killed and restarted, changes flow again.
//
//   PGLIVE_BIN=… DATABASE_URL=postgres://…(wal_level=logical) node test-socketio.mjs
//
// With SIO_PUBLISHER=emitter, the test publishes each event itself with the official
// @socket.io/redis-emitter instead of running pglive: the reference for the protocol, to tell
// a fault of the harness from one of pglive. Every wait is for a condition, with a deadline.
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";

import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";
import { io as ioClient } from "socket.io-client";

import { socketIoServer } from "./socketio-server.mjs";
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
  startProcess,
  waitFor,
} from "./support.mjs";

const bin = process.env.PGLIVE_BIN;
const dbUrl = process.env.DATABASE_URL;
const publisher = process.env.SIO_PUBLISHER ?? "pglive";
if (!dbUrl || (publisher === "pglive" && !bin)) throw new Error("set PGLIVE_BIN and DATABASE_URL");
const NAME = "pglive_e2e_sio";
const CHANNEL = "resources/posts";

const db = await connectDb(dbUrl);
const [redisPort, appPort, otherPort] = [await freePort(), await freePort(), await freePort()];
const redisUrl = `redis://127.0.0.1:${redisPort}`;
const work = fs.mkdtempSync(path.join(os.tmpdir(), "pglive-e2e-sio-"));

const startRedis = () =>
  startProcess(
    "redis-server",
    process.env.REDIS_SERVER ?? "redis-server",
    ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    (out) => out.includes("Ready to accept connections"),
  );

function startDaemon() {
  const config = path.join(work, "pglive.toml");
  const sink = `[[sinks]]\ntype = "redis"\nurl = "${redisUrl}"\nmode = "socketio"\n`;
  fs.writeFileSync(config, pgliveConfig(dbUrl, NAME, sink));
  return startPglive(bin, config, ["streaming"]);
}

// The change, made with SQL; with SIO_PUBLISHER=emitter, its event published by the test.
let emitted = 0;
async function change(sql, type, ids) {
  await db.query(sql);
  if (!emitter) return;
  emitted += 1;
  const meta = { id: `emitter:${emitted}`, table: "posts" };
  const event = { channel: CHANNEL, type, payload: { ids }, date: new Date().toISOString(), meta };
  emitter.to(CHANNEL).emit(type, event);
}

/** The client of the other server: every event it receives, as [type, LiveEvent]. */
function otherClient() {
  const client = ioClient(`http://127.0.0.1:${otherPort}`, { transports: ["websocket"] });
  client.received = [];
  client.on("connect", () => client.emit("subscribe", CHANNEL));
  client.onAny((type, event) => client.received.push([type, event]));
  return client;
}

/** How many Redis connections have a pattern subscription (each server's adapter has one). */
async function subscribers() {
  const clients = (await redisClient.sendCommand(["CLIENT", "LIST"])).split("\n");
  return clients.filter((line) => / psub=[1-9]/.test(line)).length;
}
// The page shows `list` ("id:title" of each row) and `detail` (post 2's title).
const shown = ([list, detail]) => {
  const rows = [...document.querySelectorAll("#posts li")];
  const texts = rows.map((li) => `${li.dataset.id}:${li.textContent}`);
  return texts.join() === list.join() && document.querySelector("#detail")?.textContent === detail;
};
const shows = (page, list, detail) =>
  page.waitForFunction(shown, [list, detail], { timeout: WAIT }).catch(async () => {
    const now = await page.evaluate(() => document.querySelector("#root").innerText);
    throw new Error(`the page never showed ${list} and ${detail}; it shows:\n${now}`);
  });

/** The other server's client got these events (`type:ids`), each named by its type. */
async function otherClientGot(expected) {
  const got = () =>
    client.received.map(([name, e]) => `${name === e.type ? name : "?"}:${JSON.stringify(e.payload.ids)}`);
  await waitFor(`the other server's client to get ${expected}`, () => got().length >= expected.length);
  const ok = client.received.every(([, e]) => e.channel === CHANNEL && e.meta?.id);
  if (got().join() !== expected.join() || !ok) {
    throw new Error(`the other server's client got ${JSON.stringify(client.received)}`);
  }
}

const bothSubscribed = () =>
  waitFor("both servers' subscriptions to Redis", async () => (await subscribers()) >= 2);
const inRoom = (server) => server.io.of("/").adapter.rooms.get(CHANNEL)?.size ?? 0;

let redis, redisClient, emitter, daemon, browser, client;
const servers = [];
let failed = false;
try {
  redis = await startRedis();
  redisClient = createClient({ url: redisUrl }).on("error", () => {});
  await redisClient.connect();
  await createPosts(db);

  // The cluster: one server in the app's backend (the page's origin), one on its own port.
  const app = appServer(db);
  const other = http.createServer();
  const quiet = () => {}; // Redis is restarted on purpose below
  servers.push(
    await socketIoServer(app, redisUrl, quiet),
    await socketIoServer(other, redisUrl, quiet),
  );
  await listen(app, appPort);
  await listen(other, otherPort);
  await bothSubscribed();

  if (publisher === "emitter") emitter = new Emitter(redisClient);
  else daemon = await startDaemon();

  browser = await launchChromium();
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`http://127.0.0.1:${appPort}/socketio.html`);
  await shows(page, ["1:first"], "(none)");
  client = otherClient();
  await waitFor("a room on each server", () => inRoom(servers[0]) > 0 && inRoom(servers[1]) > 0);
  await page.evaluate(() => (window.__sameDocument = true));
  const step = (what) => console.log(`ok - ${what}`);

  await change("INSERT INTO posts VALUES (2, 'second')", "created", [2]);
  await shows(page, ["1:first", "2:second"], "second");
  step("an INSERT appears in the useList and the useOne");

  await change("UPDATE posts SET title = 'second, edited' WHERE id = 2", "updated", [2]);
  await shows(page, ["1:first", "2:second, edited"], "second, edited");
  step("an UPDATE changes the useList and the useOne");

  await change("DELETE FROM posts WHERE id = 2", "deleted", [2]);
  await shows(page, ["1:first"], "(none)");
  step("a DELETE removes the row from the useList and the useOne");

  const three = ["created:[2]", "updated:[2]", "deleted:[2]"];
  await otherClientGot(three);
  step("the other server's client got the same LiveEvents, one Socket.IO event per LiveEvent");

  servers[0].io.local.disconnectSockets(true);
  await waitFor("the page's socket to be dropped", () => inRoom(servers[0]) === 0);
  await change("INSERT INTO posts VALUES (3, 'while away')", "created", [3]);
  await otherClientGot([...three, "created:[3]"]);
  await page.evaluate(() => window.__socket.connect());
  await shows(page, ["1:first", "3:while away"], "(none)");
  step("a change published while the page was disconnected shows up once it reconnects");

  await redis.stop("SIGKILL");
  redis = await startRedis();
  await bothSubscribed();
  await change("INSERT INTO posts VALUES (4, 'after a restart')", "created", [4]);
  await shows(page, ["1:first", "3:while away", "4:after a restart"], "(none)");
  await otherClientGot([...three, "created:[3]", "created:[4]"]);
  step("Redis restarted: the servers subscribe again, pglive reconnects, changes flow again");

  if (!(await page.evaluate(() => window.__sameDocument === true))) {
    throw new Error("the page was reloaded");
  }
  step("all without a reload");
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}\n--- pglive log:\n${daemon?.output ?? ""}`);
} finally {
  await browser?.close();
  client?.close();
  await daemon?.stop();
  for (const server of servers) await server.close().catch(() => {});
  await redisClient?.quit().catch(() => {});
  await redis?.stop();
  await dropAll(db, NAME);
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
