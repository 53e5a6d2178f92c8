// Opens `dvc plots show|diff`'s page (dvc_plots/index.html) in headless Chromium, offline: every request that
// is not a file of this machine is refused and reported. Prints one JSON line: the vega views on the page, how
// many drew a canvas, the requests refused and the console's errors; with --screenshot FILE, a full-page PNG.
//   node web/render-plots.mjs [--screenshot FILE] <dvc_plots/index.html>
import { readFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const { values: options, positionals } = parseArgs({ allowPositionals: true,
  options: { screenshot: { type: "string", default: "" } } });
const page_url = pathToFileURL(path.resolve(positionals[0])).href;
const timeoutMs = Number(process.env.WEB_TIMEOUT_MS || 60000);

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--allow-file-access-from-files"], timeout: timeoutMs });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const refused = [], errors = [];
  await page.route("**/*", (route) => {
    if (route.request().url().startsWith("file:")) return route.continue();
    refused.push(route.request().url());
    return route.abort();
  });
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });
  page.on("pageerror", (err) => errors.push(String(err)));
  await page.goto(page_url, { timeout: timeoutMs });
  const views = (readFileSync(positionals[0], "utf8").match(/vegaEmbed\(/g) || []).length;  // one per vega plot
  // vega-embed adds the class when a view is up; a view draws into a canvas (the default renderer)
  await page.waitForFunction((n) => document.querySelectorAll(".vega-embed canvas").length >= n, views,
    { timeout: timeoutMs }).catch(() => {});
  const drawn = await page.locator(".vega-embed canvas").count();
  if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });
  console.log(JSON.stringify({ views, drawn, refused, errors }));
} finally {
  await browser.close();
}
