import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    rollupOptions: {
      // The app on pglive's WebSocket relay, the app on a Socket.IO cluster fed through Redis,
      // and the tenant-scoped app (tenant channels, row payloads in manual mode).
      input: ["index.html", "socketio.html", "tenants.html"],
      // React Server Components' "use client" markers mean nothing in a client bundle.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
    },
  },
  logLevel: "warn",
});
