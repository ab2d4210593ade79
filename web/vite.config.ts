import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defineConfig } from "vite";

// Built into the Python package, which `parley web` serves under /app/.
export default defineConfig({
  plugins: [svelte()],
  base: "/app/",
  build: { outDir: "../parley/web/dist", emptyOutDir: true, chunkSizeWarningLimit: 800 },
  server: { proxy: { "/api": "http://127.0.0.1:7860" } },
  test: { include: ["src/**/*.test.ts"] },
});
