// Speech recognition with a release folder on onnxruntime-web (WASM): nemo128.onnx -> encoder ->
// greedy TDT decoding with decoder_joint, as onnx-asr does it in Python. The same module runs in the
// page (index.html) and in Node (run-node.mjs); `ort` and the folder reader are passed in.

// precision -> the files onnx-asr pairs for it (`quantization=` in onnx_asr.load_model)
export const PRECISIONS = {
  fp32: { encoder: "encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  fp32_sharded: { encoder: "sharded/encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  fp16: { encoder: "encoder-model.fp16.onnx", decoder: "decoder_joint-model.fp16.onnx" },
  int8: { encoder: "encoder-model.int8.onnx", decoder: "decoder_joint-model.int8.onnx" },
  w8: { encoder: "encoder-model.w8.onnx", decoder: "decoder_joint-model.w8.onnx" },
  w4: { encoder: "encoder-model.w4.onnx", decoder: "decoder_joint-model.w4.onnx" },
  fp32_blockwise: { encoder: "blockwise/encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  int8_blockwise: { encoder: "blockwise/encoder-model.int8.onnx", decoder: "decoder_joint-model.int8.onnx" },
  fp32_local: { encoder: "local/encoder-model.onnx", decoder: "decoder_joint-model.onnx" },
  int8_local: { encoder: "local/encoder-model.int8.onnx", decoder: "decoder_joint-model.int8.onnx" },
};
const SAMPLE_RATE = 16000;
const FRAME_S = 0.01 * 8; // feature hop x encoder subsampling (config.json: subsampling_factor 8)
const MAX_TOKENS_PER_STEP = 10; // onnx-asr's default for TDT

export class InputError extends Error {} // one line for the user, naming the file

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

async function session(ort, folder, name, options) {
  const bytes = await folder.read(name);
  try {
    return await ort.InferenceSession.create(bytes, { ...options, externalData: await externalData(folder, name) });
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`${name}: onnxruntime-web cannot load it (${String(err.message || err).split("\n")[0]})`);
  }
}

export async function loadModel(ort, folder, precision) {
  const files = PRECISIONS[precision];
  if (!files) throw new InputError(`precision '${precision}': choose one of ${Object.keys(PRECISIONS).join(", ")}`);
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  const started = performance.now();
  const vocabText = new TextDecoder().decode(await folder.read("vocab.txt"));
  const vocab = [];
  for (const line of vocabText.split("\n").filter((l) => l)) { // "<token> <id>", as onnx-asr reads it
    vocab[Number(line.slice(line.lastIndexOf(" ") + 1))] = line.slice(0, line.lastIndexOf(" ")).replaceAll("\u2581", " ");
  }
  const model = {
    vocab, blank: vocab.indexOf("<blk>"),
    preprocessor: await session(ort, folder, "nemo128.onnx", options),
    encoder: await session(ort, folder, files.encoder, options),
    decoder: await session(ort, folder, files.decoder, options),
  };
  model.loadMs = performance.now() - started;
  return model;
}

function zeros(ort, meta) {
  const shape = meta.shape.map((d) => (typeof d === "number" ? d : 1)); // [layers, batch=1, hidden]
  return new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
}

// onnx-asr's greedy TDT loop: argmax token, argmax duration (its index is the frame step)
async function greedy(ort, model, encoded, frames) {
  const [, dim, total] = encoded.dims;
  const states = model.decoder.inputMetadata.filter((m) => m.name.startsWith("input_states"));
  let state = [zeros(ort, states[0]), zeros(ort, states[1])];
  const tokens = [], steps = [];
  for (let t = 0, emitted = 0; t < frames; ) {
    const column = new Float32Array(dim);
    for (let d = 0; d < dim; d++) column[d] = encoded.data[d * total + t];
    const last = tokens.length ? tokens[tokens.length - 1] : model.blank;
    const out = await model.decoder.run({
      encoder_outputs: new ort.Tensor("float32", column, [1, dim, 1]),
      targets: new ort.Tensor("int32", Int32Array.from([last]), [1, 1]),
      target_length: new ort.Tensor("int32", Int32Array.from([1]), [1]),
      input_states_1: state[0], input_states_2: state[1],
    });
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
  return { tokens, frames: steps };
}

// tokens -> text with onnx-asr's spacing rule (a leading space and a space before a non-word go)
export function detokenize(vocab, tokens) {
  return tokens.map((i) => vocab[i]).join("").replace(/^\s|\s\B|(\s)\b/g, (_, keep) => (keep ? " " : ""));
}

export async function transcribe(ort, model, audio) {
  const started = performance.now();
  const features = await model.preprocessor.run({
    waveforms: new ort.Tensor("float32", audio, [1, audio.length]),
    waveforms_lens: new ort.Tensor("int64", BigInt64Array.from([BigInt(audio.length)]), [1]),
  });
  const encoded = await model.encoder.run({ audio_signal: features.features, length: features.features_lens });
  const encodeMs = performance.now() - started;
  const { tokens, frames } = await greedy(ort, model, encoded.outputs, Number(encoded.encoded_lengths.data[0]));
  return {
    text: detokenize(model.vocab, tokens),
    tokens: tokens.map((i) => model.vocab[i]),
    timestamps: frames.map((f) => Math.round(f * FRAME_S * 1e6) / 1e6),
    encodeMs, passMs: performance.now() - started,
  };
}
