// A Refine app as a user would write one: simple-rest against the API, pglive for live updates.
import React from "react";
import { createRoot } from "react-dom/client";
import { Refine, useList, useOne } from "@refinedev/core";
import dataProvider from "@refinedev/simple-rest";
import { liveProvider } from "@pglive/refine";

// The application's backend issues short-lived tokens; the provider asks for a fresh one
// before each expires.
const live = liveProvider({
  url: `ws://${location.hostname}:${window.PGLIVE_WS_PORT}/live`,
  token: () => fetch("/api/token").then((r) => r.text()),
});

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

function Detail() {
  const { result } = useOne({ resource: "posts", id: 1 });
  return <p id="detail">{result?.title ?? "-"}</p>;
}

createRoot(document.getElementById("root")).render(
  <Refine
    dataProvider={dataProvider(`${location.origin}/api`)}
    liveProvider={live}
    options={{ liveMode: "auto", disableTelemetry: true }}
    resources={[{ name: "posts" }]}
  >
    <Posts />
    <Detail />
  </Refine>,
);
