// Drives tests/browser/mqtt_page.html in Debian's headless Chromium with playwright-core
// and prints one line per event on stdout for tests/websocket.rs to wait on:
// `connected`, `subscribed QOS`, `published TOPIC`, `received TOPIC PAYLOAD QOS`,
// `closed`, `error ...`.
//
// Usage: node drive.mjs WS_URL TOPIC VERSION (4 = MQTT 3.1.1, 5 = MQTT 5.0).
// Commands on stdin, one per line: `publish TOPIC QOS PAYLOAD`, `end`. The end of stdin
// ends the client too. Never downloads a browser: Chromium comes from apt.
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const [url, topic, version] = process.argv.slice(2);
if (!url || !topic || !version) {
  console.error("usage: node drive.mjs WS_URL TOPIC VERSION");
  process.exit(2);
}
// Turns a hang into a failure; the Rust side has its own bound on each line.
const PATIENCE_MS = 60_000;
setTimeout(() => {
  console.log("error driver gave up after 60 s");
  process.exit(1);
}, PATIENCE_MS).unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Without the networking flags Chromium floods a closed network with requests.
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
  const page = await browser.newPage();
  page.on("pageerror", (err) => console.log("error page " + err.message));
  await page.exposeFunction("report", (line) => console.log(line));
  const pageUrl = pathToFileURL(fileURLToPath(new URL("mqtt_page.html", import.meta.url)));
  pageUrl.search = new URLSearchParams({ url, topic, version }).toString();
  await page.goto(pageUrl.href);
  const commands = createInterface({ input: process.stdin });
  for await (const line of commands) {
    const [command, ...rest] = line.trim().split(" ");
    if (command === "publish") {
      const [t, qos, ...payload] = rest;
      await page.evaluate(([t, qos, payload]) => window.publish(t, qos, payload), [
        t,
        Number(qos),
        payload.join(" "),
      ]);
    } else if (command === "end") {
      break;
    } else if (command) {
      console.log("error unknown command " + command);
      exitCode = 2;
    }
  }
  await page.evaluate(() => window.end());
} catch (err) {
  console.log("error driver " + err.message);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
