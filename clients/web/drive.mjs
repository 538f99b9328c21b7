// Drive examples/web in headless Chromium (Debian's /usr/bin/chromium via playwright-core) for the browser test.
// One JSON request on stdin: {"url": "http://127.0.0.1:PORT/", "runs": [{"query": "prompt=...&temperature=0&max=40"}],
//   "screenshot": {"query": "...", "path": "out.png"}}
// One JSON answer on stdout: {"results": [window.flashlm.result or {error}], "console": [...]}
import {chromium} from "playwright-core";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString("utf8"));

// the flags of a closed network: no background connections, no first-run or sync traffic
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({viewport: {width: 900, height: 760}});
const consoleLines = [];
page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

async function run(query) {
  await page.goto(`${req.url}?${query}&autorun=1`);
  await page.waitForFunction(() => window.flashlm && (window.flashlm.error || (window.flashlm.result && !window.flashlm.busy)),
                             null, {timeout: 300_000});
  return page.evaluate(() => (window.flashlm.error ? {error: window.flashlm.error, shown: document.getElementById("error").textContent}
                                                    : {...window.flashlm.result, isolated: self.crossOriginIsolated}));
}

const out = {results: [], console: consoleLines};
for (const r of req.runs ?? []) out.results.push(await run(r.query));
if (req.screenshot) {
  out.screenshot = await run(req.screenshot.query);
  await page.screenshot({path: req.screenshot.path, fullPage: true});
}
await browser.close();
process.stdout.write(JSON.stringify(out) + "\n");
