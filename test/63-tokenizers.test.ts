import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Tokenizer, byteLevelTokenizer } from '../lib/tokenizers';
import {
  GPT2_TOKENIZER_CONFIG,
  LLAMA_TOKENIZER_CONFIG,
  gpt2TokenizerJson,
  llamaTokenizerJson,
  referenceGpt2Encode,
  referenceLlamaEncode,
} from './helpers/tokenizers';

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-tok-'));
});

afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Writes tokenizer.json (+ tokenizer_config.json) into a folder and loads it from there. */
function fromFiles(json: object, config?: object): Tokenizer {
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
  if (config) fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return Tokenizer.fromFolder(dir);
}

const TEXTS = [
  'the cat is eating',
  'Hello, world.\n',
  '  two  spaces and\ttabs\n\nnew lines',
  "it's 2024: they're here, 42 times!",
  'héllo wörld € 日本語 🙂',
  'the the the',
];

describe('GPT-2 byte-level BPE (tokenizer.json as transformers writes it)', () => {
  test('ids worked out by hand, including real GPT-2 ids', () => {
    const t = fromFiles(gpt2TokenizerJson(), GPT2_TOKENIZER_CONFIG);
    expect(t.encode(' the').ids).toEqual([262]); // GPT-2's " the"
    // H e l l o , Ġw or l d . Ċ
    expect(t.encode('Hello, world.\n').ids).toEqual([39, 68, 75, 75, 78, 11, 266, 273, 75, 67, 13, 198]);
    expect(t.encode('<|endoftext|> x').ids).toEqual([50256, 220, 87]);
    expect(t.eosTokenId).toBe(50256);
    expect(t.bosTokenId).toBe(50256);
    expect(t.padTokenId).toBeNull();
    expect(t.vocabSize).toBe(50257);
  });

  test.each([false, true])('matches a reference BPE written in the test (merges as pairs: %s)', (pairs) => {
    const json = gpt2TokenizerJson(pairs);
    const t = new Tokenizer(json, GPT2_TOKENIZER_CONFIG);
    for (const text of TEXTS) {
      const ids = t.encode(text).ids;
      expect(ids).toEqual(referenceGpt2Encode(text, json));
      expect(t.decode(ids)).toBe(text);
    }
  });
});

describe.each(['normalizer', 'metaspace'] as const)(
  'LLaMA SentencePiece-style BPE with byte fallback (%s form)',
  (form) => {
    const reference = (text: string) =>
      // Metaspace with prepend_scheme 'first' adds no '▁' when the text already starts with a space.
      form === 'metaspace' && text.startsWith(' ')
        ? [1, ...referenceLlamaEncode(text.slice(1)).slice(1)]
        : referenceLlamaEncode(text);

    test('ids worked out by hand: <s>, merges, bytes for characters not in the vocabulary', () => {
      const t = fromFiles(llamaTokenizerJson(form), LLAMA_TOKENIZER_CONFIG);
      const id = (piece: string) => t.tokenToId(piece)!;
      expect(t.encode('the world€').ids).toEqual([1, id('▁the'), id('▁world'), 3 + 0xe2, 3 + 0x82, 3 + 0xac]);
      expect(t.encode('hello', { addSpecialTokens: false }).ids).toEqual([id('▁'), id('hell'), id('o')]);
      expect([t.bosTokenId, t.eosTokenId, t.unkTokenId, t.padTokenId]).toEqual([1, 2, 0, null]);
      expect(t.paddingSide).toBe('left');
    });

    test('matches a reference encoder written in the test; decodes back', () => {
      const t = new Tokenizer(llamaTokenizerJson(form), LLAMA_TOKENIZER_CONFIG);
      for (const text of [...TEXTS, 'the cat sat on the wall']) {
        const ids = t.encode(text).ids;
        expect(ids).toEqual(reference(text));
        // The decoder strips one leading space, which Metaspace did not add to a text starting with one.
        const lost = form === 'metaspace' && text.startsWith(' ') ? 1 : 0;
        expect(t.decode(ids, { skipSpecialTokens: true })).toBe(text.slice(lost));
      }
    });
  },
);

describe('batches, padding and truncation', () => {
  test('left and right padding with attention masks; pad id from the config or the caller', () => {
    const t = new Tokenizer(llamaTokenizerJson('normalizer'), { ...LLAMA_TOKENIZER_CONFIG, pad_token: '</s>' });
    const a = t.encode('the cat').ids;
    const b = t.encode('hello world€').ids;
    expect(a.length).toBeLessThan(b.length);
    const left = t.encodeBatch(['the cat', 'hello world€']);
    const gap = b.length - a.length;
    expect(left.ids).toEqual([[...new Array(gap).fill(2), ...a], b]);
    expect(left.attentionMask).toEqual([[...new Array(gap).fill(0), ...a.map(() => 1)], b.map(() => 1)]);
    const right = t.encodeBatch(['the cat', 'hello world€'], { paddingSide: 'right', padTokenId: 0 });
    expect(right.ids[0]).toEqual([...a, ...new Array(gap).fill(0)]);
    expect(right.attentionMask[0]).toEqual([...a.map(() => 1), ...new Array(gap).fill(0)]);
    const fixed = t.encodeBatch(['the cat'], { padding: 'max_length', maxLength: 8 });
    expect(fixed.ids[0]).toHaveLength(8);
    expect(t.encodeBatch(['the cat', 'hello'], { padding: false }).ids.map((r) => r.length)).toEqual([3, 4]);
  });

  test('truncation keeps the special tokens and cuts the chosen side', () => {
    const t = new Tokenizer(llamaTokenizerJson('normalizer'), LLAMA_TOKENIZER_CONFIG);
    const full = t.encode('hello world€').ids; // <s> ▁ hell o ▁world <0xE2> <0x82> <0xAC>
    expect(t.encode('hello world€', { maxLength: 4 }).ids).toEqual(full.slice(0, 4));
    expect(t.encode('hello world€', { maxLength: 4, truncationSide: 'left' }).ids).toEqual([1, ...full.slice(-3)]);
    expect(t.encode('hello world€', { maxLength: 100 }).ids).toEqual(full);
    expect(() => t.encode('hello', { maxLength: 1 })).toThrow(
      'maxLength 1 leaves no room for text after 1 special tokens',
    );
    expect(() => t.encode('hello', { maxLength: 0 })).toThrow('maxLength must be a positive integer');
  });

  test('GPT-2 has no pad token: padding asks for one by name', () => {
    const t = new Tokenizer(gpt2TokenizerJson(), GPT2_TOKENIZER_CONFIG);
    expect(() => t.encodeBatch(['a', 'bc'])).toThrow('has no pad token; pass padTokenId (for GPT-2, its eos token');
    expect(() => t.encodeBatch(['a', 'bc'], { padTokenId: 60000 })).toThrow(
      'padTokenId 60000 is not in the vocabulary',
    );
    expect(t.encodeBatch(['a', ' the'], { padTokenId: 50256, paddingSide: 'left' }).ids).toEqual([[64], [262]]);
  });
});

describe('incremental decoding for streaming', () => {
  const cases: [string, () => Tokenizer][] = [
    ['GPT-2', () => new Tokenizer(gpt2TokenizerJson(), GPT2_TOKENIZER_CONFIG)],
    ['LLaMA', () => new Tokenizer(llamaTokenizerJson('normalizer'), LLAMA_TOKENIZER_CONFIG)],
    ['LLaMA metaspace', () => new Tokenizer(llamaTokenizerJson('metaspace'), LLAMA_TOKENIZER_CONFIG)],
    ['byte-level', () => byteLevelTokenizer({ eosToken: '<eos>' })],
  ];

  test.each(cases)('%s: pieces add up to the full decode, never with half a character', (_, make) => {
    const t = make();
    for (const text of [...TEXTS, 'é€🙂 日本']) {
      const ids = t.encode(text).ids;
      const decoder = t.incrementalDecoder({ skipSpecialTokens: true });
      const pieces = ids.map((id) => decoder.push(id));
      pieces.push(decoder.flush());
      expect(pieces.join('')).toBe(t.decode(ids, { skipSpecialTokens: true }));
      expect(pieces.some((piece) => piece.includes('\uFFFD'))).toBe(false);
    }
  });

  test('a character split over byte tokens comes out when its last byte arrives', () => {
    const t = byteLevelTokenizer();
    const decoder = t.incrementalDecoder();
    expect([...Buffer.from('a€🙂')].map((id) => decoder.push(id))).toEqual(['a', '', '', '€', '', '', '', '🙂']);
    const gpt2 = new Tokenizer(gpt2TokenizerJson(), GPT2_TOKENIZER_CONFIG);
    const g = gpt2.incrementalDecoder();
    expect(gpt2.encode(' €').ids.map((id) => g.push(id))).toEqual([' ', '', '', '€']);
    // An unfinished character is held back, and flush() gives what there is.
    const held = t.incrementalDecoder();
    expect([held.push(0xe2), held.push(0x82)]).toEqual(['', '']);
    expect(held.flush()).toBe('\uFFFD');
  });
});

describe('byte-level tokenizer for models trained here', () => {
  test('ids are the UTF-8 bytes, special tokens follow; it saves and loads like any tokenizer.json', () => {
    const t = byteLevelTokenizer({
      bosToken: '<bos>',
      eosToken: '<eos>',
      padToken: '<pad>',
      extraSpecialTokens: ['<sep>'],
    });
    const text = 'héllo €\n日本🙂';
    expect(t.encode(text).ids).toEqual([...Buffer.from(text, 'utf8')]);
    expect(t.encode(`a<eos>b<sep>`).ids).toEqual([97, 257, 98, 259]);
    expect([t.bosTokenId, t.eosTokenId, t.padTokenId, t.vocabSize]).toEqual([256, 257, 258, 260]);
    expect(t.decode([...Buffer.from(text, 'utf8'), 257])).toBe(`${text}<eos>`);
    expect(t.decode([257, 104, 105], { skipSpecialTokens: true })).toBe('hi');
    t.save(dir);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as {
      model: Record<string, unknown>;
    };
    expect(json.model).toMatchObject({ type: 'BPE', byte_fallback: true, merges: [] });
    const loaded = Tokenizer.fromFolder(dir);
    expect(loaded.encode(text).ids).toEqual(t.encode(text).ids);
    expect([loaded.bosTokenId, loaded.eosTokenId, loaded.padTokenId]).toEqual([256, 257, 258]);
    expect(() => byteLevelTokenizer({ eosToken: '<0x41>' })).toThrow('must be a new non-empty string');
  });

  test('a saved Hugging Face tokenizer reloads to the same tokenizer', () => {
    const t = fromFiles(llamaTokenizerJson('metaspace'), LLAMA_TOKENIZER_CONFIG);
    const out = path.join(dir, 'copy');
    t.save(out);
    const again = Tokenizer.fromFolder(out);
    expect(again.encode('the cat€').ids).toEqual(t.encode('the cat€').ids);
    expect(again.paddingSide).toBe('left');
  });
});

describe('offline and bad input', () => {
  test('loading and using a tokenizer never touches the network', () => {
    const fetch = jest.fn(() => {
      throw new Error('network used');
    });
    const saved = globalThis.fetch;
    globalThis.fetch = fetch as unknown as typeof globalThis.fetch;
    try {
      const t = fromFiles(gpt2TokenizerJson(), GPT2_TOKENIZER_CONFIG);
      expect(t.decode(t.encode('the cat').ids)).toBe('the cat');
    } finally {
      globalThis.fetch = saved;
    }
    expect(fetch).not.toHaveBeenCalled();
  });

  test('files that do not parse, or are not tokenizers, are named with the problem', () => {
    const file = path.join(dir, 'tokenizer.json');
    fs.writeFileSync(file, '{"model": {"type": "BPE",');
    expect(() => Tokenizer.fromFile(file)).toThrow(`tokenizer file ${file}: not valid JSON`);
    fs.writeFileSync(file, JSON.stringify({ version: '1.0', decoder: null }));
    expect(() => Tokenizer.fromFile(file)).toThrow(`tokenizer file ${file}: not a tokenizer the library can build`);
    fs.writeFileSync(file, '[1, 2]');
    expect(() => Tokenizer.fromFile(file)).toThrow(`tokenizer file ${file}: must be a JSON object`);
    expect(() => Tokenizer.fromFile(path.join(dir, 'none.json'))).toThrow('cannot read it');
    fs.writeFileSync(file, JSON.stringify(gpt2TokenizerJson()));
    const config = path.join(dir, 'tokenizer_config.json');
    fs.writeFileSync(config, JSON.stringify({ eos_token: '</s>' }));
    expect(() => Tokenizer.fromFolder(dir)).toThrow('eos_token "</s>" is not in the vocabulary');
    fs.writeFileSync(config, '{');
    expect(() => Tokenizer.fromFolder(dir)).toThrow(`tokenizer file ${config}: not valid JSON`);
  });

  test('add_bos_token / add_eos_token that disagree with the post-processor are refused', () => {
    const json = llamaTokenizerJson('normalizer');
    expect(() => new Tokenizer(json, { ...LLAMA_TOKENIZER_CONFIG, add_eos_token: true })).toThrow(
      "add_eos_token is true but tokenizer.json's post-processor does not add that token at the end",
    );
    expect(() => new Tokenizer(json, { ...LLAMA_TOKENIZER_CONFIG, add_bos_token: false })).toThrow(
      "add_bos_token is false but tokenizer.json's post-processor adds that token at the start",
    );
    expect(new Tokenizer(json, LLAMA_TOKENIZER_CONFIG).encode('the').ids[0]).toBe(1);
  });

  test('ids outside the vocabulary and non-text input are refused', () => {
    const t = new Tokenizer(gpt2TokenizerJson(), GPT2_TOKENIZER_CONFIG);
    expect(() => t.decode([262, 300])).toThrow('decode: ids[1] is 300, not a token id');
    expect(() => t.decode([-1])).toThrow('ids[0] is -1');
    expect(() => t.decode([1.5])).toThrow('ids[0] is 1.5');
    expect(() => t.incrementalDecoder().push(70000)).toThrow('IncrementalDecoder.push: id[0] is 70000');
    expect(() => t.encode(42 as unknown as string)).toThrow('encode: text must be a string');
    expect(t.decode([])).toBe('');
  });
});
