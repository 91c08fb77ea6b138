// Loads the status page (`/` of the admin API) in Debian's headless Chromium with
// playwright-core, gives it the API token when it asks, waits until the graph is drawn
// and a node shows a non-zero message rate, saves a screenshot, and prints one JSON line
// for tests/api.rs: { nodes, wires, rate, updates, consoleErrors, foreignRequests }.
//
// Usage: node status_page.mjs URL SCREENSHOT [TOKEN]. Never downloads a browser.
import { chromium } from "playwright-core";

const [url, screenshot, token] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node status_page.mjs URL SCREENSHOT [TOKEN]");
  process.exit(2);
}
// Turns a hang into a failure; the Rust side has its own bound on the line.
setTimeout(() => {
  console.log(JSON.stringify({ error: "driver gave up after 60 s" }));
  process.exit(1);
}, 60_000).unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let exitCode = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const consoleErrors = [];
  const foreignRequests = [];
  const origin = new URL(url).origin;
  page.on("console", (msg) => {
    // The one expected failure: the first API call before the token is given.
    if (msg.type() === "error" && !/401 \(Unauthorized\)/.test(msg.text())) {
      consoleErrors.push(msg.text());
    }
  });
  page.on("pageerror", (err) => consoleErrors.push("pageerror: " + err.message));
  page.on("request", (request) => {
    const u = new URL(request.url());
    if (u.origin !== origin && u.protocol !== "data:") foreignRequests.push(request.url());
  });
  await page.goto(url);
  if (token) {
    await page.waitForSelector("#token-form:not([hidden])", { timeout: 20_000 });
    await page.fill("#token", token);
    await page.click("#token-form button");
  }
  await page.waitForSelector("svg.graph g.node", { timeout: 20_000 });
  // A rate is shown from the second poll on; wait for one above zero.
  await page.waitForFunction(
    () => [...document.querySelectorAll("svg.graph .rate")].some((r) => Number(r.dataset.rate) > 0),
    null,
    { timeout: 20_000, polling: 100 },
  );
  const summary = await page.evaluate(() => {
    const rates = [...document.querySelectorAll("svg.graph g.node")].map((g) => ({
      node: g.dataset.node,
      rate: Number(g.querySelector(".rate").dataset.rate || 0),
      text: g.querySelector(".rate").textContent,
      state: g.getAttribute("class"),
    }));
    return {
      nodes: document.querySelectorAll("svg.graph g.node").length,
      wires: document.querySelectorAll("svg.graph path.wire").length,
      rates,
      updates: Number(document.body.dataset.updates || 0),
      broker: document.getElementById("broker-figures").textContent,
      tokenStored: sessionStorage.getItem("headwater-token") !== null,
      tokenFormShown: getComputedStyle(document.getElementById("token-form")).display !== "none",
    };
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...summary, consoleErrors, foreignRequests }));
} catch (err) {
  console.log(JSON.stringify({ error: "driver: " + err.message }));
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
