// Serves page.html (and node_modules) on 127.0.0.1:PAGE_PORT, opens it in
// headless Chromium (Debian's package, through playwright-core, a fresh
// profile), waits for the page's results and prints them as JSON.
// Usage: node run.mjs PAGE_PORT API_BASE API_KEY
import { createServer } from "node:http";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join, extname, normalize } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [pagePort, api, key] = process.argv.slice(2);
const root = fileURLToPath(new URL(".", import.meta.url));
const CHROMIUM = "/usr/bin/chromium";
if (!existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} is missing: install Debian's chromium package (scripts/test.sh does)`);
  process.exit(2);
}
const types = { ".html": "text/html; charset=utf-8", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json" };
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
  try {
    const body = await readFile(join(root, path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((ok) => server.listen(Number(pagePort), "127.0.0.1", ok));
const profile = await mkdtemp(join(tmpdir(), "lhama-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
});
const console_lines = [];
try {
  const page = await context.newPage();
  page.on("console", (m) => console_lines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_lines.push(`pageerror: ${e}`));
  const url = `http://127.0.0.1:${pagePort}/page.html?api=${encodeURIComponent(api)}&key=${encodeURIComponent(key)}`;
  await page.goto(url);
  await page.waitForFunction(() => window.__results !== undefined, null, { timeout: 60000 });
  const results = await page.evaluate(() => window.__results);
  console.log(JSON.stringify({ results, console: console_lines }));
} finally {
  await context.close();
  server.close();
  await rm(profile, { recursive: true, force: true });
}
