/**
 * Small but faithful tokenizer.json fixtures in the form transformers writes, and
 * reference BPE encoders written here, independently of the library, to check
 * the ids it gives.
 *
 * GPT-2: the 256 byte tokens in GPT-2's own order (so single-byte ids are the
 * real GPT-2 ids: ',' 11, 'Ġ' 220, 'Ċ' 198), the first merges of GPT-2's
 * merges.txt with their real ids (" the" is 262), and <|endoftext|> at 50256.
 * LLaMA: SentencePiece-style BPE with byte fallback laid out as Llama 2's
 * (<unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> at 3..258), either with Llama 2's
 * Prepend/Replace normalizer or with the newer Metaspace pre-tokenizer.
 */

/** GPT-2's bytes_to_unicode: byte -> the printable character that stands for it. */
export const GPT2_BYTE_CHARS: string[] = (() => {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const chars = new Array<string>(256);
  printable.forEach((b) => (chars[b] = String.fromCodePoint(b)));
  let next = 0;
  for (let b = 0; b < 256; b++) if (chars[b] === undefined) chars[b] = String.fromCodePoint(256 + next++);
  return chars;
})();

/** The byte order of GPT-2's vocabulary ids 0..255: printable bytes first, then the rest. */
function gpt2ByteOrder(): number[] {
  const order: number[] = [];
  for (let b = 0; b < 256; b++) if (GPT2_BYTE_CHARS[b].codePointAt(0) === b) order.push(b);
  for (let b = 0; b < 256; b++) if (GPT2_BYTE_CHARS[b].codePointAt(0) !== b) order.push(b);
  return order;
}

/** The first 23 lines of GPT-2's merges.txt (ids 256..278). */
export const GPT2_MERGES = [
  'Ġ t', 'Ġ a', 'h e', 'i n', 'r e', 'o n', 'Ġt he', 'e r', 'Ġ s', 'a t', 'Ġ w', 'Ġ o',
  'e n', 'Ġ c', 'i t', 'i s', 'a n', 'o r', 'e s', 'Ġ b', 'e d', 'Ġ f', 'in g',
]; // prettier-ignore

export function gpt2TokenizerJson(mergesAsPairs = false): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  gpt2ByteOrder().forEach((byte, id) => (vocab[GPT2_BYTE_CHARS[byte]] = id));
  GPT2_MERGES.forEach((merge, i) => (vocab[merge.replace(' ', '')] = 256 + i));
  vocab['<|endoftext|>'] = 50256;
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 50256,
        content: '<|endoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: true,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: mergesAsPairs ? GPT2_MERGES.map((m) => m.split(' ')) : GPT2_MERGES,
    },
  };
}

export const GPT2_TOKENIZER_CONFIG = {
  add_prefix_space: false,
  bos_token: '<|endoftext|>',
  eos_token: '<|endoftext|>',
  unk_token: '<|endoftext|>',
  model_max_length: 1024,
  tokenizer_class: 'GPT2Tokenizer',
};

/** Pieces after the 259 reserved ids, then merges (each adding its result). */
export const LLAMA_PIECES = ['▁', 'e', 'h', 'l', 'o', 'w', 'r', 'd', 't', 'a', 'c', 's'];
export const LLAMA_MERGES = [
  '▁ t',
  'h e',
  'l l',
  '▁t he',
  '▁ w',
  'o r',
  '▁w or',
  'l d',
  '▁wor ld',
  'he ll',
  '▁ c',
  'a t',
  '▁c at',
];

export function llamaTokenizerJson(form: 'normalizer' | 'metaspace'): Record<string, unknown> {
  const special = ['<unk>', '<s>', '</s>'];
  const vocab: Record<string, number> = {};
  special.forEach((token, id) => (vocab[token] = id));
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  let id = 259;
  for (const piece of LLAMA_PIECES) vocab[piece] = id++;
  for (const merge of LLAMA_MERGES) vocab[merge.replace(' ', '')] = id++;
  const bos = { SpecialToken: { id: '<s>', type_id: 0 } };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((content, i) => ({
      id: i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer:
      form === 'normalizer'
        ? {
            type: 'Sequence',
            normalizers: [
              { type: 'Prepend', prepend: '▁' },
              { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
            ],
          }
        : null,
    pre_tokenizer:
      form === 'metaspace' ? { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false } : null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [bos, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        bos,
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: LLAMA_MERGES,
    },
  };
}

/** Special tokens as AddedToken objects, as transformers writes them for LLaMA. */
export const LLAMA_TOKENIZER_CONFIG = {
  add_bos_token: true,
  add_eos_token: false,
  bos_token: {
    __type: 'AddedToken',
    content: '<s>',
    lstrip: false,
    normalized: false,
    rstrip: false,
    single_word: false,
  },
  eos_token: {
    __type: 'AddedToken',
    content: '</s>',
    lstrip: false,
    normalized: false,
    rstrip: false,
    single_word: false,
  },
  unk_token: {
    __type: 'AddedToken',
    content: '<unk>',
    lstrip: false,
    normalized: false,
    rstrip: false,
    single_word: false,
  },
  pad_token: null,
  padding_side: 'left',
  legacy: false,
  tokenizer_class: 'LlamaTokenizer',
};

/** Applies merges by rank, lowest first, until none applies: the BPE rule. */
function applyMerges(parts: string[], merges: readonly string[]): string[] {
  const ranks = new Map(merges.map((merge, rank) => [merge, rank]));
  for (;;) {
    let best = -1;
    let bestRank = Infinity;
    for (let i = 0; i + 1 < parts.length; i++) {
      const rank = ranks.get(`${parts[i]} ${parts[i + 1]}`);
      if (rank !== undefined && rank < bestRank) [best, bestRank] = [i, rank];
    }
    if (best < 0) return parts;
    parts = [...parts.slice(0, best), parts[best] + parts[best + 1], ...parts.slice(best + 2)];
  }
}

/** GPT-2's pre-tokenizer pattern. */
const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Reference GPT-2 encoding (no special tokens in `text`). */
export function referenceGpt2Encode(text: string, json = gpt2TokenizerJson()): number[] {
  const vocab = (json.model as { vocab: Record<string, number> }).vocab;
  const ids: number[] = [];
  for (const word of text.match(GPT2_PATTERN) ?? []) {
    const parts = [...Buffer.from(word, 'utf8')].map((byte) => GPT2_BYTE_CHARS[byte]);
    ids.push(...applyMerges(parts, GPT2_MERGES).map((piece) => vocab[piece]));
  }
  return ids;
}

/** Reference LLaMA encoding: <s>, '▁' for spaces and in front, merges, then byte fallback. */
export function referenceLlamaEncode(text: string, json = llamaTokenizerJson('normalizer')): number[] {
  const vocab = (json.model as { vocab: Record<string, number> }).vocab;
  const parts = applyMerges([...`▁${text.replaceAll(' ', '▁')}`], LLAMA_MERGES);
  const ids = [1];
  for (const piece of parts) {
    if (piece in vocab) ids.push(vocab[piece]);
    else ids.push(...[...Buffer.from(piece, 'utf8')].map((byte) => 3 + byte));
  }
  return ids;
}
