/**
 * What the language-model pretraining and the LM demo share: where the
 * pretrained base lives, the Brown texts as byte-level token ids, training
 * windows in a fresh seeded order each epoch, evaluation windows that never
 * cross a file, and bits per byte over them.
 *
 * The model reads bytes (the byte-level tokenizer's ids 0-255; the Brown text
 * is ASCII, so a byte is a character); files are joined into one training
 * stream with the end-of-text token between them, as GPT-2 was trained.
 */
import * as path from 'node:path';

import { autograd, random } from '../../lib';
import type { CausalLM } from '../../lib/models';
import { type Tokenizer, byteLevelTokenizer } from '../../lib/tokenizers';
import type { BrownText } from './brown';

/** The pretrained base, in Hugging Face's layout: config.json, model.safetensors, tokenizer.json. */
export const LM_BASE_DIR = path.join(__dirname, '..', '..', 'assets', 'brown-gpt2');
/** How the base was made (split, steps, time, losses), written by npm run pretrain:lm. */
export const PRETRAINING_FILE = 'pretraining.json';
export const END_OF_TEXT = '<|endoftext|>';

/** The tokenizer the base was trained with: bytes, then <|endoftext|> (id 256). */
export function brownTokenizer(): Tokenizer {
  return byteLevelTokenizer({ bosToken: END_OF_TEXT, eosToken: END_OF_TEXT });
}

/** Every byte class the corpus has (tab, newline, printable ASCII) and a multi-byte character. */
const BYTE_PROBE = `\t\n${Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join('')}\u00e9\u2014`;

/**
 * The texts' ids, one array per file (no special tokens). The tokenizer must
 * be byte-level (each UTF-8 byte its own id, as the base was trained): checked
 * on a probe text, the corpus is then read as its UTF-8 bytes directly, which
 * gives the same ids as tokenizer.encode at a 3,000th of its time (measured:
 * 39 s for the 4.3 MB of non-fiction through @huggingface/tokenizers).
 */
export function encodeTexts(tokenizer: Tokenizer, texts: readonly BrownText[]): Int32Array[] {
  const probe = tokenizer.encode(BYTE_PROBE, { addSpecialTokens: false }).ids;
  const bytes = Array.from(Buffer.from(BYTE_PROBE, 'utf8'));
  if (probe.length !== bytes.length || probe.some((id, i) => id !== bytes[i])) {
    throw new Error(
      'the tokenizer is not byte-level (ids 0-255 for the UTF-8 bytes): the Brown base model reads bytes',
    );
  }
  return texts.map((t) => Int32Array.from(Buffer.from(t.text, 'utf8')));
}

/** The files' ids in one stream, each file followed by `separator` (the end-of-text id). */
export function joinFiles(files: readonly Int32Array[], separator: number): Int32Array {
  const stream = new Int32Array(files.reduce((n, f) => n + f.length + 1, 0));
  let at = 0;
  for (const file of files) {
    stream.set(file, at);
    stream[at + file.length] = separator;
    at += file.length + 1;
  }
  return stream;
}

/**
 * Training batches from a stream cut into consecutive windows of `context`
 * tokens (the tail shorter than a window is left out): each epoch visits every
 * window once in a Philox order keyed by the epoch; a batch is `batchSize`
 * consecutive windows of that order (an epoch's last short batch is dropped,
 * so every step sees as many tokens).
 */
export class WindowBatches {
  readonly #stream: Int32Array;
  readonly #context: number;
  readonly #batchSize: number;
  readonly #seed: number;
  readonly windows: number;
  readonly batchesPerEpoch: number;
  #epoch = -1;
  #order: Uint32Array = new Uint32Array(0);

  constructor(stream: Int32Array, options: { context: number; batchSize: number; seed: number }) {
    this.#stream = stream;
    this.#context = options.context;
    this.#batchSize = options.batchSize;
    this.#seed = options.seed;
    this.windows = Math.floor(stream.length / options.context);
    this.batchesPerEpoch = Math.floor(this.windows / options.batchSize);
    if (this.batchesPerEpoch < 1) {
      throw new Error(
        `${stream.length} tokens make ${this.windows} windows of ${options.context}: too few for a batch of ${options.batchSize}`,
      );
    }
  }

  /** The windows of step `index` (counting from 0 over all epochs), as rows of ids. */
  batch(index: number): number[][] {
    const epoch = Math.floor(index / this.batchesPerEpoch);
    if (epoch !== this.#epoch) {
      this.#order = random.permutation(this.windows, { seed: this.#seed, key: epoch + 1 });
      this.#epoch = epoch;
    }
    const first = (index % this.batchesPerEpoch) * this.#batchSize;
    return Array.from(this.#order.subarray(first, first + this.#batchSize), (w) =>
      Array.from(this.#stream.subarray(w * this.#context, (w + 1) * this.#context)),
    );
  }
}

/**
 * Evaluation windows of `context` tokens, each inside one file (so every
 * predicted token is a byte of that file): consecutive windows of every file,
 * then, past `maxWindows`, that many spread evenly over them (the same ones on
 * every run).
 */
export function evaluationWindows(files: readonly Int32Array[], context: number, maxWindows: number): number[][] {
  const all: number[][] = [];
  for (const file of files) {
    for (let start = 0; start + context <= file.length; start += context) {
      all.push(Array.from(file.subarray(start, start + context)));
    }
  }
  if (all.length <= maxWindows) return all;
  return Array.from({ length: maxWindows }, (_, i) => all[Math.floor((i * all.length) / maxWindows)]);
}

/**
 * Bits per byte of `model` over `windows`: the mean next-token cross-entropy
 * (nats) of every predicted byte, divided by ln 2. Batches of `batchSize`
 * windows, without gradients.
 */
export function bitsPerByte(model: CausalLM, windows: readonly number[][], batchSize: number): number {
  let nats = 0;
  let predicted = 0;
  for (let start = 0; start < windows.length; start += batchSize) {
    const rows = windows.slice(start, start + batchSize);
    const loss = autograd.noGrad(() => autograd.tidy(() => model.loss(rows).item()));
    const count = rows.length * (rows[0].length - 1);
    nats += loss * count;
    predicted += count;
  }
  return nats / predicted / Math.LN2;
}
