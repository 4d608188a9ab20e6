// The same Refine app with its live updates from a Socket.IO cluster (its servers share a
// Redis through @socket.io/redis-adapter; pglive publishes to that Redis).
import React from "react";
import { createRoot } from "react-dom/client";
import { Refine, useList, useOne } from "@refinedev/core";
import dataProvider from "@refinedev/simple-rest";
import { io } from "socket.io-client";
import { socketIoLiveProvider } from "./socketioLiveProvider.js";

const socket = io(); // the Socket.IO server of the page's own origin
window.__socket = socket; // for the test, which drops the connection

function Posts() {
  const { result, query } = useList({ resource: "posts", pagination: { pageSize: 100 } });
  if (query.isLoading) return <p>loading</p>;
  return (
    <ul id="posts">
      {result.data.map((p) => (
        <li key={p.id} data-id={p.id}>
          {p.title}
        </li>
      ))}
    </ul>
  );
}

// Post 2: absent, then inserted, edited and deleted.
function Detail() {
  const { result, query } = useOne({ resource: "posts", id: 2, queryOptions: { retry: false } });
  return <p id="detail">{query.isError ? "(none)" : (result?.title ?? "-")}</p>;
}

createRoot(document.getElementById("root")).render(
  <Refine
    dataProvider={dataProvider(`${location.origin}/api`)}
    liveProvider={socketIoLiveProvider(socket)}
    options={{ liveMode: "auto", disableTelemetry: true }}
    resources={[{ name: "posts" }]}
  >
    <Posts />
    <Detail />
  </Refine>,
);
