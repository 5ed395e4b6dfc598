/**
 * Our training step against PyTorch's, from the golden files in test/golden (made once
 * by `npm run goldens` with scripts/bench/torch_reference.py; the format is described
 * in scripts/bench/golden.ts), so the comparison runs on every machine, with or
 * without PyTorch. Per case (the frozen Linear, TeRA at full and at reduced ranks,
 * VeRA, LoRA): the frozen tensors our code generates must be the golden inputs bit for
 * bit, and the loss, the output, dx, every trainable gradient and every trainable
 * tensor after one AdamW step must match PyTorch's within 1e-5 of the quantity's
 * largest value. Our side goes through the public API only.
 */
import {
  GOLDEN_CASES,
  type Golden,
  type GoldenCase,
  type OurStep,
  caseJson,
  goldenFile,
  goldenTolerance,
  readGolden,
  runOurStep,
} from '../scripts/bench/golden';
import { expectAllClose } from './helpers/tolerance';

it('covers every method: the frozen Linear, TeRA, VeRA and LoRA', () => {
  expect(new Set(GOLDEN_CASES.map((c) => c.method))).toEqual(new Set(['frozen', 'tera', 'vera', 'lora']));
});

describe.each(GOLDEN_CASES.map((c): [string, GoldenCase] => [c.name, c]))('golden case %s', (name, c) => {
  let golden: Golden;
  let ours: OurStep;
  beforeAll(() => {
    golden = readGolden(goldenFile(name));
    ours = runOurStep(c, golden.inputs);
  });
  const regenerate = 'if the change is intended, run `npm run goldens` (needs PyTorch) and commit test/golden';

  it('was made by PyTorch for this case', () => {
    expect(golden.madeBy).toMatch(/^torch \d/);
    if (golden.caseJson !== caseJson(c)) throw new Error(`${golden.file} was made for another case: ${regenerate}`);
  });

  it('holds the loss, the output, dx and, per trainable tensor, its gradient and its value after the step', () => {
    const trainable = Object.keys(golden.inputs).filter((key) => key.startsWith('param.'));
    expect(trainable.length > 0).toBe(c.method !== 'frozen');
    const suffixes = trainable.map((key) => key.slice('param.'.length));
    const expected = ['output.loss', 'output.y', 'output.dx', ...suffixes.flatMap((s) => [`grad.${s}`, `step.${s}`])];
    expect(Object.keys(golden.expected).sort()).toEqual(expected.sort());
    expect(Object.keys(ours.results).sort()).toEqual(expected.sort());
  });

  it('regenerates the golden frozen tensors bit for bit', () => {
    const stored = Object.keys(golden.inputs).filter((key) => key.startsWith('frozen.'));
    expect(
      Object.keys(ours.frozen)
        .map((key) => `frozen.${key}`)
        .sort(),
    ).toEqual(stored.sort());
    expect(stored.length > 0).toBe(c.method === 'tera' || c.method === 'vera');
    for (const key of stored) {
      const what = `${key} (our random generator or initialisation changed? ${regenerate})`;
      expectAllClose(ours.frozen[key.slice('frozen.'.length)].data, golden.inputs[key].data, {
        rtol: 0,
        atol: 0,
        what,
      });
    }
  });

  it("matches PyTorch's loss, output, dx, gradients and AdamW step", () => {
    for (const [quantity, reference] of Object.entries(golden.expected)) {
      const atol = goldenTolerance(reference);
      expectAllClose(ours.results[quantity], reference, { rtol: 0, atol, what: `${name} ${quantity}` });
    }
  });
});
