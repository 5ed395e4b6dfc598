/**
 * Finds and loads the native addon. Candidates, in order: TERA_ADDON_PATH (a
 * .node file), the local build (build/Release), then the prebuilds/ folder via
 * node-gyp-build. On failure the error lists every path tried with its error and
 * the likely fixes, because "cannot find module" alone helps nobody.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { NativeBinding } from '../../binding';

export interface LoadedAddon {
  binding: NativeBinding;
  /** Absolute path of the .node file that loaded. */
  path: string;
}

const packageRoot = path.resolve(__dirname, '..', '..');

function candidates(): string[] {
  const list: string[] = [];
  if (process.env.TERA_ADDON_PATH) list.push(path.resolve(process.env.TERA_ADDON_PATH));
  list.push(path.join(packageRoot, 'build', 'Release', 'tera.node'));
  return list;
}

function loadFromPrebuilds(): LoadedAddon {
  // node-gyp-build picks the prebuild matching this platform, arch and ABI.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };
  const file = nodeGypBuild.resolve(packageRoot);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return { binding: require(file) as NativeBinding, path: file };
}

function loadAddon(): LoadedAddon {
  const failures: string[] = [];
  for (const file of candidates()) {
    if (!fs.existsSync(file)) {
      failures.push(`${file}: not found`);
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return { binding: require(file) as NativeBinding, path: file };
    } catch (error) {
      failures.push(`${file}: ${(error as Error).message}`);
    }
  }
  try {
    return loadFromPrebuilds();
  } catch (error) {
    failures.push(`prebuilds/${process.platform}-${process.arch}: ${(error as Error).message}`);
  }
  throw new Error(
    [
      'tera-peft: could not load its native addon. Tried:',
      ...failures.map((f) => `  - ${f}`),
      'Possible fixes:',
      `  - No prebuilt binary for ${process.platform}-${process.arch} (Node ${process.version}, N-API 8): build from source with`,
      '    npm_config_build_from_source=true npm install tera-peft  (needs cmake, a C++17 compiler and OpenBLAS: apt-get install cmake g++ libopenblas-dev)',
      '  - Working from a clone: run `npm run build:native`.',
      '  - Point TERA_ADDON_PATH at a tera.node you built yourself.',
    ].join('\n'),
  );
}

let loaded: LoadedAddon | undefined;

export function addon(): LoadedAddon {
  loaded ??= loadAddon();
  return loaded;
}

export function native(): NativeBinding {
  return addon().binding;
}
