// What the browser tests share: a PostgreSQL client, free ports, the small REST API that
// simple-rest expects (over a `posts` table) serving the built app too, pglive (a source, or a
// relay node) and other servers started as child processes that are ready once their log
// says so, Debian's Chromium, and the clean-up of the table, slot and publication.
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

import pg from "pg";
import { chromium } from "playwright-core";

export const WAIT = 30_000;
const dist = path.join(path.dirname(fileURLToPath(import.meta.url)), "dist");

export async function connectDb(url) {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  return db;
}

export const freePort = () =>
  new Promise((resolve) => {
    const s = http.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

/** `posts` as simple-rest reads it: GET /api/posts (with `x-total-count`), GET /api/posts/:id. */
async function servePosts(db, url, res) {
  const one = url.pathname.match(/^\/api\/posts\/(\d+)$/);
  if (url.pathname === "/api/posts") {
    const start = Number(url.searchParams.get("_start") ?? 0);
    const end = Number(url.searchParams.get("_end") ?? 1000);
    const { rows } = await db.query("SELECT id, title FROM posts ORDER BY id");
    res.writeHead(200, {
      "content-type": "application/json",
      "x-total-count": String(rows.length),
      "access-control-expose-headers": "x-total-count",
    });
    res.end(JSON.stringify(rows.slice(start, end)));
    return true;
  }
  if (one) {
    const { rows } = await db.query("SELECT id, title FROM posts WHERE id = $1", [one[1]]);
    res.writeHead(rows.length ? 200 : 404, { "content-type": "application/json" });
    res.end(JSON.stringify(rows[0] ?? {}));
    return true;
  }
  return false;
}

/** A file of the Vite build; `headScript()` is put at the start of each HTML page's head. */
function serveBuilt(url, res, headScript) {
  const file = path.join(dist, url.pathname === "/" ? "index.html" : url.pathname);
  if (!file.startsWith(dist) || !fs.existsSync(file)) {
    res.writeHead(404);
    return res.end();
  }
  let body = fs.readFileSync(file);
  if (file.endsWith(".html")) {
    body = body.toString().replace("<head>", `<head><script>${headScript()}</script>`);
  }
  res.writeHead(200, { "content-type": file.endsWith(".js") ? "text/javascript" : "text/html" });
  res.end(body);
}

/**
 * The application's backend: `routes` first (path → (url) => text), then `api` (url, res →
 * whether it answered), then the posts API, then the built app.
 */
export function appServer(db, { routes = {}, api = async () => false, headScript = () => "" } = {}) {
  return http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, "http://x");
      const route = routes[url.pathname];
      if (route) {
        res.writeHead(200, { "content-type": "text/plain" });
        return res.end(route(url));
      }
      if (await api(url, res)) return;
      if (await servePosts(db, url, res)) return;
      serveBuilt(url, res, headScript);
    } catch (e) {
      res.writeHead(500);
      res.end(String(e));
    }
  });
}

export const listen = (server, port) =>
  new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));

/**
 * A child process whose output (stdout and stderr) is kept; resolves once `ready(output)`
 * holds, rejects if it exits first or not within WAIT. `stop(signal)` resolves when it exited.
 */
export function startProcess(name, command, args, ready) {
  const proc = { output: "", child: undefined };
  proc.stop = (signal = "SIGTERM") =>
    new Promise((resolve) => {
      const { child } = proc;
      if (!child || child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill(signal);
    });
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    proc.child = child;
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${proc.output}`)), WAIT);
    const collect = (d) => {
      proc.output += d;
      if (ready(proc.output)) {
        clearTimeout(timer);
        resolve(proc);
      }
    };
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    child.on("error", (e) => reject(new Error(`${name} did not start: ${e.message}`)));
    child.on("exit", (code) => reject(new Error(`${name} exited with ${code}:\n${proc.output}`)));
  });
}

/** pglive with `config` (a file), ready once its log holds every line of `lines`. */
export const startPglive = (bin, config, lines) =>
  startProcess("pglive", bin, ["run", "-c", config], (out) => lines.every((l) => out.includes(l)));

/**
 * `pglive relay` with `config` (a file): a relay node, returned once it serves WebSockets and
 * its `readyz` URL (the ops listener's /readyz) answers 200: caught up with the stream.
 */
export async function startRelayNode(bin, config, readyz) {
  const node = await startProcess("pglive relay", bin, ["relay", "-c", config], (out) =>
    out.includes("WebSocket relay listening"),
  );
  const ready = async () => (await fetch(readyz).catch(() => undefined))?.status === 200;
  try {
    await waitFor(`${readyz} to answer 200`, ready);
  } catch (e) {
    await node.stop();
    throw new Error(`${e.message}; the relay node's log:\n${node.output}`);
  }
  return node;
}

export const launchChromium = () =>
  chromium.launch({
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

/** Waits, within `timeout`, for `condition()` (which may be async) to hold. */
export async function waitFor(what, condition, timeout = WAIT) {
  for (const deadline = Date.now() + timeout; !(await condition()); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** pglive's configuration for the `posts` table with `name` as slot and publication. */
export const pgliveConfig = (dbUrl, name, sinks) => `[postgres]
url = "${dbUrl}"
slot = "${name}"
publication = "${name}"
status_interval = "1s"
[[tables]]
name = "posts"
${sinks}`;

/** A fresh `posts` table holding `(1, 'first')`. */
export async function createPosts(db) {
  await db.query("DROP TABLE IF EXISTS posts");
  await db.query("CREATE TABLE posts (id int PRIMARY KEY, title text NOT NULL)");
  await db.query("INSERT INTO posts VALUES (1, 'first')");
}

/** Drops the table, and the slot and publication named `name`; closes the client. */
export async function dropAll(db, name) {
  await db.query("DROP TABLE IF EXISTS posts").catch(() => {});
  await db
    .query(
      "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
      [name],
    )
    .catch(() => {});
  await db.query(`DROP PUBLICATION IF EXISTS ${name}`).catch(() => {});
  await db.end();
}
