// The end-to-end proof: a real Refine app (this directory's Vite build, simple-rest against a
// small REST API over PostgreSQL, @pglive/refine for live updates) in headless Chromium, and
// the real pglive. Rows changed with SQL must show up on the page without a reload, also
// across a pglive crash and restart, with short-lived tokens the provider renews on its open
// socket.
//
//   PGLIVE_BIN=… DATABASE_URL=postgres://…(wal_level=logical) node test.mjs
//
// Every wait is for a condition on the page, with a deadline.
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import pg from "pg";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const bin = process.env.PGLIVE_BIN;
const dbUrl = process.env.DATABASE_URL;
if (!bin || !dbUrl) throw new Error("set PGLIVE_BIN and DATABASE_URL");
const WAIT = 30_000;

const db = new pg.Client({ connectionString: dbUrl });
await db.connect();
const sql = (text, values) => db.query(text, values);

const freePort = () =>
  new Promise((resolve) => {
    const s = http.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

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

// ---- the REST API simple-rest expects, and the built app ----
const dist = path.join(here, "dist");
const api = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://x");
    const one = url.pathname.match(/^\/api\/posts\/(\d+)$/);
    if (url.pathname === "/api/token") {
      res.writeHead(200, { "content-type": "text/plain" });
      return res.end(issueToken());
    }
    if (url.pathname === "/api/posts") {
      const start = Number(url.searchParams.get("_start") ?? 0);
      const end = Number(url.searchParams.get("_end") ?? 1000);
      const { rows } = await sql("SELECT id, title FROM posts ORDER BY id");
      res.writeHead(200, {
        "content-type": "application/json",
        "x-total-count": String(rows.length),
        "access-control-expose-headers": "x-total-count",
      });
      return res.end(JSON.stringify(rows.slice(start, end)));
    }
    if (one) {
      const { rows } = await sql("SELECT id, title FROM posts WHERE id = $1", [one[1]]);
      res.writeHead(rows.length ? 200 : 404, { "content-type": "application/json" });
      return res.end(JSON.stringify(rows[0] ?? {}));
    }
    const file = path.join(dist, url.pathname === "/" ? "index.html" : url.pathname);
    if (!file.startsWith(dist) || !fs.existsSync(file)) {
      res.writeHead(404);
      return res.end();
    }
    let body = fs.readFileSync(file);
    if (file.endsWith(".html")) {
      body = body
        .toString()
        .replace("<head>", `<head><script>window.PGLIVE_WS_PORT=${wsPort}</script>`);
    }
    const type = file.endsWith(".js") ? "text/javascript" : "text/html";
    res.writeHead(200, { "content-type": type });
    res.end(body);
  } catch (e) {
    res.writeHead(500);
    res.end(String(e));
  }
});

// ---- pglive ----
const wsPort = await freePort();
const apiPort = await freePort();
const work = fs.mkdtempSync(path.join(os.tmpdir(), "pglive-e2e-"));
const config = path.join(work, "pglive.toml");
fs.writeFileSync(
  config,
  `[postgres]
url = "${dbUrl}"
slot = "pglive_e2e"
publication = "pglive_e2e"
status_interval = "1s"
[[tables]]
name = "posts"
[[sinks]]
type = "websocket"
listen = "127.0.0.1:${wsPort}"
jwt_secret = "${SECRET}"
jwt_leeway = "0s"
allowed_origins = ["http://127.0.0.1:${apiPort}"]
`,
);

let daemon;
let log = "";
function startPglive() {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ["run", "-c", config], { stdio: ["ignore", "ignore", "pipe"] });
    const timer = setTimeout(() => reject(new Error(`pglive did not start:\n${log}`)), WAIT);
    child.stderr.on("data", (d) => {
      log += d;
      if (log.includes("WebSocket relay listening") && log.includes("streaming")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code) => reject(new Error(`pglive exited with ${code}:\n${log}`)));
  });
}

function stopPglive(signal) {
  return new Promise((resolve) => {
    if (!daemon || daemon.exitCode !== null) return resolve();
    daemon.once("exit", () => resolve());
    daemon.kill(signal);
  });
}

let browser;
let failed = false;
try {
  await sql("DROP TABLE IF EXISTS posts");
  await sql("CREATE TABLE posts (id int PRIMARY KEY, title text NOT NULL)");
  await sql("INSERT INTO posts VALUES (1, 'first')");
  log = "";
  daemon = await startPglive();
  await new Promise((r) => api.listen(apiPort, "127.0.0.1", r));

  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  let sockets = 0;
  page.on("websocket", () => (sockets += 1));
  await page.goto(`http://127.0.0.1:${apiPort}/`);
  await page.waitForSelector('#posts li[data-id="1"]', { timeout: WAIT });
  await page.evaluate(() => (window.__sameDocument = true));
  const step = (what) => console.log(`ok - ${what}`);

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

  // Outlive a few tokens: each is renewed on the open socket, none expires on it.
  const issued = tokensIssued;
  const renewed = () => tokensIssued >= issued + 3;
  for (const deadline = Date.now() + 4 * TOKEN_LIFETIME_S * 1000; !renewed(); ) {
    if (Date.now() > deadline) throw new Error(`tokens issued: ${tokensIssued}, not renewed`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await sql("INSERT INTO posts VALUES (4, 'after three renewals')");
  await page.waitForSelector('#posts li[data-id="4"]', { timeout: WAIT });
  if (sockets !== 1) {
    throw new Error(`${sockets} sockets opened; the connection was not kept through renewals`);
  }
  step("short-lived tokens are renewed on the open socket: one connection throughout");

  await stopPglive("SIGKILL");
  await sql("INSERT INTO posts VALUES (3, 'while pglive was down')");
  log = "";
  daemon = await startPglive();
  await page.waitForSelector('#posts li[data-id="3"]', { timeout: WAIT });
  step("a change made while pglive was down shows up after its restart");

  if (!(await page.evaluate(() => window.__sameDocument === true))) {
    throw new Error("the page was reloaded");
  }
  step("all without a reload");
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}\n--- pglive log:\n${log}`);
} finally {
  await browser?.close();
  await stopPglive("SIGTERM");
  api.close();
  await sql("DROP TABLE IF EXISTS posts").catch(() => {});
  await sql(
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'pglive_e2e'",
  ).catch(() => {});
  await sql("DROP PUBLICATION IF EXISTS pglive_e2e").catch(() => {});
  await db.end();
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
