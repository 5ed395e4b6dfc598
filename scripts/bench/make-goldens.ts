/**
 * `npm run goldens`: rewrites test/golden/<case>.safetensors, one per GOLDEN_CASES entry
 * (golden.ts describes the format). Our code makes each case's inputs, the PyTorch
 * reference runs the training step on them. Needs a Python with torch (Debian:
 * `apt-get install python3-torch`); run it after a deliberate change of the math, the
 * random generator or the cases, and commit the files with the change.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { GOLDEN_CASES, goldenDir, goldenFile, makeGolden } from './golden';
import { TorchWorker } from './torch';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { python: { type: 'string' } } });
  const started = TorchWorker.start(values.python);
  if (!('worker' in started)) {
    throw new Error(`npm run goldens needs PyTorch (Debian: apt-get install python3-torch): ${started.reason}`);
  }
  const info = await started.info;
  console.log(`goldens: torch ${info.torch} (${info.executable})`);
  try {
    fs.mkdirSync(goldenDir, { recursive: true });
    for (const c of GOLDEN_CASES) {
      const file = goldenFile(c.name);
      await makeGolden(started.worker, c, file);
      console.log(`goldens: wrote ${path.relative(process.cwd(), file)} (${fs.statSync(file).size} bytes)`);
    }
  } finally {
    started.worker.close();
  }
}

main().catch((error: Error) => {
  console.error(error.message);
  process.exitCode = 1;
});
