// The page's code in Node (onnxruntime-web's WASM backend): what the tests run when no Chromium is installed.
//   node web/run-node.mjs <release folder> <audio.wav> <precision>...
// Prints one JSON line per precision: {precision, text, tokens, timestamps, loadMs, passMs} or {precision, error}.
import { readFile, access } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-web";
import { InputError, loadModel, readWav, transcribe } from "./asr.js";

ort.env.wasm.numThreads = 1; // the page's default too: no cross-origin isolation needed, runs repeat exactly

function folderReader(root) {
  return {
    async has(name) {
      try { await access(path.join(root, name)); return true; } catch { return false; }
    },
    async read(name) {
      try { return new Uint8Array(await readFile(path.join(root, name))); }
      catch { throw new InputError(`${name}: missing from the release folder ${root}`); }
    },
  };
}

const [root, wav, ...precisions] = process.argv.slice(2);
let audio;
try {
  audio = readWav(new Uint8Array(await readFile(wav)), path.basename(wav));
} catch (err) {
  console.log(JSON.stringify({ error: String(err.message || err) }));
  process.exit(0);
}
for (const precision of precisions) {
  try {
    const model = await loadModel(ort, folderReader(root), precision);
    const result = await transcribe(ort, model, audio);
    console.log(JSON.stringify({ precision, ...result, loadMs: model.loadMs }));
  } catch (err) {
    console.log(JSON.stringify({ precision, error: String(err.message || err).split("\n")[0] }));
  }
}
