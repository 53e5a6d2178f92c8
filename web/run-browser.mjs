// The page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), one precision per load.
//   node web/run-browser.mjs [--threads N] [--backend wasm|webgpu] [--no-isolation] [--profile]
//                            <release folder> <audio file> <precision>...
// Serves web/, onnxruntime-web's dist/, the folder and the audio on 127.0.0.1 through web/serve.mjs,
// cross-origin isolated (COOP + COEP headers, so that WASM threads work) unless --no-isolation; prints one
// JSON line per precision, as run-node.mjs does, plus the browser's peak memory (largest Chromium process,
// VmHWM) and, with --profile, the encoder's time per op type from onnxruntime's profiler. WebGPU runs on
// SwiftShader, Chromium's CPU adapter, unless WEBGPU_ADAPTER names another (e.g. "default" for the machine's GPU).
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { ORT_DIST, startServer } from "./serve.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: options, positionals } = parseArgs({ allowPositionals: true, options: {
  threads: { type: "string", default: "" }, backend: { type: "string", default: "wasm" },
  "no-isolation": { type: "boolean", default: false }, profile: { type: "boolean", default: false } } });
const [root, audioFile, ...precisions] = [path.resolve(positionals[0]), path.resolve(positionals[1]), ...positionals.slice(2)];
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(process.env.WEB_TIMEOUT_MS || 600000);
const adapter = process.env.WEBGPU_ADAPTER || "swiftshader";

// the page's server (web/serve.mjs), plus the one recording under /audio/
const { server, url: base } = await startServer({
  mounts: { "/": here, "/release/": root, "/ort/": ORT_DIST, [`/audio/${path.basename(audioFile)}`]: audioFile },
  isolation: !options["no-isolation"] });

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

// onnxruntime's profiler prints one JSON event per line; the encoder's node events, summed per op type (ms)
function opProfile(lines) {
  const byOp = {};
  for (const line of lines) {
    if (!line.includes('"cat" : "Node"')) continue;
    try {
      const event = JSON.parse(line.trim().replace(/,$/, ""));
      const op = event.args.op_name;
      byOp[op] = (byOp[op] || 0) + event.dur / 1e3;
    } catch { /* not an event line */ }
  }
  return Object.fromEntries(Object.entries(byOp).sort((a, b) => b[1] - a[1]).map(([op, ms]) => [op, Math.round(ms)]));
}

const flags = ["--no-sandbox", "--js-flags=--max-old-space-size=8192"];
if (options.backend === "webgpu") {
  flags.push("--enable-unsafe-webgpu", ...(adapter === "default" ? [] : [`--use-webgpu-adapter=${adapter}`]));
}
const query = new URLSearchParams({ backend: options.backend, ...(options.threads && { threads: options.threads }),
                                    ...(options.profile && { profile: "1" }) });
try {
  for (const precision of precisions) {
    const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: flags });
    let result;
    try {
      const page = await browser.newPage();
      const messages = [];
      page.on("console", (message) => messages.push(message.text()));
      page.setDefaultTimeout(timeoutMs);
      const audio = encodeURIComponent(`/audio/${path.basename(audioFile)}`);
      await page.goto(`${base}?release=/release/&audio=${audio}&precision=${precision}&${query}`);
      result = await page.evaluate(() => window.result, null);
      result = { ...result, peakMb: peakMb(process.pid) }; // Chromium's processes are this one's descendants
      if (options.profile) result.opMs = opProfile(messages.flatMap((text) => text.split("\n")));
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
