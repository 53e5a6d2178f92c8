// The page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), one precision per load.
//   node web/run-browser.mjs <release folder> <audio.wav> <precision>...
// Serves web/, onnxruntime-web's dist/, the folder and the audio on 127.0.0.1; prints one JSON line per
// precision, as run-node.mjs does, plus the browser's peak memory (largest Chromium process, VmHWM).
import { createReadStream, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const [root, wav, ...precisions] = process.argv.slice(2);
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(process.env.WEB_TIMEOUT_MS || 600000);
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                ".json": "application/json" };

function resolve(url) {
  const name = decodeURIComponent(new URL(url, "http://x").pathname);
  if (name === "/") return path.join(here, "index.html");
  if (name === `/audio/${path.basename(wav)}`) return wav;
  if (name.startsWith("/ort/")) return path.join(here, "node_modules/onnxruntime-web/dist", name.slice(5));
  if (name.startsWith("/release/")) return path.join(root, name.slice(9));
  return path.join(here, name.slice(1));
}

const server = createServer((request, reply) => {
  const file = resolve(request.url);
  if (file.includes("..") || !existsSync(file) || !statSync(file).isFile()) {
    reply.writeHead(404).end();
    return;
  }
  reply.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream",
                         "Content-Length": statSync(file).size });
  if (request.method === "HEAD") reply.end();
  else createReadStream(file).pipe(reply);
});
await new Promise((done) => server.listen(0, "127.0.0.1", done));
const base = `http://127.0.0.1:${server.address().port}/`;

// peak resident memory of the largest process in Chromium's tree (Linux /proc); a fresh browser per precision
function peakMb(rootPid) {
  const parents = new Map(), peaks = new Map();
  for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const status = readFileSync(`/proc/${entry}/status`, "utf8");
      parents.set(Number(entry), Number(/PPid:\s+(\d+)/.exec(status)[1]));
      peaks.set(Number(entry), Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] || 0) / 1024);
    } catch { /* the process ended meanwhile */ }
  }
  const inTree = (pid) => {
    for (let p = pid, hops = 0; p && hops < 10; p = parents.get(p), hops++) if (p === rootPid) return true;
    return false;
  };
  return Math.round(Math.max(0, ...[...peaks].filter(([pid]) => pid !== rootPid && inTree(pid)).map(([, mb]) => mb)));
}

try {
  for (const precision of precisions) {
    const browser = await chromium.launch({ executablePath: browserPath, headless: true,
                                            args: ["--no-sandbox", "--js-flags=--max-old-space-size=8192"] });
    let result;
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(timeoutMs);
      const audio = encodeURIComponent(`/audio/${path.basename(wav)}`);
      await page.goto(`${base}?release=/release/&audio=${audio}&precision=${precision}`);
      result = await page.evaluate(() => window.result, null);
      result = { ...result, peakMb: peakMb(process.pid) }; // Chromium's processes are this one's descendants
    } catch (err) {
      result = { precision, error: `browser: ${String(err.message || err).split("\n")[0]}` };
    } finally {
      await browser.close();
    }
    console.log(JSON.stringify(result));
  }
} finally {
  server.close();
}
