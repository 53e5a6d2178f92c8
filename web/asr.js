// Speech recognition with a release folder on onnxruntime-web: nemo128.onnx -> encoder (WASM, or WebGPU)
// -> greedy TDT decoding with decoder_joint (WASM), as onnx-asr does it in Python. The same module runs in
// the page (index.html) and in Node (run-node.mjs); `ort`, the folder reader and a progress callback
// ({phase: "load" | "encode" | "decode", done, total}) are passed in.

// precision -> the files onnx-asr pairs for it (`quantization=` in onnx_asr.load_model)
export const PRECISIONS = {
  fp32: { encoder: "encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  fp16: { encoder: "encoder-model.fp16.onnx", decoder: "decoder_joint-model.fp16.onnx" },
  fp32_sharded: { encoder: "sharded/encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  int8: { encoder: "encoder-model.int8.onnx", decoder: "decoder_joint-model.int8.onnx" },
  w8: { encoder: "encoder-model.w8.onnx", decoder: "decoder_joint-model.w8.onnx" },
  w4: { encoder: "encoder-model.w4.onnx", decoder: "decoder_joint-model.w4.onnx" },
  w8_aware: { encoder: "encoder-model.w8_aware.onnx", decoder: "decoder_joint-model.w8_aware.onnx" },
  w4_aware: { encoder: "encoder-model.w4_aware.onnx", decoder: "decoder_joint-model.w4_aware.onnx" },
  w4_mixed: { encoder: "encoder-model.w4_mixed.onnx", decoder: "decoder_joint-model.w4_mixed.onnx" },
  fp32_blockwise: { encoder: "blockwise/encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  int8_blockwise: { encoder: "blockwise/encoder-model.int8.onnx", decoder: "decoder_joint-model.int8.onnx" },
  fp32_local: { encoder: "local/encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  int8_local: { encoder: "local/encoder-model.int8.onnx", decoder: "decoder_joint-model.int8.onnx" },
};
const SAMPLE_RATE = 16000;
const FRAME_S = 0.01 * 8; // feature hop x encoder subsampling (config.json: subsampling_factor 8)
const MAX_TOKENS_PER_STEP = 10; // onnx-asr's default for TDT

export class InputError extends Error {} // one line for the user, naming the file

// fp16 files need 16-bit floats in WebGPU's shaders: without `shader-f16` the page refuses them (users
// report blank transcripts there) and names what runs instead
export function webGpuRefusal(precision, adapter) {
  if (!adapter) return "WebGPU: this browser offers no WebGPU adapter; choose the WASM backend (int8 is its pick)";
  if (PRECISIONS[precision]?.encoder.includes(".fp16.") && !adapter.features.has("shader-f16")) {
    const name = adapter.info?.architecture || adapter.info?.vendor || "this";
    return `${precision} on WebGPU: the ${name} adapter lacks shader-f16, which fp16 needs; ` +
      "choose fp32 on WebGPU or int8 on WASM";
  }
  return null;
}

// 16 kHz mono WAV (PCM 16-bit or float 32-bit) -> Float32Array in [-1, 1]
export function readWav(bytes, name) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (bytes.length < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") {
    throw new InputError(`${name}: not a WAV file; give 16 kHz mono WAV audio`);
  }
  let format = null;
  for (let at = 12; at + 8 <= bytes.length; ) {
    const id = tag(at), size = view.getUint32(at + 4, true), body = at + 8;
    if (id === "fmt ") {
      format = { code: view.getUint16(body, true), channels: view.getUint16(body + 2, true),
                 rate: view.getUint32(body + 4, true), bits: view.getUint16(body + 14, true) };
    } else if (id === "data" && format) {
      if (format.rate !== SAMPLE_RATE || format.channels !== 1) {
        throw new InputError(`${name}: ${format.rate} Hz, ${format.channels} channel(s); give 16 kHz mono WAV audio`);
      }
      const count = Math.floor(Math.min(size, bytes.length - body) / (format.bits / 8));
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) {
        if (format.code === 3 && format.bits === 32) out[i] = view.getFloat32(body + 4 * i, true);
        else if (format.code === 1 && format.bits === 16) out[i] = view.getInt16(body + 2 * i, true) / 32768;
        else throw new InputError(`${name}: ${format.bits}-bit format ${format.code}; give 16-bit PCM or float WAV`);
      }
      return out;
    }
    at = body + size + (size % 2);
  }
  throw new InputError(`${name}: no audio data in the WAV file; give 16 kHz mono WAV audio`);
}

// `folder.read(name)` -> Uint8Array, or throws InputError naming the file
async function externalData(folder, model) {
  const base = model.includes("/") ? model.slice(0, model.lastIndexOf("/") + 1) : "";
  const own = model.slice(base.length);
  if (model.startsWith("sharded/")) {
    const list = JSON.parse(new TextDecoder().decode(await folder.read(`${base}shards.json`)));
    return Promise.all(list.map(async (shard) => ({ path: shard, data: await folder.read(base + shard) })));
  }
  const single = `${own}.data`;
  return (await folder.has(base + single)) ? [{ path: single, data: await folder.read(base + single) }] : [];
}

async function session(ort, folder, name, options, progress) {
  const bytes = await folder.read(name);
  try {
    const created = await ort.InferenceSession.create(bytes, { ...options, externalData: await externalData(folder, name) });
    progress();
    return created;
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`${name}: onnxruntime-web cannot load it (${String(err.message || err).split("\n")[0]})`);
  }
}

// backend: "wasm" or "webgpu" (the encoder only: the preprocessor and the step-by-step decoder stay on WASM,
// where a small run costs no GPU round trip); profile: onnxruntime's per-node profile of the encoder
export async function loadModel(ort, folder, precision, { backend = "wasm", profile = false, onProgress } = {}) {
  const files = PRECISIONS[precision];
  if (!files) throw new InputError(`precision '${precision}': choose one of ${Object.keys(PRECISIONS).join(", ")}`);
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  const encoderOptions = { ...options, executionProviders: [backend], enableProfiling: profile };
  let loaded = 0;
  const progress = () => onProgress?.({ phase: "load", done: ++loaded, total: 4 });
  const started = performance.now();
  const vocabText = new TextDecoder().decode(await folder.read("vocab.txt"));
  progress();
  const vocab = [];
  for (const line of vocabText.split("\n").filter((l) => l)) { // "<token> <id>", as onnx-asr reads it
    vocab[Number(line.slice(line.lastIndexOf(" ") + 1))] = line.slice(0, line.lastIndexOf(" ")).replaceAll("\u2581", " ");
  }
  const model = {
    vocab, blank: vocab.indexOf("<blk>"),
    preprocessor: await session(ort, folder, "nemo128.onnx", options, progress),
    encoder: await session(ort, folder, files.encoder, encoderOptions, progress),
    decoder: await session(ort, folder, files.decoder, options, progress),
  };
  model.loadMs = performance.now() - started;
  return model;
}

function zeros(ort, meta) {
  const shape = meta.shape.map((d) => (typeof d === "number" ? d : 1)); // [layers, batch=1, hidden]
  return new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
}

// onnx-asr's greedy TDT loop: argmax token, argmax duration (its index is the frame step)
async function greedy(ort, model, encoded, frames, onProgress) {
  const [, dim, total] = encoded.dims;
  const states = model.decoder.inputMetadata.filter((m) => m.name.startsWith("input_states"));
  let state = [zeros(ort, states[0]), zeros(ort, states[1])];
  const tokens = [], steps = [];
  let calls = 0, reported = 0;
  for (let t = 0, emitted = 0; t < frames; ) {
    if (t - reported >= 25) onProgress?.({ phase: "decode", done: (reported = t), total: frames });
    const column = new Float32Array(dim);
    for (let d = 0; d < dim; d++) column[d] = encoded.data[d * total + t];
    const last = tokens.length ? tokens[tokens.length - 1] : model.blank;
    const out = await model.decoder.run({
      encoder_outputs: new ort.Tensor("float32", column, [1, dim, 1]),
      targets: new ort.Tensor("int32", Int32Array.from([last]), [1, 1]),
      target_length: new ort.Tensor("int32", Int32Array.from([1]), [1]),
      input_states_1: state[0], input_states_2: state[1],
    });
    calls += 1;
    const logits = out.outputs.data, vocab = model.vocab.length;
    let token = 0, step = 0;
    for (let i = 1; i < vocab; i++) if (logits[i] > logits[token]) token = i;
    for (let i = vocab + 1; i < logits.length; i++) if (logits[i] > logits[vocab + step]) step = i - vocab;
    if (token !== model.blank) {
      state = [out.output_states_1, out.output_states_2];
      tokens.push(token);
      steps.push(t);
      emitted += 1;
    }
    if (step > 0) { t += step; emitted = 0; }
    else if (token === model.blank || emitted === MAX_TOKENS_PER_STEP) { t += 1; emitted = 0; }
  }
  onProgress?.({ phase: "decode", done: frames, total: frames });
  return { tokens, frames: steps, calls };
}

// tokens -> text with onnx-asr's spacing rule (a leading space and a space before a non-word go)
export function detokenize(vocab, tokens) {
  return tokens.map((i) => vocab[i]).join("").replace(/^\s|\s\B|(\s)\b/g, (_, keep) => (keep ? " " : ""));
}

// words with their times: a word begins at a token that starts with a space (SentencePiece's "\u2581", or a
// character vocabulary's lone space), at its first token with a letter; it ends one frame after its last
export function words(tokens, times) {
  const out = [];
  tokens.forEach((token, i) => {
    if (!out.length || token.startsWith(" ")) out.push({ word: "", start: null, end: null });
    const word = out[out.length - 1];
    word.word += token;
    if (token.trim()) {
      word.start ??= times[i];
      word.end = Math.round((times[i] + FRAME_S) * 1e6) / 1e6;
    }
  });
  return out.filter((w) => w.word.trim()).map((w) => ({ ...w, word: w.word.trim() }));
}

// times: encodeMs covers the preprocessor and the encoder; decodeMs the greedy loop, also per token
export async function transcribe(ort, model, audio, onProgress) {
  onProgress?.({ phase: "encode", done: 0, total: 1 });
  const started = performance.now();
  const features = await model.preprocessor.run({
    waveforms: new ort.Tensor("float32", audio, [1, audio.length]),
    waveforms_lens: new ort.Tensor("int64", BigInt64Array.from([BigInt(audio.length)]), [1]),
  });
  const encoded = await model.encoder.run({ audio_signal: features.features, length: features.features_lens });
  const encodeMs = performance.now() - started;
  onProgress?.({ phase: "encode", done: 1, total: 1 });
  const encodedFrames = Number(encoded.encoded_lengths.data[0]);
  const { tokens, frames, calls } = await greedy(ort, model, encoded.outputs, encodedFrames, onProgress);
  const passMs = performance.now() - started, decodeMs = passMs - encodeMs;
  const pieces = tokens.map((i) => model.vocab[i]), timestamps = frames.map((f) => Math.round(f * FRAME_S * 1e6) / 1e6);
  return {
    text: detokenize(model.vocab, tokens), tokens: pieces, timestamps, words: words(pieces, timestamps),
    encodedFrames, decoderCalls: calls, encodeMs, decodeMs, msPerToken: tokens.length ? decodeMs / tokens.length : null,
    passMs,
  };
}
