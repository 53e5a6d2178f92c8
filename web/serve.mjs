// The page on your own machine: a static server for web/, a release folder and onnxruntime-web's dist/.
//   node web/serve.mjs [release folder] [--port N] [--host ADDR] [--no-isolation]      (make serve)
// Serves web/ under /, the release folder (default models/release) under /release/ and
// web/node_modules/onnxruntime-web/dist under /ort/, with COOP + COEP (cross-origin isolation: WASM threads)
// unless --no-isolation, HTTP ranges and HEAD. Binds 127.0.0.1 unless --host names another address.
// web/run-browser.mjs serves the page through startServer() too.
import { createReadStream, existsSync, realpathSync } from "node:fs";
import { realpath, stat } from "node:fs/promises";
import { createServer } from "node:http";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ORT_DIST = path.join(here, "node_modules/onnxruntime-web/dist");
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
                ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css", ".txt": "text/plain",
                ".md": "text/markdown; charset=utf-8", ".wav": "audio/wav", ".ogg": "audio/ogg",
                ".opus": "audio/ogg", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".m4a": "audio/mp4" };
const ISOLATION = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };
const MAX_PATH = 1024; // longer request paths are refused before they reach the file system
const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"]);

class Refusal extends Error {
  constructor(status) { super(String(status)); this.status = status; }
}

// The request path as segments, decoded once. Nothing here resolves: a segment that is empty, "." or "..",
// or that holds a slash, backslash or NUL once decoded, refuses the whole request (400), so that no spelling
// (%2F, %2E, %5C, %00, //, absolute-form URLs) can name a parent or an absolute path.
function segmentsOf(target) {
  const raw = target.split("?")[0];
  if (!raw.startsWith("/") || raw.length > MAX_PATH) throw new Refusal(400);
  if (raw === "/") return [];
  return raw.slice(1).split("/").map((part, i, all) => {
    let name;
    try { name = decodeURIComponent(part); } catch { throw new Refusal(400); } // malformed or overlong UTF-8
    if (name === "" && i === all.length - 1) return name; // a trailing slash: the folder's index.html
    if (name === "" || name === "." || name === ".." || /[/\\\0]/.test(name)) throw new Refusal(400);
    return name;
  });
}

// mounts: [prefix segments, folder or file]; a file mount matches its exact path, a folder its subtree
function mountOf(mounts, segments) {
  let best = null;
  for (const mount of mounts) {
    const { prefix, file } = mount;
    const fits = prefix.every((s, i) => segments[i] === s) && (!file || segments.length === prefix.length);
    if (fits && (!best || prefix.length > best.prefix.length)) best = mount;
  }
  if (!best) throw new Refusal(404);
  return best;
}

// The real path (symlinks followed) of the file a request names, which must lie inside its mount's root
async function fileOf(mounts, target) {
  const segments = segmentsOf(target);
  const mount = mountOf(mounts, segments);
  let file;
  if (mount.file) file = await realpath(mount.path); // named by whoever started the server
  else {
    const root = await realpath(mount.path);
    file = await realpath(path.join(root, ...segments.slice(mount.prefix.length)));
    if ((await stat(file)).isDirectory()) file = await realpath(path.join(file, "index.html"));
    const inside = path.relative(root, file);
    if (!inside || inside === ".." || inside.startsWith(`..${path.sep}`) || path.isAbsolute(inside)) {
      throw new Refusal(404); // a symlink that points out of the root
    }
  }
  const info = await stat(file);
  if (!info.isFile()) throw new Refusal(404);
  return { file, size: info.size };
}

// One "bytes=" range as [start, end] (inclusive), null to send the whole file (no header, or one this
// server does not honour: several ranges, a malformed one), or "unsatisfiable"
function rangeOf(header, size) {
  const match = /^bytes=(\d*)-(\d*)$/.exec((header || "").trim());
  if (!match || (match[1] === "" && match[2] === "")) return null;
  if (match[1] === "") { // a suffix: the last N bytes
    const n = Number(match[2]);
    return n === 0 || size === 0 ? "unsatisfiable" : [Math.max(0, size - n), size - 1];
  }
  const start = Number(match[1]), end = match[2] === "" ? size - 1 : Math.min(Number(match[2]), size - 1);
  if (match[2] !== "" && Number(match[2]) < start) return null;
  return start >= size ? "unsatisfiable" : [start, end];
}

// Serves `mounts` ({"/": folder, "/release/": folder, "/audio/clip.wav": file, ...}; a key ending in "/" is
// a folder) on host:port (0: any free port). Resolves to { server, url }.
export async function startServer({ mounts, isolation = true, host = "127.0.0.1", port = 0 }) {
  const table = Object.entries(mounts).map(([prefix, where]) => ({
    prefix: prefix.split("/").filter(Boolean), path: path.resolve(where),
    file: !prefix.endsWith("/") }));
  const common = { "X-Content-Type-Options": "nosniff", ...(isolation ? ISOLATION : {}) };
  const refuse = (reply, status) => {
    const body = { 400: "bad request\n", 404: "not found\n", 405: "GET or HEAD only\n" }[status];
    reply.writeHead(status, { ...common, "Content-Type": "text/plain", "Content-Length": body.length,
                              ...(status === 405 ? { Allow: "GET, HEAD" } : {}) }).end(body);
  };
  const server = createServer(async (request, reply) => {
    try {
      if (request.method !== "GET" && request.method !== "HEAD") return refuse(reply, 405);
      const { file, size } = await fileOf(table, request.url);
      const range = rangeOf(request.headers.range, size);
      const type = TYPES[path.extname(file).toLowerCase()] || "application/octet-stream";
      const headers = { ...common, "Content-Type": type, "Accept-Ranges": "bytes" };
      if (range === "unsatisfiable") {
        return reply.writeHead(416, { ...headers, "Content-Range": `bytes */${size}`, "Content-Length": 0 }).end();
      }
      const [start, end] = range || [0, size - 1];
      reply.writeHead(range ? 206 : 200, { ...headers, "Content-Length": end - start + 1,
                                          ...(range ? { "Content-Range": `bytes ${start}-${end}/${size}` } : {}) });
      if (request.method === "HEAD" || size === 0) return reply.end();
      const stream = createReadStream(file, { start, end });
      stream.on("error", () => reply.destroy()); // e.g. the file vanished: cut the reply, keep the server
      stream.pipe(reply);
    } catch (err) {
      // a refusal, or the file system's answer (missing, not a folder, a loop, a name too long): never a trace
      if (reply.headersSent) reply.destroy();
      else refuse(reply, err instanceof Refusal ? err.status : 404);
    }
  });
  // requests the HTTP parser itself rejects (a raw NUL, a request line over Node's header limit): 400, no crash
  server.on("clientError", (err, socket) => {
    if (socket.writable && !socket.writableEnded) socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    else socket.destroy();
  });
  await new Promise((done, fail) => { server.once("error", fail); server.listen(port, host, done); });
  const { address, port: bound } = server.address();
  return { server, url: `http://${address.includes(":") ? `[${address}]` : address}:${bound}/` };
}

async function main() {
  const { values: options, positionals } = parseArgs({ allowPositionals: true, options: {
    port: { type: "string", default: "8080" }, host: { type: "string", default: "127.0.0.1" },
    "no-isolation": { type: "boolean", default: false } } });
  const release = path.resolve(positionals[0] || "models/release");
  const port = Number(options.port);
  if (!/^\d+$/.test(options.port) || port > 65535) throw new Error(`--port ${options.port}: give 0 to 65535`);
  if (!existsSync(release)) console.error(`warning: ${release} does not exist; /release/ answers 404`);
  if (!existsSync(ORT_DIST)) console.error(`warning: ${ORT_DIST} is missing: \`cd web && npm ci\` (make serve does)`);
  if (!LOOPBACK.has(options.host)) {
    console.error(`warning: listening on ${options.host}: anyone who can reach this address can read the page, ` +
                  "the release folder and onnxruntime-web's files; browsers isolate (threads) over plain HTTP on " +
                  "localhost only");
  }
  const isolation = !options["no-isolation"];
  const { url } = await startServer({ mounts: { "/": here, "/release/": release, "/ort/": ORT_DIST }, isolation,
                                      host: options.host, port }).catch((err) => {
    throw err.code === "EADDRINUSE" ? new Error(`port ${port} is taken: give --port N (0: any free port)`) : err;
  });
  console.log(`Open ${url} and pick the release folder and a recording`);
  console.log(`(web/ under /, ${release} under /release/, onnxruntime-web under /ort/; ` +
              `${isolation ? "cross-origin isolated: WASM threads" : "not isolated: one WASM thread"}; Ctrl-C stops)`);
}

// run as a program (not when run-browser.mjs imports startServer)
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => { console.error(`serve.mjs: ${err.message}`); process.exit(1); });
}
