/**
 * Tokenizers from a model's tokenizer.json (and tokenizer_config.json), run by
 * @huggingface/tokenizers (pure JavaScript, no network: we read the files and
 * hand it the parsed JSON). The library does the tokenizer's own work
 * (normalizers, pre-tokenizers, BPE with merges or byte fallback, post
 * processors, decoders); this file adds what training and generation need on
 * top: special tokens from the config, truncation that keeps the special tokens,
 * batches padded on either side with attention masks, id checks, and an
 * incremental decoder for streaming.
 *
 * byteLevelTokenizer() builds, as a tokenizer.json, the tokenizer for models
 * trained here: ids 0-255 are the bytes of the UTF-8 text, special tokens follow.
 * It goes through the same library path, so a saved one loads like any other
 * (in Python's `tokenizers` too).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Tokenizer as LibraryTokenizer } from '@huggingface/tokenizers';

import { writeFileAtomic } from '../io/atomic';

export const TOKENIZER_FILE = 'tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';

export type PaddingSide = 'left' | 'right';

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (e.g. LLaMA's <s>) as its post-processor says (default true). */
  addSpecialTokens?: boolean;
  /** Keep at most this many tokens, special tokens included (they are kept; the text is cut). */
  maxLength?: number;
  /** Which end of the text truncation removes (default 'right'). */
  truncationSide?: PaddingSide;
}

export interface BatchEncodeOptions extends EncodeOptions {
  /** Pad every row to the longest one (default), to maxLength, or not at all. */
  padding?: 'longest' | 'max_length' | false;
  /** Default: tokenizer_config.json's padding_side, else 'right'. Generation wants 'left'. */
  paddingSide?: PaddingSide;
  /** Default: the tokenizer's pad token; GPT-2 has none, so pass one (its eos is the usual choice). */
  padTokenId?: number;
}

export interface Encoding {
  ids: number[];
  /** 1 for a token, 0 for padding. */
  attentionMask: number[];
}

export interface DecodeOptions {
  /** Leave out special tokens (default false). */
  skipSpecialTokens?: boolean;
}

interface SpecialTokens {
  bos: string | null;
  eos: string | null;
  pad: string | null;
  unk: string | null;
}

function parseJsonFile(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`tokenizer file ${file}: cannot read it: ${(err as Error).message}`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`tokenizer file ${file}: not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A special token in tokenizer_config.json: a string or an AddedToken object {content}. */
function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (isObject(value) && typeof value.content === 'string') return value.content;
  return null;
}

function checkCount(value: unknown, what: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 1) {
    throw new Error(`${what} must be a positive integer, got ${String(value)}`);
  }
  return value as number;
}

export class Tokenizer {
  /** Where it was read from, for error messages. */
  readonly source: string;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly unkTokenId: number | null;
  /** From tokenizer_config.json (default 'right'). */
  readonly paddingSide: PaddingSide;
  readonly #library: LibraryTokenizer;
  readonly #json: Record<string, unknown>;
  readonly #config: Record<string, unknown>;
  readonly #specialIds: Set<number>;

  /** From parsed tokenizer.json and tokenizer_config.json contents; `source` names them in errors. */
  constructor(json: unknown, config: unknown = {}, source = TOKENIZER_FILE) {
    this.source = source;
    if (!isObject(json)) throw new Error(`tokenizer file ${source}: must be a JSON object`);
    if (!isObject(config)) throw new Error(`tokenizer config for ${source}: must be a JSON object`);
    try {
      this.#library = new LibraryTokenizer(json, config);
    } catch (err) {
      throw new Error(`tokenizer file ${source}: not a tokenizer the library can build: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.#json = json;
    this.#config = config;
    const special: SpecialTokens = {
      bos: tokenContent(config.bos_token),
      eos: tokenContent(config.eos_token),
      pad: tokenContent(config.pad_token),
      unk: tokenContent(config.unk_token),
    };
    const idOf = (role: keyof SpecialTokens): number | null => {
      const token = special[role];
      if (token === null) return null;
      const id = this.#library.token_to_id(token);
      if (id === undefined)
        throw new Error(`tokenizer config for ${source}: ${role}_token "${token}" is not in the vocabulary`);
      return id;
    };
    this.bosTokenId = idOf('bos');
    this.eosTokenId = idOf('eos');
    this.padTokenId = idOf('pad');
    this.unkTokenId = idOf('unk');
    const side = config.padding_side ?? 'right';
    if (side !== 'left' && side !== 'right') {
      throw new Error(`tokenizer config for ${source}: padding_side must be 'left' or 'right', got ${String(side)}`);
    }
    this.paddingSide = side;
    this.#checkAddFlags(config);
    this.#specialIds = new Set(
      [...this.#library.get_added_tokens_decoder()].filter(([, token]) => token.special).map(([id]) => id),
    );
  }

  /**
   * transformers rebuilds a LLaMA tokenizer's post-processor from add_bos_token /
   * add_eos_token; we use tokenizer.json's as it is, so a config whose flags say
   * otherwise is refused rather than encoded differently.
   */
  #checkAddFlags(config: Record<string, unknown>): void {
    const withSpecial = this.#library.encode('a', { add_special_tokens: true }).ids;
    const plain = this.#library.encode('a', { add_special_tokens: false }).ids;
    const start = findRun(withSpecial, plain);
    const added = { start: withSpecial.slice(0, start), end: withSpecial.slice(start + plain.length) };
    for (const [flag, id, where] of [
      ['add_bos_token', this.bosTokenId, 'start'],
      ['add_eos_token', this.eosTokenId, 'end'],
    ] as const) {
      const value = config[flag];
      if (value === undefined || value === null) continue;
      if (typeof value !== 'boolean')
        throw new Error(`tokenizer config for ${this.source}: ${flag} must be true or false`);
      const adds = id !== null && added[where].includes(id);
      if (adds !== value) {
        throw new Error(
          `tokenizer config for ${this.source}: ${flag} is ${value} but tokenizer.json's post-processor ` +
            `${adds ? 'adds' : 'does not add'} that token at the ${where}; make the two agree`,
        );
      }
    }
  }

  /** A tokenizer.json, with tokenizer_config.json from `configFile` when given. */
  static fromFile(file: string, configFile?: string): Tokenizer {
    const config = configFile === undefined ? {} : parseJsonFile(configFile);
    return new Tokenizer(parseJsonFile(file), config, file);
  }

  /** A model folder's tokenizer.json and, if present, tokenizer_config.json. */
  static fromFolder(folder: string): Tokenizer {
    const configFile = path.join(folder, TOKENIZER_CONFIG_FILE);
    return Tokenizer.fromFile(path.join(folder, TOKENIZER_FILE), fs.existsSync(configFile) ? configFile : undefined);
  }

  /** Number of ids: one past the largest id of the vocabulary and added tokens. */
  get vocabSize(): number {
    let largest = -1;
    for (const id of this.#library.get_vocab(true).values()) largest = Math.max(largest, id);
    return largest + 1;
  }

  tokenToId(token: string): number | undefined {
    return this.#library.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.#library.id_to_token(id);
  }

  isSpecial(id: number): boolean {
    return this.#specialIds.has(id);
  }

  /** Token ids of one text, with its attention mask (all ones). */
  encode(text: string, options: EncodeOptions = {}): Encoding {
    if (typeof text !== 'string') throw new Error(`encode: text must be a string, got ${typeof text}`);
    const addSpecial = options.addSpecialTokens ?? true;
    let ids = this.#library.encode(text, { add_special_tokens: addSpecial }).ids;
    if (options.maxLength !== undefined) {
      const maxLength = checkCount(options.maxLength, 'encode: maxLength');
      if (ids.length > maxLength)
        ids = this.#truncate(text, ids, addSpecial, maxLength, options.truncationSide ?? 'right');
    }
    return { ids, attentionMask: ids.map(() => 1) };
  }

  /** Cuts the text's tokens, keeping the special tokens the post-processor put around them. */
  #truncate(text: string, ids: number[], addSpecial: boolean, maxLength: number, side: PaddingSide): number[] {
    if (side !== 'left' && side !== 'right')
      throw new Error(`encode: truncationSide must be 'left' or 'right', got ${String(side)}`);
    const content = addSpecial ? this.#library.encode(text, { add_special_tokens: false }).ids : ids;
    const start = addSpecial ? findRun(ids, content) : 0;
    const added = ids.length - content.length;
    if (maxLength <= added && content.length > 0) {
      throw new Error(`encode: maxLength ${maxLength} leaves no room for text after ${added} special tokens`);
    }
    const keep = maxLength - added;
    const kept = side === 'right' ? content.slice(0, keep) : content.slice(content.length - keep);
    return [...ids.slice(0, start), ...kept, ...ids.slice(start + content.length)];
  }

  /**
   * Several texts as rectangular rows: padded with the pad token on `paddingSide`
   * (attention mask 0 there) to the longest row or to maxLength.
   */
  encodeBatch(
    texts: readonly string[],
    options: BatchEncodeOptions = {},
  ): { ids: number[][]; attentionMask: number[][] } {
    if (!Array.isArray(texts)) throw new Error('encodeBatch: texts must be an array of strings');
    const rows = texts.map((text) => this.encode(text, options));
    const padding = options.padding ?? 'longest';
    if (padding === false) return { ids: rows.map((r) => r.ids), attentionMask: rows.map((r) => r.attentionMask) };
    if (padding !== 'longest' && padding !== 'max_length') {
      throw new Error(`encodeBatch: padding must be 'longest', 'max_length' or false, got ${String(padding)}`);
    }
    if (padding === 'max_length' && options.maxLength === undefined)
      throw new Error("encodeBatch: padding 'max_length' needs maxLength");
    const side = options.paddingSide ?? this.paddingSide;
    if (side !== 'left' && side !== 'right')
      throw new Error(`encodeBatch: paddingSide must be 'left' or 'right', got ${String(side)}`);
    const padId = options.padTokenId ?? this.padTokenId;
    if (padId === null || !this.#isId(padId)) {
      throw new Error(
        `encodeBatch: ${padId === null ? `${this.source} has no pad token` : `padTokenId ${padId} is not in the vocabulary`}; ` +
          'pass padTokenId (for GPT-2, its eos token is the usual choice)',
      );
    }
    const width = padding === 'max_length' ? options.maxLength! : Math.max(0, ...rows.map((r) => r.ids.length));
    const pad = (row: number[], value: number) => {
      const fill = new Array<number>(width - row.length).fill(value);
      return side === 'left' ? [...fill, ...row] : [...row, ...fill];
    };
    return { ids: rows.map((r) => pad(r.ids, padId)), attentionMask: rows.map((r) => pad(r.attentionMask, 0)) };
  }

  #isId(id: unknown): boolean {
    return Number.isSafeInteger(id) && this.#library.id_to_token(id as number) !== undefined;
  }

  /** Throws naming the first id that is not an integer of the vocabulary. */
  checkIds(ids: readonly number[], what = 'ids'): void {
    if (!Array.isArray(ids)) throw new Error(`${what} must be an array of token ids`);
    const bad = ids.findIndex((id) => !this.#isId(id));
    if (bad >= 0) {
      throw new Error(
        `${what}[${bad}] is ${String(ids[bad])}, not a token id of ${this.source} (0..${this.vocabSize - 1})`,
      );
    }
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    this.checkIds(ids, 'decode: ids');
    if (ids.length === 0) return ''; // the library refuses an empty list
    return this.#library.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** A decoder for ids arriving one at a time (see IncrementalDecoder). */
  incrementalDecoder(options: DecodeOptions = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, options);
  }

  /** Writes tokenizer.json and tokenizer_config.json into `folder` (created if needed), each atomically. */
  save(folder: string): void {
    fs.mkdirSync(folder, { recursive: true });
    writeFileAtomic(path.join(folder, TOKENIZER_FILE), `${JSON.stringify(this.#json, null, 2)}\n`);
    writeFileAtomic(path.join(folder, TOKENIZER_CONFIG_FILE), `${JSON.stringify(this.#config, null, 2)}\n`);
  }
}

/** Index where `run` occurs in `ids` (the text's tokens inside the special ones). */
function findRun(ids: readonly number[], run: readonly number[]): number {
  for (let start = 0; start + run.length <= ids.length; start++) {
    if (run.every((id, i) => ids[start + i] === id)) return start;
  }
  throw new Error('the post-processor changed the text tokens, not only added special tokens around them');
}

/**
 * Turns ids arriving one at a time into text as soon as it is final. A token
 * may end inside a multi-byte UTF-8 character (byte-level BPE, byte fallback),
 * and some decoders change a token's text by what precedes it (SentencePiece's
 * leading space), so each step decodes the ids since the last emitted text and
 * returns only the new part, holding it back while it ends in an incomplete
 * character (U+FFFD). flush() returns whatever is held back.
 */
export class IncrementalDecoder {
  readonly #tokenizer: Tokenizer;
  readonly #options: DecodeOptions;
  #ids: number[] = [];
  /** ids[prefix..read) were decoded and emitted; their text is the context for what follows. */
  #prefix = 0;
  #read = 0;

  constructor(tokenizer: Tokenizer, options: DecodeOptions = {}) {
    this.#tokenizer = tokenizer;
    this.#options = options;
  }

  /** Adds one id; returns the text it completes ('' while a character is incomplete). */
  push(id: number): string {
    this.#tokenizer.checkIds([id], 'IncrementalDecoder.push: id');
    this.#ids.push(id);
    const before = this.#tokenizer.decode(this.#ids.slice(this.#prefix, this.#read), this.#options);
    const after = this.#tokenizer.decode(this.#ids.slice(this.#prefix), this.#options);
    if (after.length <= before.length || after.endsWith('\uFFFD')) return '';
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    return after.slice(before.length);
  }

  /** The text not yet returned (an incomplete character comes out as U+FFFD). */
  flush(): string {
    const before = this.#tokenizer.decode(this.#ids.slice(this.#prefix, this.#read), this.#options);
    const after = this.#tokenizer.decode(this.#ids.slice(this.#prefix), this.#options);
    this.#prefix = this.#read = this.#ids.length;
    return after.slice(before.length);
  }
}

export interface ByteLevelOptions {
  bosToken?: string;
  eosToken?: string;
  padToken?: string;
  /** More special tokens (ids after bos, eos and pad, in this order). */
  extraSpecialTokens?: readonly string[];
}

/**
 * The tokenizer of models trained here: ids 0-255 are the UTF-8 bytes of the
 * text (a BPE with no merges whose vocabulary is the 256 byte-fallback tokens),
 * special tokens from 256. Encoding adds no special tokens by itself.
 */
export function byteLevelTokenizer(options: ByteLevelOptions = {}): Tokenizer {
  const specials = [options.bosToken, options.eosToken, options.padToken, ...(options.extraSpecialTokens ?? [])].filter(
    (token, i, all): token is string => token !== undefined && all.indexOf(token) === i,
  );
  const vocab: Record<string, number> = {};
  for (let byte = 0; byte < 256; byte++) vocab[`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`] = byte;
  specials.forEach((token, i) => {
    if (typeof token !== 'string' || token.length === 0 || token in vocab) {
      throw new Error(`byteLevelTokenizer: special token ${JSON.stringify(token)} must be a new non-empty string`);
    }
    vocab[token] = 256 + i;
  });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, i) => ({
      id: 256 + i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const config: Record<string, unknown> = { tokenizer_class: 'PreTrainedTokenizerFast' };
  if (options.bosToken !== undefined) config.bos_token = options.bosToken;
  if (options.eosToken !== undefined) config.eos_token = options.eosToken;
  if (options.padToken !== undefined) config.pad_token = options.padToken;
  return new Tokenizer(json, config, 'byteLevelTokenizer');
}
