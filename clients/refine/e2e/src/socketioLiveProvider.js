// A Refine live provider on Socket.IO: one room per channel ("resources/posts"), whose
// events carry the LiveEvent (named by its type). The server joins a socket to a room when it
// asks ("subscribe"). Rooms do not outlive a connection and nothing is replayed, so on every
// reconnect the provider asks for its rooms again and has Refine refetch (an event of type
// "*" without ids).
export function socketIoLiveProvider(socket) {
  const subscriptions = new Set();
  const rooms = () => new Set([...subscriptions].map((s) => s.channel));
  let connectedBefore = false;
  socket.on("connect", () => {
    rooms().forEach((channel) => socket.emit("subscribe", channel));
    if (connectedBefore) {
      const date = new Date();
      subscriptions.forEach((s) => s.callback({ channel: s.channel, type: "*", payload: {}, date }));
    }
    connectedBefore = true;
  });
  return {
    subscribe({ channel, types, callback }) {
      const listener = (_name, event) => {
        if (event?.channel === channel && (types.includes("*") || types.includes(event.type))) {
          callback(event);
        }
      };
      if (!rooms().has(channel) && socket.connected) socket.emit("subscribe", channel);
      const subscription = { channel, callback, listener };
      subscriptions.add(subscription);
      socket.onAny(listener);
      return subscription;
    },
    unsubscribe(subscription) {
      socket.offAny(subscription.listener);
      subscriptions.delete(subscription);
      const { channel } = subscription;
      if (!rooms().has(channel) && socket.connected) socket.emit("unsubscribe", channel);
    },
  };
}
