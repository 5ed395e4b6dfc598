/**
 * Generation (lib/generation): the logits processors against float64
 * references written here; the sampler's frequencies against the model's own
 * probabilities; KV-cache generation against generation that reruns the whole
 * sequence, token for token (GPT-2 and LLaMA with grouped-query heads, left
 * padding); greedy decoding against an argmax over the independent float64
 * model of test/helpers/reference-lm.ts; seeds; eos; streaming; merged and
 * unmerged adapters; and bad input refused with the model unchanged.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import { type TinyCheckpoint, seededRandom, writeTinyGpt2, writeTinyLlama } from './helpers/checkpoints';
import { referenceLogits } from './helpers/reference-lm';
import { expectAllClose, isClose } from './helpers/tolerance';

const { TemperatureWarper, TopKWarper, TopPWarper, applyProcessors } = tera.generation;
type CausalLM = tera.models.CausalLM;

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-gen-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Scores with distinct values (no ties), seeded. */
function randomScores(n: number, seed: number): Float64Array {
  const random = seededRandom(seed);
  return Float64Array.from({ length: n }, () => 6 * random() - 3);
}

/** float64 softmax, written independently of the library's. */
function probabilities(scores: ArrayLike<number>): number[] {
  const max = Math.max(...Array.from(scores));
  const e = Array.from(scores, (s) => Math.exp(s - max));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

/** Which tokens top-k keeps: those with fewer than k scores strictly above them. */
function referenceTopK(scores: ArrayLike<number>, k: number): boolean[] {
  return Array.from(scores, (s) => Array.from(scores).filter((o) => o > s).length < k);
}

/** Which tokens top-p keeps: those whose better-ranked tokens (higher probability, ties by lower id) hold less than p. */
function referenceTopP(scores: ArrayLike<number>, p: number): boolean[] {
  const probs = probabilities(scores);
  return probs.map((pi, i) => {
    let before = 0;
    probs.forEach((pj, j) => {
      if (pj > pi || (pj === pi && j < i)) before += pj;
    });
    return before < p;
  });
}

function kept(scores: Float64Array): boolean[] {
  return Array.from(scores, (s) => s !== -Infinity);
}

describe('logits processors against float64 references', () => {
  test('temperature divides every score', () => {
    const scores = randomScores(50, 1);
    const got = applyProcessors([new TemperatureWarper(0.7)], Float64Array.from(scores), []);
    expectAllClose(
      got,
      Array.from(scores, (s) => s / 0.7),
      { rtol: 1e-15, atol: 0, what: 'scores / T' },
    );
  });

  test.each([1, 2, 7, 49, 50, 80])('top-k with k = %i keeps the k best, and every tie with the k-th', (k) => {
    const scores = randomScores(50, 2);
    scores[10] = scores[11] = scores[12] = 2.5; // a tie, which may straddle the k-th place
    const got = kept(applyProcessors([new TopKWarper(k)], Float64Array.from(scores), []));
    expect(got).toEqual(referenceTopK(scores, k));
    const count = got.filter(Boolean).length;
    expect(count).toBeGreaterThanOrEqual(Math.min(k, 50));
  });

  test.each([1e-9, 0.1, 0.5, 0.9, 0.999, 1])('top-p with p = %p keeps the smallest set holding p', (p) => {
    for (const seed of [3, 4, 5]) {
      const scores = randomScores(64, seed);
      const got = applyProcessors([new TopPWarper(p)], Float64Array.from(scores), []);
      expect(kept(got)).toEqual(referenceTopP(scores, p));
      // Kept scores are unchanged; the most probable token is always kept.
      const best = scores.indexOf(Math.max(...scores));
      expect(got[best]).toBe(scores[best]);
      got.forEach((s, i) => {
        if (s !== -Infinity) expect(s).toBe(scores[i]);
      });
    }
  });

  test('top-p with tied probabilities ranks the lower id first', () => {
    const scores = Float64Array.from([0, 1, 1, 1, 0]);
    const got = kept(applyProcessors([new TopPWarper(0.5)], Float64Array.from(scores), []));
    expect(got).toEqual(referenceTopP(scores, 0.5));
    expect(got).toEqual([false, true, true, false, false]);
  });

  test('temperature, top-k and top-p compose in that order', () => {
    const scores = randomScores(40, 6);
    const got = applyProcessors(
      [new TemperatureWarper(1.7), new TopKWarper(12), new TopPWarper(0.6)],
      Float64Array.from(scores),
      [],
    );
    const tempered = Array.from(scores, (s) => s / 1.7);
    const afterK = referenceTopK(tempered, 12);
    const filtered = tempered.map((s, i) => (afterK[i] ? s : -Infinity));
    const afterP = referenceTopP(filtered, 0.6);
    expect(kept(got)).toEqual(afterP.map((keep, i) => keep && afterK[i]));
    got.forEach((s, i) => {
      if (s !== -Infinity) expect(isClose(s, tempered[i], 1e-15, 0)).toBe(true);
    });
  });

  test('bad settings are refused by name', () => {
    expect(() => new TemperatureWarper(0)).toThrow(/temperature must be a finite number > 0, got 0/);
    expect(() => new TemperatureWarper(Infinity)).toThrow(/temperature must be a finite number > 0/);
    expect(() => new TopKWarper(0)).toThrow(/k must be an integer >= 1, got 0/);
    expect(() => new TopKWarper(2.5)).toThrow(/k must be an integer >= 1, got 2.5/);
    expect(() => new TopPWarper(0)).toThrow(/p must be a number in \(0, 1\], got 0/);
    expect(() => new TopPWarper(1.5)).toThrow(/p must be a number in \(0, 1\], got 1.5/);
    expect(() => new TopPWarper(NaN)).toThrow(/p must be a number in \(0, 1\], got NaN/);
  });
});

const FAMILIES = [
  ['GPT-2', (d: string) => writeTinyGpt2(d, { config: { n_positions: 20 } })],
  ['LLaMA with GQA', (d: string) => writeTinyLlama(d, { config: { max_position_embeddings: 20 } })],
] as const;

/** Two left-padded prompts of 6 columns (row 1 has 3 pads, id 0) and their mask. */
function prompts(fixture: TinyCheckpoint): { ids: number[][]; attentionMask: number[][] } {
  const vocab = fixture.config.vocab_size as number;
  const random = seededRandom(7);
  const ids = [0, 3].map((pad) => Array.from({ length: 6 }, (_, t) => (t < pad ? 0 : Math.floor(random() * vocab))));
  const attentionMask = [0, 3].map((pad) => Array.from({ length: 6 }, (_, t) => (t < pad ? 0 : 1)));
  return { ids, attentionMask };
}

function load(make: (d: string) => TinyCheckpoint): { fixture: TinyCheckpoint; model: CausalLM } {
  const fixture = make(path.join(dir, 'model'));
  return { fixture, model: tera.models.fromPretrained(fixture.dir) };
}

const SAMPLING = { temperature: 1.3, topK: 12, topP: 0.95, seed: 5 };

describe.each(FAMILIES)('%s generation', (_, make) => {
  test('with the KV cache equals rerunning the whole sequence, token for token, greedy and sampled', () => {
    const { fixture, model } = load(make);
    const { ids, attentionMask } = prompts(fixture);
    for (const sampling of [{ temperature: 0 }, SAMPLING]) {
      const options = { maxNewTokens: 14, attentionMask, eosTokenId: null, ...sampling };
      const cached = model.generate(ids, options);
      const rerun = model.generate(ids, { ...options, useCache: false });
      expect(cached.sequences).toEqual(rerun.sequences);
      expect(cached.newTokens.map((row) => row.length)).toEqual([14, 14]);
      // Not a constant sequence: the comparison has something to compare.
      expect(new Set(cached.newTokens.flat()).size).toBeGreaterThan(3);
    }
    model.dispose();
  });

  test('a left-padded row generates what it generates alone (greedy) and with other padding (sampled)', () => {
    const { fixture, model } = load(make);
    const { ids, attentionMask } = prompts(fixture);
    // The same rows with two more columns: row 0 gets two more tokens, row 1 two more pads.
    const wider = [
      [5, 6, ...ids[0]],
      [0, 0, ...ids[1]],
    ];
    const widerMask = [
      [1, 1, ...attentionMask[0]],
      [0, 0, ...attentionMask[1]],
    ];
    for (const sampling of [{ temperature: 0 }, SAMPLING]) {
      const options = { maxNewTokens: 8, eosTokenId: null, ...sampling };
      const batch = model.generate(ids, { ...options, attentionMask });
      // Sampling draws by (step, row): row 1 of both batches draws the same numbers.
      expect(model.generate(wider, { ...options, attentionMask: widerMask }).newTokens[1]).toEqual(batch.newTokens[1]);
      if (sampling.temperature === 0) {
        expect(model.generate([ids[1].slice(3)], options).newTokens[0]).toEqual(batch.newTokens[1]);
      }
    }
    model.dispose();
  });

  test('greedy picks an argmax of the float64 reference model over the whole sequence at every step', () => {
    const { fixture, model } = load(make);
    const { ids, attentionMask } = prompts(fixture);
    const vocab = fixture.config.vocab_size as number;
    const out = model.generate(ids, { maxNewTokens: 10, temperature: 0, attentionMask, eosTokenId: null });
    for (let step = 0; step < 10; step++) {
      const length = 6 + step;
      const prefix = out.sequences.map((row) => row.slice(0, length));
      const mask = attentionMask.map((row) => [...row, ...new Array<number>(step).fill(1)]);
      const positions = tera.models.positionsFromMask(mask);
      const logits = referenceLogits(fixture.config, fixture.weights, { ids: prefix, attentionMask: mask, positions });
      for (let b = 0; b < 2; b++) {
        const last = logits.subarray((b * length + length - 1) * vocab, (b * length + length) * vocab);
        const best = Math.max(...last);
        const chosen = out.sequences[b][length];
        // The chosen token's reference logit is the maximum (up to float32 rounding of the model).
        if (!isClose(last[chosen], best, 0, 1e-4)) {
          throw new Error(
            `step ${step} row ${b}: chose ${chosen} (logit ${last[chosen]}), the reference's best is ${best}`,
          );
        }
      }
    }
    model.dispose();
  });

  test('seeded sampling repeats with its seed and changes with another', () => {
    const { fixture, model } = load(make);
    const { ids, attentionMask } = prompts(fixture);
    const options = { maxNewTokens: 12, attentionMask, eosTokenId: null, temperature: 1.5 };
    const first = model.generate(ids, { ...options, seed: 11 });
    expect(model.generate(ids, { ...options, seed: 11 }).sequences).toEqual(first.sequences);
    expect(model.generate(ids, { ...options, seed: 11n }).sequences).toEqual(first.sequences);
    for (const seed of [12, 2 ** 40 + 11]) {
      expect(model.generate(ids, { ...options, seed }).sequences).not.toEqual(first.sequences);
    }
    model.dispose();
  });

  test('streaming yields the tokens of generate(), as does onStep', async () => {
    const { fixture, model } = load(make);
    const { ids, attentionMask } = prompts(fixture);
    const options = { maxNewTokens: 9, attentionMask, eosTokenId: null, ...SAMPLING };
    const whole = model.generate(ids, options);
    const streamed: number[][] = [[], []];
    const stream = model.generateStream(ids, options);
    for await (const step of stream) step.tokens.forEach((token, b) => streamed[b].push(token));
    expect(streamed).toEqual(whole.newTokens);
    const called: number[][] = [[], []];
    model.generate(ids, { ...options, onStep: (step) => step.tokens.forEach((t, b) => called[b].push(t)) });
    expect(called).toEqual(whole.newTokens);
    // Leaving the loop early ends the stream (and frees its cache).
    const early = model.generateStream(ids, options);
    const seen: number[] = [];
    for await (const step of early) {
      seen.push(step.index);
      if (step.index === 2) break;
    }
    expect(seen).toEqual([0, 1, 2]);
    expect((await early.next()).done).toBe(true);
    model.dispose();
  });

  test("a row stops at eos (config.json's by default) and pads after it; the run ends when all rows have", () => {
    const { fixture, model } = load(make);
    const { ids, attentionMask } = prompts(fixture);
    const free = model.generate(ids, { maxNewTokens: 10, temperature: 0, attentionMask, eosTokenId: null });
    const stop = free.newTokens[0][2];
    const at = free.newTokens[0].indexOf(stop);
    const out = model.generate(ids, {
      maxNewTokens: 10,
      temperature: 0,
      attentionMask,
      eosTokenId: stop,
      padTokenId: 0,
    });
    expect(out.newTokens[0]).toEqual(free.newTokens[0].slice(0, at + 1));
    expect(out.finished[0]).toBe(true);
    const row1 = free.newTokens[1].indexOf(stop);
    expect(out.newTokens[1]).toEqual(row1 < 0 ? free.newTokens[1] : free.newTokens[1].slice(0, row1 + 1));
    const rowLength = 6 + Math.max(out.newTokens[0].length, out.newTokens[1].length);
    expect(out.sequences[0]).toEqual([...ids[0], ...out.newTokens[0], ...new Array(rowLength - 6 - at - 1).fill(0)]);
    // The config's eos_token_id is the default: a checkpoint whose eos is that token stops the same way.
    fs.writeFileSync(
      path.join(fixture.dir, 'config.json'),
      JSON.stringify({ ...fixture.config, eos_token_id: [stop], pad_token_id: 0 }),
    );
    const withConfig = tera.models.fromPretrained(fixture.dir);
    const fromConfig = withConfig.generate(ids, { maxNewTokens: 10, temperature: 0, attentionMask });
    expect(fromConfig.sequences).toEqual(out.sequences);
    // Every row stopped: no step after the last eos.
    const single = withConfig.generate([ids[0]], { maxNewTokens: 10, temperature: 0 });
    expect(single.sequences[0]).toHaveLength(6 + at + 1);
    withConfig.dispose();
    model.dispose();
  });
});

/** Sets every trainable vector to seeded values well away from its start, so the adapter changes the output. */
function moveAdapter(peft: tera.PeftModel, seed: number): void {
  const random = seededRandom(seed);
  for (const p of peft.trainableParameters()) {
    p.data.set(Float32Array.from({ length: p.size }, () => 1.5 * (random() * 2 - 1)));
  }
}

describe('adapters', () => {
  test.each([
    ['LLaMA, TeRA on q_proj and v_proj', 1, () => new tera.TeraConfig({ targetModules: ['q_proj', 'v_proj'] })],
    ['GPT-2, LoRA on c_attn', 0, () => new tera.LoraConfig({ targetModules: ['c_attn'], r: 4 })],
  ] as const)('%s: merged and unmerged generate the same tokens, which differ from the base', (_, family, config) => {
    const { fixture, model } = load(FAMILIES[family][1]);
    const { ids, attentionMask } = prompts(fixture);
    const peft = tera.injectAdapter(model, config());
    moveAdapter(peft, 3);
    const runs = [{ temperature: 0 }, SAMPLING].map((s) => ({
      maxNewTokens: 10,
      attentionMask,
      eosTokenId: null,
      ...s,
    }));
    const unmerged = runs.map((options) => peft.generate(ids, options).sequences);
    // The PeftModel's generate() is the model's, adapters included.
    expect(model.generate(ids, runs[0]).sequences).toEqual(unmerged[0]);
    const base = peft.disableAdapters(() => runs.map((options) => peft.generate(ids, options).sequences));
    expect(base).not.toEqual(unmerged);
    peft.mergeAdapter();
    expect(peft.merged).toBe(true);
    expect(runs.map((options) => peft.generate(ids, options).sequences)).toEqual(unmerged);
    peft.unmergeAdapter();
    expect(runs.map((options) => peft.generate(ids, options).sequences)).toEqual(unmerged);
    model.dispose();
  });
});

describe('the sampler', () => {
  test("draws tokens at the frequencies of the model's top-k probabilities", () => {
    const { fixture, model } = load(FAMILIES[1][1]);
    const vocab = fixture.config.vocab_size as number;
    const rows = 400;
    const prompt = [3, 1, 4, 1, 5, 9];
    const logits = tera.autograd.noGrad(() => {
      const out = model.lastTokenLogits([prompt]);
      const values = out.toFloat32Array();
      out.dispose();
      return values;
    });
    const temperature = 0.8;
    const allowed = referenceTopK(Array.from(logits), 6);
    const probs = probabilities(Array.from(logits, (l, i) => (allowed[i] ? l / temperature : -Infinity)));
    // One step for 400 identical rows: each row draws its own number.
    const out = model.generate(
      Array.from({ length: rows }, () => prompt),
      { maxNewTokens: 1, temperature, topK: 6, seed: 99 },
    );
    const counts = new Array<number>(vocab).fill(0);
    out.newTokens.forEach(([token]) => counts[token]++);
    counts.forEach((count, token) => {
      if (!allowed[token]) {
        expect(count).toBe(0);
        return;
      }
      // Within 4.5 standard deviations of the binomial mean.
      const mean = rows * probs[token];
      const sd = Math.sqrt(rows * probs[token] * (1 - probs[token]));
      if (!isClose(count, mean, 0, 4.5 * sd + 1)) {
        throw new Error(
          `token ${token}: drawn ${count} times, expected ${mean.toFixed(1)} +- ${(4.5 * sd).toFixed(1)}`,
        );
      }
    });
    model.dispose();
  });
});

describe('bad input is refused with a clear message and nothing changed', () => {
  test.each([
    ['no options', undefined, /options must be an object with at least maxNewTokens/],
    ['an unknown option', { maxNewTokens: 2, topk: 3 }, /unknown option 'topk'; options: maxNewTokens, temperature/],
    ['maxNewTokens missing', { temperature: 0 }, /maxNewTokens must be an integer >= 1, got undefined/],
    ['maxNewTokens 0', { maxNewTokens: 0 }, /maxNewTokens must be an integer >= 1, got 0/],
    [
      'prompt + maxNewTokens past the positions',
      { maxNewTokens: 15 },
      /6 prompt tokens and maxNewTokens 15 exceed the model's 20 positions \(at most 14 new tokens after this prompt\)/,
    ],
    [
      'a negative temperature',
      { maxNewTokens: 2, temperature: -1 },
      /temperature must be a finite number >= 0, got -1/,
    ],
    ['topP 0', { maxNewTokens: 2, topP: 0 }, /TopPWarper: p must be a number in \(0, 1\], got 0/],
    ['topP above 1', { maxNewTokens: 2, topP: 1.01 }, /p must be a number in \(0, 1\], got 1.01/],
    ['topK 0', { maxNewTokens: 2, topK: 0 }, /k must be an integer >= 1, got 0/],
    [
      'topK with greedy decoding',
      { maxNewTokens: 2, temperature: 0, topK: 5 },
      /temperature 0 decodes greedily, where topK would do nothing/,
    ],
    ['a seed with greedy decoding', { maxNewTokens: 2, temperature: 0, seed: 1 }, /where seed would do nothing/],
    ['a negative seed', { maxNewTokens: 2, seed: -1 }, /seed must be a non-negative safe integer or a BigInt/],
    [
      'an eos id outside the vocabulary',
      { maxNewTokens: 2, eosTokenId: [2, 99] },
      /eosTokenId\[1\] must be a token id in 0..28, got 99/,
    ],
    [
      'a pad id outside the vocabulary',
      { maxNewTokens: 2, padTokenId: -1 },
      /padTokenId must be a token id in 0..28, got -1/,
    ],
    [
      'right padding',
      { maxNewTokens: 2, attentionMask: [[1, 1, 1, 1, 1, 0]] },
      /attentionMask row 0 has padding after a token; generation takes left padding only/,
    ],
    [
      'an all-padding row',
      { maxNewTokens: 2, attentionMask: [[0, 0, 0, 0, 0, 0]] },
      /attentionMask row 0 has no token/,
    ],
    [
      'a mask of the wrong shape',
      { maxNewTokens: 2, attentionMask: [[1, 1]] },
      /attentionMask is \[1, 2\], expected \[1, 6\]/,
    ],
    ['useCache not a boolean', { maxNewTokens: 2, useCache: 'yes' }, /useCache must be true or false/],
    [
      'a processor without process()',
      { maxNewTokens: 2, logitsProcessors: [{}] },
      /logitsProcessors must be an array of objects with a process/,
    ],
  ])('%s', (_, options, message) => {
    const { model } = load(FAMILIES[1][1]);
    const before = model.namedParameters().map(([, p]) => p.data.toFloat32Array());
    expect(() => model.generate([[1, 2, 3, 4, 5, 6]], options as never)).toThrow(message);
    expect(() => model.generateStream([[1, 2, 3, 4, 5, 6]], options as never)).toThrow(message);
    model
      .namedParameters()
      .forEach(([name, p], i) => expectAllClose(p.data.toFloat32Array(), before[i], { rtol: 0, atol: 0, what: name }));
    model.dispose();
  });

  test('ids outside the vocabulary, a stream with onStep, and a PeftModel that is not a language model', () => {
    const { model } = load(FAMILIES[1][1]);
    expect(() => model.generate([[1, 29]], { maxNewTokens: 2 })).toThrow(
      /generate: token id 29 at \[0, 1\] is outside the vocabulary \(ids 0..28\)/,
    );
    expect(() => model.generateStream([[1, 2]], { maxNewTokens: 2, onStep: () => undefined })).toThrow(
      /onStep is for generate\(\); the stream yields every step itself/,
    );
    model.dispose();
    const mlp = tera.injectAdapter(new tera.nn.MLP([4, 4], { seed: 0 }), new tera.LoraConfig({ targetModules: ['0'] }));
    expect(() => mlp.generate([[1]], { maxNewTokens: 1 })).toThrow(
      /generate needs a language model \(tera.models.CausalLM\); this PeftModel wraps a MLP/,
    );
  });

  test('the KV cache refuses what does not fit it', () => {
    const cache = new tera.generation.StaticKeyValueCache({ layers: 1, batch: 1, kvHeads: 2, headDim: 4, capacity: 3 });
    const kv = (tokens: number) => new tera.autograd.Var(tera.zeros([1, 2, tokens, 4]));
    expect(() => cache.update(0, kv(4), kv(4))).toThrow(/0 cached and 4 new tokens exceed its capacity of 3/);
    expect(() => cache.update(1, kv(1), kv(1))).toThrow(/layer 1 is outside 0..0/);
    expect(() => cache.update(0, new tera.autograd.Var(tera.zeros([1, 3, 1, 4])), kv(1))).toThrow(
      /layer 0's keys are \[1, 3, 1, 4\], expected \[1, 2, 1, 4\]/,
    );
    expect(cache.length).toBe(0);
    cache.update(0, kv(2), kv(2));
    expect(() => cache.update(0, kv(1), kv(1))).toThrow(/layer 0 was updated twice in one pass/);
    cache.advance();
    expect(cache.length).toBe(2);
    cache.dispose();
  });
});
