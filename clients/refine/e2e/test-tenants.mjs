// Tenant channels in a real Refine app (tenants.html) in headless Chromium against the real
// pglive: two organisations, each user in a browser context of their own with a token that
// grants only their organisation's channels (`tenants/<org>/*`). pglive routes each row of
// `notes` to `tenants/{org_id}/resources/notes` with its row (`payload = "row"`). Each page
// must show its own organisation's inserts, updates and deletes and nothing of the other's;
// the `manual`-mode page must show the rows the events carry without fetching the list again.
//
//   PGLIVE_BIN=… DATABASE_URL=postgres://…(wal_level=logical) node test-tenants.mjs
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
  freePort,
  launchChromium,
  listen,
  startPglive,
  waitFor,
} from "./support.mjs";

const bin = process.env.PGLIVE_BIN;
const dbUrl = process.env.DATABASE_URL;
if (!bin || !dbUrl) throw new Error("set PGLIVE_BIN and DATABASE_URL");
const NAME = "pglive_e2e_tenants";
const db = await connectDb(dbUrl);
const sql = (text, values) => db.query(text, values);
const step = (what) => console.log(`ok - ${what}`);

// ---- the backend: tokens for the user's organisation only, and its notes ----
const SECRET = crypto.randomBytes(32).toString("hex");
function issueToken(url) {
  const org = url.searchParams.get("org");
  if (!/^[0-9]+$/.test(org ?? "")) throw new Error(`no organisation: ${url}`);
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000) + 600;
  const claims = { channels: [`tenants/${org}/*`], exp };
  const body = `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}`;
  return `${body}.${crypto.createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}
/** GET /api/notes?org_id=…&view=… requests, by "<org> <view>" (the page's mode). */
const listFetches = new Map();
const fetches = (key) => listFetches.get(key) ?? 0;
async function serveNotes(url, res) {
  if (url.pathname !== "/api/notes") return false;
  const org = url.searchParams.get("org_id");
  const key = `${org} ${url.searchParams.get("view")}`;
  listFetches.set(key, fetches(key) + 1);
  const { rows } = await db.query(
    "SELECT id, org_id, title FROM notes WHERE org_id = $1 ORDER BY id",
    [org],
  );
  res.writeHead(200, {
    "content-type": "application/json",
    "x-total-count": String(rows.length),
    "access-control-expose-headers": "x-total-count",
  });
  res.end(JSON.stringify(rows));
  return true;
}

const wsPort = await freePort();
const apiPort = await freePort();
const api = appServer(db, {
  routes: { "/api/token": issueToken },
  api: serveNotes,
  headScript: () => `window.PGLIVE_WS_PORT=${wsPort}`,
});

const work = fs.mkdtempSync(path.join(os.tmpdir(), "pglive-e2e-tenants-"));
const config = path.join(work, "pglive.toml");
fs.writeFileSync(
  config,
  `[postgres]
url = "${dbUrl}"
slot = "${NAME}"
publication = "${NAME}"
status_interval = "1s"
[[tables]]
name = "notes"
channel = "tenants/{org_id}/resources/notes"
payload = "row"
[[sinks]]
type = "websocket"
listen = "127.0.0.1:${wsPort}"
jwt_secret = "${SECRET}"
allowed_origins = ["http://127.0.0.1:${apiPort}"]
`,
  { mode: 0o600 },
);

/** The texts of the page's `selector` items. */
const texts = (page, selector) =>
  page.$$eval(selector, (items) => items.map((i) => i.textContent));

async function expectTexts(page, selector, want, what) {
  const same = async () => JSON.stringify(await texts(page, selector)) === JSON.stringify(want);
  try {
    await waitFor(what, same);
  } catch (e) {
    throw new Error(`${e.message}: the page shows ${JSON.stringify(await texts(page, selector))}, expected ${JSON.stringify(want)}`);
  }
}

let browser;
let pglive;
let failed = false;
try {
  await sql("DROP TABLE IF EXISTS notes");
  await sql(
    "CREATE TABLE notes (id int PRIMARY KEY, org_id int NOT NULL, title text NOT NULL)",
  );
  // Deletes must say whose row it was: the template's column in the replica identity.
  await sql("ALTER TABLE notes REPLICA IDENTITY FULL");
  await sql("INSERT INTO notes VALUES (1, 42, 'first of 42'), (2, 7, 'first of 7')");
  pglive = await startPglive(bin, config, ["WebSocket relay listening", "streaming"]);
  await listen(api, apiPort);

  browser = await launchChromium();
  const pages = {};
  const subscribed = new Set();
  for (const org of ["42", "7"]) {
    // A browser context per user: their own storage, their own token.
    const context = await browser.newContext();
    for (const mode of ["auto", "manual"]) {
      const key = `${org} ${mode}`;
      const page = await context.newPage();
      page.on("pageerror", (e) => console.error(`page error (${key}):`, e.message));
      page.on("websocket", (ws) =>
        ws.on("framereceived", (f) => {
          if (String(f.payload).includes('"op":"subscribed"')) subscribed.add(key);
        }),
      );
      await page.goto(`http://127.0.0.1:${apiPort}/tenants.html?org=${org}&mode=${mode}`);
      pages[key] = page;
    }
  }
  await expectTexts(pages["42 auto"], "#notes li", ["first of 42"], "42's list");
  await expectTexts(pages["7 auto"], "#notes li", ["first of 7"], "7's list");
  await pages["42 manual"].waitForSelector("#events", { state: "attached", timeout: WAIT });
  await pages["7 manual"].waitForSelector("#events", { state: "attached", timeout: WAIT });
  // Every page has subscribed before the changes are made.
  await waitFor("every page to subscribe", () => subscribed.size === 4);
  const fetchesBefore = new Map(listFetches);

  await sql("INSERT INTO notes VALUES (3, 42, 'second of 42')");
  await sql("UPDATE notes SET title = 'first of 7, edited' WHERE id = 2");
  await sql("DELETE FROM notes WHERE id = 1");
  await sql("INSERT INTO notes VALUES (4, 7, 'second of 7')");

  await expectTexts(pages["42 auto"], "#notes li", ["second of 42"], "42's list after the changes");
  await expectTexts(
    pages["7 auto"],
    "#notes li",
    ["first of 7, edited", "second of 7"],
    "7's list after the changes",
  );
  step("each organisation's list shows its own inserts, updates and deletes");

  await expectTexts(
    pages["42 manual"],
    "#events li",
    ['created [3] second of 42', 'deleted [1] -'],
    "42's live events",
  );
  await expectTexts(
    pages["7 manual"],
    "#events li",
    ['updated [2] first of 7, edited', 'created [4] second of 7'],
    "7's live events",
  );
  step("manual mode: each organisation's page gets its own events only, with the rows they carry");

  // The auto pages refetched their lists; the manual pages showed the rows without fetching.
  for (const org of ["42", "7"]) {
    const since = (key) => fetches(key) - (fetchesBefore.get(key) ?? 0);
    if (since(`${org} auto`) < 1 || since(`${org} manual`) !== 0) {
      throw new Error(
        `organisation ${org}: the auto page fetched ${since(`${org} auto`)} times, the manual page ${since(`${org} manual`)} times after the events (expected at least 1, and 0)`,
      );
    }
  }
  step("the manual pages rendered payload.data without a refetch (the auto pages refetched)");

  // A token for 42 cannot open 7's channel.
  const refused = await pages["42 manual"].evaluate(
    async ([port, token]) =>
      new Promise((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/live?token=${token}`);
        ws.onopen = () => ws.send(JSON.stringify({ op: "subscribe", channel: "tenants/7/resources/notes" }));
        ws.onmessage = (m) => {
          resolve(JSON.parse(m.data));
          ws.close();
        };
      }),
    [wsPort, issueToken(new URL("http://x/?org=42"))],
  );
  if (refused.code !== "forbidden") {
    throw new Error(`42's token subscribing to 7's channel got ${JSON.stringify(refused)}`);
  }
  step("a token for one organisation is refused another's channel");
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}\n--- pglive log:\n${pglive?.output ?? ""}`);
} finally {
  await browser?.close();
  await pglive?.stop();
  api.close();
  await sql("DROP TABLE IF EXISTS notes").catch(() => {});
  await sql(
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    [NAME],
  ).catch(() => {});
  await sql(`DROP PUBLICATION IF EXISTS ${NAME}`).catch(() => {});
  await db.end();
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
