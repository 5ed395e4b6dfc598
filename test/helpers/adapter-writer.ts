/**
 * Two versions of one LoRA adapter that differ in their config (alpha) and in
 * their weights, and a child-process entry that writes them, for the tests of
 * interrupted and concurrent saves:
 *
 *   node --require tsx/cjs adapter-writer.ts <mode> <dir>
 *
 * - loop: saves version 0, prints "ready", then saves 1, 0, 1, ... until killed;
 * - crash-between-files: saves version 0, then dies (SIGKILL) in the save of
 *   version 1 just before adapter_config.json is renamed into place;
 * - crash-in-write: dies in writeFileAtomic(<dir>/blob.bin) just before its rename.
 */
import { createRequire } from 'node:module';
import * as path from 'node:path';

import * as tera from '../../lib';
import { writeFileAtomic } from '../../lib/io';

export const INPUT_FEATURES = 12;

export function baseModel(): tera.nn.Module {
  return new tera.nn.MLP([INPUT_FEATURES, 16, 6], { seed: 8 });
}

/** Version `which` (0 or 1) of the adapter on a fresh base model. */
export function adapterVersion(which: 0 | 1): tera.PeftModel {
  const peft = tera.injectAdapter(
    baseModel(),
    new tera.LoraConfig({ targetModules: ['0', '2'], r: 2, alpha: 1 + which }),
  );
  for (const p of peft.trainableParameters()) {
    p.data.set(tera.random.uniform([p.size], { seed: 100 + which, low: -1, high: 1 }).toFloat32Array());
  }
  return peft;
}

/** Makes the `count`-th fs.renameSync call from now kill this process instead. */
function dieAtRename(count: number): void {
  // The library reads fs functions at call time, so replacing the real module's property reaches it
  // (a TypeScript namespace import would be a read-only view of it).
  const fs: typeof import('node:fs') = createRequire(__filename)('node:fs');
  let calls = 0;
  const rename = fs.renameSync;
  fs.renameSync = (from, to) => {
    if (++calls === count) process.kill(process.pid, 'SIGKILL');
    rename(from, to);
  };
}

function main(mode: string, dir: string): void {
  if (mode === 'crash-in-write') {
    dieAtRename(1);
    writeFileAtomic(path.join(dir, 'blob.bin'), new Uint8Array(1 << 16));
  } else if (mode === 'crash-between-files') {
    tera.saveAdapter(adapterVersion(0), dir);
    dieAtRename(2); // the weights file is renamed first, the config second
    tera.saveAdapter(adapterVersion(1), dir);
  } else if (mode === 'loop') {
    const versions = [adapterVersion(0), adapterVersion(1)];
    tera.saveAdapter(versions[0], dir);
    process.stdout.write('ready\n');
    for (let i = 1; ; i++) tera.saveAdapter(versions[i % 2], dir);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}

if (require.main === module) main(process.argv[2], process.argv[3]);
