// Drives lhama's own chat page at API_BASE/ in headless Chromium (Debian's
// package, through playwright-core, a fresh profile) as a person would: on a
// phone-sized screen, enter the API key if the page asks, send a message and
// watch the streamed answer and its figures, then start a long answer, press
// stop, and read /metrics until no sequence runs. Prints the results as JSON.
// Usage: node chat_ui.mjs API_BASE API_KEY|- SCREENSHOT.png|-
import { mkdtemp, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";

const [api, key, shot] = process.argv.slice(2);
const CHROMIUM = "/usr/bin/chromium";
if (!existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} is missing: install Debian's chromium package (scripts/test.sh does)`);
  process.exit(2);
}

async function running() {
  const text = await (await fetch(`${api}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("lhama_running_sequences"));
  return Number(line.split(" ").pop());
}

async function until(what, cond, ms = 30000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 25));
  }
}

const profile = await mkdtemp(join(tmpdir(), "lhama-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 390, height: 844 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
});
const consoleLines = [];
const results = {};
try {
  const page = await context.newPage();
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e}`));
  const response = await page.goto(`${api}/`);
  results.contentType = response.headers()["content-type"];
  results.csp = response.headers()["content-security-policy"];
  if (key !== "-") {
    await page.locator("#key-needed").waitFor({ state: "visible" });
    results.askedForKey = true;
    await page.fill("#api_key", key);
    await page.locator("#api_key").dispatchEvent("change");
  }
  await until("the model list", async () => (await page.locator("#model option").count()) > 0);
  results.models = await page.locator("#model option").allTextContents();
  results.systemBox = await page.locator("#system").isVisible();
  results.keyBox = await page.locator("#api_key").isVisible();
  // One short answer: open the settings (when the key did not open them) and shorten it.
  if ((await page.locator("#settings").getAttribute("open")) === null) await page.click("#settings summary");
  await page.fill("#max_tokens", "8");
  await page.fill("#input", "Olá! Tudo bem?");
  await page.click("#send");
  await page.locator("#stats", { hasText: "tok/s" }).waitFor({ timeout: 30000 });
  results.answer = await page.locator("#log li.assistant").first().textContent();
  results.stats = await page.locator("#stats").textContent();
  // A long one, stopped while it streams. (With random weights an answer
  // can end early on its own; then another is asked for.)
  await page.fill("#max_tokens", "400");
  results.longAttempts = 0;
  for (;;) {
    results.longAttempts += 1;
    const index = results.longAttempts;
    await page.fill("#input", `Conte uma história longa (${index}).`);
    await page.click("#send");
    await until("the long answer to stream", async () =>
      ((await page.locator("#log li.assistant").nth(index).textContent()) || "").length > 0);
    let streaming = false;
    await until("the running sequence, or the answer's end", async () => {
      streaming = (await running()) === 1 && await page.locator("#stop").isEnabled();
      return streaming || await page.locator("#stop").isDisabled();
    });
    if (streaming) break;
    if (results.longAttempts >= 5) throw new Error("every long answer ended by itself");
  }
  results.runningBeforeStop = await running();
  await page.click("#stop");
  await until("no running sequence", async () => (await running()) === 0, 10000);
  results.runningAfterStop = 0;
  results.statsAfterStop = await page.locator("#stats").textContent();
  results.turns = await page.locator("#log li").count();
  results.fitsTheScreen = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  if (shot !== "-") await page.screenshot({ path: shot, fullPage: false });
} catch (e) {
  results.failure = String(e);
} finally {
  await context.close();
  await rm(profile, { recursive: true, force: true });
}
console.log(JSON.stringify({ results, console: consoleLines }));
