/**
 * The README's language-model example runs as pasted: the test takes the block
 * out of README.md (it is also examples/finetune-lm.js, verbatim) and runs it on
 * a tiny LLaMA checkpoint with a byte-level tokenizer, as a user would (node,
 * require('tera-peft'), the three arguments). It trains TeRA on q_proj and
 * v_proj, lowers the loss, saves an adapter that loads back, and prints the
 * text it generates with it, which the saved adapter reproduces.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import { writeTinyLlama } from './helpers/checkpoints';

const repo = path.resolve(__dirname, '..');
const example = path.join(repo, 'examples', 'finetune-lm.js');

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-lm-example-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The README's block that fine-tunes a language model (the one that starts with its title comment). */
function readmeExample(): string {
  const readme = fs.readFileSync(path.join(repo, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
  const found = blocks.filter((block) => block.startsWith('// Fine-tunes a language model'));
  expect(found).toHaveLength(1);
  return found[0];
}

test('the README shows examples/finetune-lm.js as it is', () => {
  expect(readmeExample()).toBe(fs.readFileSync(example, 'utf8'));
});

test("the README's example fine-tunes a checkpoint folder on a text file, saves an adapter and generates with it", () => {
  const script = path.join(dir, 'readme-example.js');
  fs.writeFileSync(script, readmeExample());
  const tokenizer = tera.tokenizers.byteLevelTokenizer({ bosToken: '<s>', eosToken: '</s>', padToken: '<pad>' });
  const fixture = writeTinyLlama(path.join(dir, 'llama'), {
    config: { vocab_size: 259, max_position_embeddings: 64, eos_token_id: tokenizer.eosTokenId },
  });
  tokenizer.save(fixture.dir);
  const text = path.join(dir, 'train.txt');
  fs.writeFileSync(text, 'the quick brown fox jumps over the lazy dog. '.repeat(40));
  const adapter = path.join(dir, 'adapter');
  const result = spawnSync(
    process.execPath,
    [
      '--require',
      'tsx/cjs',
      '--require',
      path.join(__dirname, 'helpers', 'tera-peft-alias.cjs'),
      script,
      fixture.dir,
      text,
      adapter,
    ],
    { cwd: repo, encoding: 'utf8' },
  );
  if (result.status !== 0) throw new Error(`the example failed (${result.status}):\n${result.stdout}${result.stderr}`);
  // TeRA's vectors: q_proj 16 x 16 has modes (16 | 16), v_proj 8 x 16 (8 | 16): 32 + 24 per layer, 2 layers.
  expect(result.stdout).toMatch(/^trainable params: 112 \|\| all params: 12,320 \|\| trainable%: 0\.9091$/m);
  const losses = [...result.stdout.matchAll(/^step (\d+): loss ([\d.]+)$/gm)].map((m) => Number(m[2]));
  expect(losses).toHaveLength(20);
  expect(losses[19]).toBeLessThan(losses[0]);
  const model = tera.models.fromPretrained(fixture.dir);
  const peft = tera.loadAdapter(model, adapter);
  expect(peft.adapterLayers().map(([name]) => name)).toEqual([
    'model.layers.0.self_attn.q_proj',
    'model.layers.0.self_attn.v_proj',
    'model.layers.1.self_attn.q_proj',
    'model.layers.1.self_attn.v_proj',
  ]);
  // What it printed is what the saved adapter generates (merged, as in the example).
  const printed = /^generated: (.*)$/m.exec(result.stdout);
  expect(printed).not.toBeNull();
  peft.mergeAdapter();
  const prompt = tokenizer.encode('the quick').ids;
  const { newTokens } = peft.generate([prompt], { maxNewTokens: 24, temperature: 0.8, topK: 40, seed: 0 });
  expect(newTokens[0].length).toBeGreaterThan(0);
  expect(printed![1]).toBe(tokenizer.decode(newTokens[0], { skipSpecialTokens: true }).split('\n')[0]);
  model.dispose();
});
