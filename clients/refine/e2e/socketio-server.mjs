// A Socket.IO server as an application runs it in a cluster: its instances share a Redis
// through @socket.io/redis-adapter, so an event published to that Redis (by another instance,
// by @socket.io/redis-emitter, or by pglive's redis sink in mode "socketio") reaches the
// sockets of a room on every instance. Clients ask for rooms by channel.
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

/**
 * Attaches a Socket.IO server to `httpServer`; `close()` ends it and its Redis clients, which
 * reconnect (and subscribe again) on their own, calling `onRedisError` for each failure.
 */
export async function socketIoServer(httpServer, redisUrl, onRedisError = console.error) {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) client.on("error", onRedisError);
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub) });
  io.on("connection", (socket) => {
    socket.on("subscribe", (channel) => {
      // The place to authorise: may this socket's user see `channel`?
      if (typeof channel === "string" && channel.startsWith("resources/")) socket.join(channel);
    });
    socket.on("unsubscribe", (channel) => socket.leave(channel));
  });
  const close = async () => {
    await io.close();
    await Promise.all([pub.quit(), sub.quit()]);
  };
  return { io, close };
}
