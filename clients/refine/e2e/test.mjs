// The end-to-end proof: a real Refine app (this directory's Vite build, simple-rest against a
// small REST API over PostgreSQL, @pglive/refine for live updates) in headless Chromium, and
// the real pglive. Rows changed with SQL must show up on the page without a reload, also
// across a pglive crash and restart, with short-lived tokens the provider renews on its open
// socket.
//
//   PGLIVE_BIN=… DATABASE_URL=postgres://…(wal_level=logical) node test.mjs
//
// Every wait is for a condition on the page, with a deadline.
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
  waitFor,
} from "./support.mjs";

const bin = process.env.PGLIVE_BIN;
const dbUrl = process.env.DATABASE_URL;
if (!bin || !dbUrl) throw new Error("set PGLIVE_BIN and DATABASE_URL");
const NAME = "pglive_e2e";

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

// ---- pglive ----
const work = fs.mkdtempSync(path.join(os.tmpdir(), "pglive-e2e-"));
const config = path.join(work, "pglive.toml");
fs.writeFileSync(
  config,
  pgliveConfig(
    dbUrl,
    NAME,
    `[[sinks]]
type = "websocket"
listen = "127.0.0.1:${wsPort}"
jwt_secret = "${SECRET}"
jwt_leeway = "0s"
allowed_origins = ["http://127.0.0.1:${apiPort}"]
`,
  ),
);

let daemon;
const startDaemon = async () =>
  (daemon = await startPglive(bin, config, ["WebSocket relay listening", "streaming"]));

let browser;
let failed = false;
try {
  await createPosts(db);
  await startDaemon();
  await listen(api, apiPort);

  browser = await launchChromium();
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

  await daemon.stop("SIGKILL");
  await sql("INSERT INTO posts VALUES (3, 'while pglive was down')");
  await startDaemon();
  await page.waitForSelector('#posts li[data-id="3"]', { timeout: WAIT });
  step("a change made while pglive was down shows up after its restart");

  if (!(await page.evaluate(() => window.__sameDocument === true))) {
    throw new Error("the page was reloaded");
  }
  step("all without a reload");
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}\n--- pglive log:\n${daemon?.output ?? ""}`);
} finally {
  await browser?.close();
  await daemon?.stop();
  api.close();
  await dropAll(db, NAME);
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
