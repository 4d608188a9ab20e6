// A Refine live provider for pglive's WebSocket relay.
//
//   import { liveProvider } from "@pglive/refine";
//   <Refine liveProvider={liveProvider({ url: "ws://localhost:8080/live", token })}
//           options={{ liveMode: "auto" }} … />
//
// One socket for every subscription, reference-counted per channel. Reconnects with backoff
// and resumes each channel from the last event it saw (`since`); when pglive no longer holds
// those events it answers `resync`, which is passed on as an event without ids so that Refine
// refetches. pglive closes a connection when its token expires: with `token` as a function,
// the provider asks it for a fresh token before then and hands it over on the open socket
// (`{"op":"auth"}`), so subscriptions go on uninterrupted. No `publish`: changes come from
// the database.

/** The event shape Refine's `LiveEvent` has (structurally compatible with @refinedev/core). */
export type LiveEvent = {
  channel: string;
  type: "deleted" | "updated" | "created" | "*" | string;
  payload: { ids?: (string | number)[]; [x: string]: any };
  date: Date;
  meta?: { [x: string]: any; dataProviderName?: string };
};

type SubscribeOptions = {
  channel: string;
  types: string[];
  callback: (event: LiveEvent) => void;
  params?: { ids?: (string | number)[]; [x: string]: any };
  meta?: { [x: string]: any };
};

/** A subscription handle, as `subscribe` returns it. */
export type Subscription = {
  /** Refine's channel (`resources/posts`). */
  channel: string;
  /** Where it is on the relay (see `PgliveOptions.channel`). */
  relayChannel: string;
  types: string[];
  ids: string[];
  callback: (event: LiveEvent) => void;
};

/** The minimal WebSocket this provider needs (the browser's, or a test double). */
export interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export type PgliveOptions = {
  /** The relay, e.g. `ws://localhost:8080/live`. */
  url: string;
  /** A JWT whose `channels` claim covers the resources, or a function returning one: called at
   * each connection, and again before the current token's `exp` to renew it on the open
   * socket. A fixed string cannot be renewed: the relay closes the socket at its `exp`. Omit
   * for an anonymous relay. */
  token?: string | (() => string | Promise<string>);
  /** Renew this long before the token's `exp` (at most half its remaining lifetime).
   * Default 60 s. */
  renewBeforeMs?: number;
  /** Reconnection delay: starts at `initialMs` and doubles up to `maxMs` (with jitter). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Errors the relay reports (`forbidden`, …). Default: console.warn. */
  onError?: (error: { channel?: string; code: string; message: string }) => void;
  /** This tab's id, when its API writes it into the transaction
   * (`SELECT pg_logical_emit_message(true, 'pglive.origin', '<id>')`): events whose
   * `meta.origin` is this id are not passed on, since the mutation that caused them already
   * refreshed this tab. Other tabs and users still get them. */
  origin?: string;
  /** Where Refine's channel (`resources/posts`) is on the relay, for tenant channels:
   * `(c) => \`tenants/${orgId}/${c}\``. Events reach the subscription under Refine's
   * channel name. Default: the same name. */
  channel?: (channel: string) => string;
  /** Another WebSocket implementation (tests, Node). Default: the global one. */
  WebSocket?: new (url: string) => SocketLike;
};

export type PgliveLiveProvider = {
  subscribe: (options: SubscribeOptions) => Subscription;
  unsubscribe: (subscription: Subscription) => void;
  /** Closes the socket for good. */
  close: () => void;
};

const OPEN = 1;
/** The longest a timer can wait (2^31 − 1 ms); longer waits are chained. */
const MAX_TIMER = 2_147_483_647;
/** Renewals come at most this often when the token function hands out the same token. */
const MIN_RENEW_GAP = 1_000;

/** A JWT's `exp` in milliseconds since 1970, if it has one. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

type Channel = { subs: Set<Subscription>; lastId?: string };

/** A value as pglive writes it into a segment of a channel template (`tenants/{org_id}/…`):
 * ASCII letters, digits, `_` and `-` as they are, every other UTF-8 byte as `=XX`, nothing
 * (null, undefined, "") as `=`. Pass PostgreSQL's text of the value (numbers and UUIDs are
 * the same as in JavaScript). */
export function channelSegment(value: unknown): string {
  if (value === null || value === undefined || value === "") return "=";
  let out = "";
  for (const b of new TextEncoder().encode(String(value))) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9_-]/.test(c) ? c : `=${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

export function liveProvider(options: PgliveOptions): PgliveLiveProvider {
  const initial = options.backoff?.initialMs ?? 500;
  const max = options.backoff?.maxMs ?? 10_000;
  const Socket = options.WebSocket ?? (globalThis as any).WebSocket;
  const onError =
    options.onError ?? ((e) => console.warn(`pglive: ${e.code} ${e.channel ?? ""}: ${e.message}`));
  const channels = new Map<string, Channel>();
  let socket: SocketLike | undefined;
  let delay = initial;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;
  // A connection is being set up (the token may be awaited): do not start another.
  let connecting = false;
  const renewBefore = options.renewBeforeMs ?? 60_000;
  let renewal: ReturnType<typeof setTimeout> | undefined;

  const getToken = async () =>
    typeof options.token === "function" ? await options.token() : (options.token as string);

  const stopRenewal = () => {
    if (renewal) clearTimeout(renewal);
    renewal = undefined;
  };

  // Runs `then` after `ms`, also beyond what one timer can wait (about 24.8 days).
  const after = (ms: number, then: () => void) => {
    const wait = Math.min(Math.max(ms, 0), MAX_TIMER);
    renewal = setTimeout(() => (wait < ms ? after(ms - wait, then) : then()), wait);
  };

  // Before the token on `ws` expires (at `exp`), ask for a fresh one and send it (only a
  // function can give a fresh token).
  const scheduleRenewal = (ws: SocketLike, exp: number | undefined) => {
    stopRenewal();
    if (exp === undefined || typeof options.token !== "function") return;
    const left = exp - Date.now();
    after(left - Math.min(renewBefore, left / 2), () => void renew(ws, exp));
  };

  const renew = async (ws: SocketLike, current: number) => {
    renewal = undefined;
    let token: string;
    try {
      token = await getToken();
    } catch (e) {
      // The relay closes the socket at expiry; the reconnection asks again.
      onError({ code: "token", message: String(e) });
      return;
    }
    if (socket !== ws || closed) return;
    const exp = tokenExpiry(token);
    if (exp !== undefined && exp <= current) {
      // Not fresher (a cached token): ask again a little later, while the current one holds.
      const left = current - Date.now();
      if (left > MIN_RENEW_GAP) after(Math.max(MIN_RENEW_GAP, left / 4), () => void renew(ws, current));
      return;
    }
    send({ op: "auth", token });
    scheduleRenewal(ws, exp);
  };

  const send = (message: object) => {
    if (socket?.readyState === OPEN) socket.send(JSON.stringify(message));
  };

  const subscribeFrame = (name: string, channel: Channel) =>
    channel.lastId === undefined
      ? { op: "subscribe", channel: name }
      : { op: "subscribe", channel: name, since: channel.lastId };

  const connect = async () => {
    timer = undefined;
    if (closed || socket || connecting || channels.size === 0) return;
    connecting = true;
    let url = options.url;
    let token: string | undefined;
    try {
      if (options.token !== undefined) {
        token = await getToken();
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      }
    } catch (e) {
      onError({ code: "token", message: String(e) });
      connecting = false;
      return retry();
    }
    connecting = false;
    if (closed || socket) return;
    const ws: SocketLike = new Socket(url);
    socket = ws;
    ws.onopen = () => {
      delay = initial;
      for (const [name, channel] of channels) send(subscribeFrame(name, channel));
      if (token !== undefined) scheduleRenewal(ws, tokenExpiry(token));
    };
    ws.onmessage = (ev) => receive(String(ev.data));
    ws.onerror = () => {};
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = undefined;
      stopRenewal();
      retry();
    };
  };

  const retry = () => {
    if (closed || channels.size === 0 || timer) return;
    // Jitter spreads the reconnections of many clients after a restart.
    const wait = delay / 2 + Math.random() * (delay / 2);
    delay = Math.min(delay * 2, max);
    timer = setTimeout(connect, wait);
  };

  const deliver = (channel: Channel, event: LiveEvent) => {
    for (const sub of channel.subs) {
      // A "*" event (a resync, or pglive's refetch signal after a slot was recreated) means
      // "refetch everything": every subscriber takes it, whatever types it asked for.
      if (event.type !== "*" && !sub.types.includes("*") && !sub.types.includes(event.type)) {
        continue;
      }
      // An empty list does not filter; created events and events without ids always pass.
      const ids = event.payload?.ids;
      if (sub.ids.length > 0 && event.type !== "created" && ids !== undefined) {
        if (!ids.some((id) => sub.ids.includes(String(id)))) continue;
      }
      sub.callback(event.channel === sub.channel ? event : { ...event, channel: sub.channel });
    }
  };

  const receive = (text: string) => {
    let frame: any;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const channel = channels.get(frame.channel);
    if (frame.op !== undefined) {
      if (frame.op === "error") onError(frame);
      if (frame.op === "resync" && channel) {
        // Events were missed: an event without ids makes Refine refetch the resource.
        deliver(channel, {
          channel: frame.channel,
          type: "*",
          payload: {},
          date: new Date(),
          meta: { resync: true },
        });
      }
      return;
    }
    if (!channel) return;
    if (frame.meta?.id !== undefined) channel.lastId = frame.meta.id;
    // Our own change: the mutation refreshed this tab already (still counted for `since`).
    if (options.origin !== undefined && frame.meta?.origin === options.origin) return;
    deliver(channel, { ...frame, date: new Date(frame.date) });
  };

  return {
    subscribe: ({ channel: refineChannel, types, callback, params }) => {
      const name = options.channel ? options.channel(refineChannel) : refineChannel;
      const sub: Subscription = {
        channel: refineChannel,
        relayChannel: name,
        types: types ?? ["*"],
        ids: (params?.ids ?? []).map(String),
        callback,
      };
      let channel = channels.get(name);
      if (!channel) {
        channel = { subs: new Set() };
        channels.set(name, channel);
        if (socket) send(subscribeFrame(name, channel));
        else if (!timer && !connecting) void connect();
      }
      channel.subs.add(sub);
      return sub;
    },
    unsubscribe: (sub) => {
      const channel = channels.get(sub.relayChannel);
      if (!channel || !channel.subs.delete(sub) || channel.subs.size > 0) return;
      channels.delete(sub.relayChannel);
      send({ op: "unsubscribe", channel: sub.relayChannel });
    },
    close: () => {
      closed = true;
      if (timer) clearTimeout(timer);
      stopRenewal();
      socket?.close(1000);
      socket = undefined;
    },
  };
}
