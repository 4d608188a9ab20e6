// A tenant-scoped Refine app: each user belongs to one organisation (`?org=42`), the backend
// signs tokens that grant only that organisation's channels (`tenants/42/*`), and the provider
// puts every resource's channel under it. `?mode=manual` shows the live events themselves
// (liveMode "manual" with onLiveEvent), rendering the row each carries (payload.data) without
// fetching anything again.
import React, { useState } from "react";
import { createRoot } from "react-dom/client";
import { Refine, useList } from "@refinedev/core";
import dataProvider from "@refinedev/simple-rest";
import { liveProvider } from "@pglive/refine";

const params = new URLSearchParams(location.search);
const org = params.get("org");
const mode = params.get("mode") ?? "auto";

const live = liveProvider({
  url: `ws://${location.hostname}:${window.PGLIVE_WS_PORT}/live`,
  token: () => fetch(`/api/token?org=${org}`).then((r) => r.text()),
  channel: (c) => `tenants/${org}/${c}`,
});

// `view` tells the backend which page fetched (it counts the fetches of each).
const mine = [
  { field: "org_id", operator: "eq", value: org },
  { field: "view", operator: "eq", value: mode },
];

function Notes() {
  const { result, query } = useList({
    resource: "notes",
    filters: mine,
    pagination: { pageSize: 100 },
  });
  if (query.isLoading) return <p>loading</p>;
  return (
    <ul id="notes">
      {result.data.map((n) => (
        <li key={n.id} data-id={n.id}>
          {n.title}
        </li>
      ))}
    </ul>
  );
}

function Events() {
  const [events, setEvents] = useState([]);
  const { query } = useList({
    resource: "notes",
    filters: mine,
    liveMode: "manual",
    onLiveEvent: (e) => setEvents((all) => [...all, e]),
  });
  if (query.isLoading) return <p>loading</p>;
  return (
    <ol id="events">
      {events.map((e) => (
        <li key={e.meta?.id ?? e.date.toString()}>
          {`${e.type} ${JSON.stringify(e.payload.ids ?? [])} ${e.payload.data?.title ?? "-"}`}
        </li>
      ))}
    </ol>
  );
}

createRoot(document.getElementById("root")).render(
  <Refine
    dataProvider={dataProvider(`${location.origin}/api`)}
    liveProvider={live}
    options={{ liveMode: "auto", disableTelemetry: true }}
    resources={[{ name: "notes" }]}
  >
    {mode === "manual" ? <Events /> : <Notes />}
  </Refine>,
);
