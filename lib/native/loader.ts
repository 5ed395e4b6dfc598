/**
 * Finds and loads the native addon. Candidates, in order:
 *   1. TERA_ADDON_PATH, when set, and then nothing else: an explicit choice must
 *      not be replaced silently by another binary;
 *   2. the local build, build/Release/tera.node (a clone, or a source build done
 *      by the install script);
 *   3. the prebuilt binary in prebuilds/<platform>-<arch>/, picked with
 *      node-gyp-build's own tag matching.
 * On failure the error lists every path tried with its error, then the fixes
 * that fit those errors (as sharp does), because "cannot find module" alone
 * helps nobody.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { NativeBinding } from '../../binding';

/** Where the loaded binary came from. */
export type AddonSource = 'TERA_ADDON_PATH' | 'local build' | 'prebuild';

export interface LoadedAddon {
  binding: NativeBinding;
  /** Absolute path of the .node file that loaded. */
  path: string;
  source: AddonSource;
}

interface Candidate {
  path: string;
  source: AddonSource;
}

interface Failure {
  candidate: Candidate;
  error: string;
}

/** The parts of node-gyp-build used here (it ships no types). */
interface PrebuildTags {
  file: string;
}
interface NodeGypBuild {
  parseTags(file: string): PrebuildTags | undefined;
  matchTags(runtime: string, abi: string): (tags: PrebuildTags | undefined) => boolean;
  compareTags(runtime: string): (a: PrebuildTags, b: PrebuildTags) => number;
}

const packageRoot = path.resolve(__dirname, '..', '..');
const platformTuple = `${process.platform}-${process.arch}`;
const prebuildsFolder = path.join(packageRoot, 'prebuilds', platformTuple);
const localBuild = path.join(packageRoot, 'build', 'Release', 'tera.node');
const buildFromSource =
  'npm_config_build_from_source=true npm rebuild tera-peft --foreground-scripts  (needs cmake, a C++17 compiler, ' +
  'make and OpenBLAS; Debian/Ubuntu: apt-get install cmake g++ make libopenblas-dev)';

/** Prebuilt binaries for this platform, best match first; [] when none ships for it. */
function prebuildCandidates(): Candidate[] {
  let files: string[];
  try {
    files = fs.readdirSync(prebuildsFolder);
  } catch {
    return [];
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nodeGypBuild = require('node-gyp-build') as NodeGypBuild;
  const matches = nodeGypBuild.matchTags('node', process.versions.modules);
  return files
    .map((file) => nodeGypBuild.parseTags(file))
    .filter((tags): tags is PrebuildTags => matches(tags))
    .sort(nodeGypBuild.compareTags('node'))
    .map((tags) => ({ path: path.join(prebuildsFolder, tags.file), source: 'prebuild' }));
}

function candidates(): Candidate[] {
  const override = process.env.TERA_ADDON_PATH;
  if (override) return [{ path: path.resolve(override), source: 'TERA_ADDON_PATH' }];
  return [{ path: localBuild, source: 'local build' }, ...prebuildCandidates()];
}

/** The fixes that fit what went wrong, most specific first. */
function likelyFixes(failures: Failure[], triedPrebuild: boolean): string[] {
  const fixes: string[] = [];
  const errors = failures.map((f) => f.error).join('\n');
  const failed = (source: AddonSource) =>
    failures.some((f) => f.candidate.source === source && f.error !== 'not found');
  if (failures.some((f) => f.candidate.source === 'TERA_ADDON_PATH')) {
    fixes.push('Unset TERA_ADDON_PATH, or point it at a tera.node built for this machine.');
  }
  if (/(GLIBC|GLIBCXX|CXXABI)_[\d.]+'? not found/.test(errors)) {
    fixes.push(
      'The prebuilt binary needs glibc >= 2.35 and the C++ runtime of GCC >= 12 (Debian 12, Ubuntu 22.04, ' +
        'Fedora 36 or newer); this system is older.',
    );
  }
  if (/invalid ELF header|wrong ELF class|file too short|cannot open shared object file/.test(errors)) {
    fixes.push(
      'A binary is damaged, built for another platform, or needs a library this system lacks: reinstall on this ' +
        'machine (rm -rf node_modules && npm install) rather than copying node_modules from elsewhere.',
    );
  }
  if (failed('local build')) {
    fixes.push(
      'The local build in build/Release does not load: rebuild it, or delete build/ to use the prebuilt binary.',
    );
  }
  if (failed('prebuild')) fixes.push(`Build from source instead of using the prebuilt binary: ${buildFromSource}`);
  if (!triedPrebuild && !process.env.TERA_ADDON_PATH) {
    fixes.push(`No prebuilt binary ships for ${platformTuple}; build from source: ${buildFromSource}`);
  }
  fixes.push(
    'If the install script was skipped (--ignore-scripts) or failed: npm rebuild tera-peft --foreground-scripts',
  );
  fixes.push('More help: docs/troubleshooting.md in the tera-peft repository.');
  return fixes;
}

function loadAddon(): LoadedAddon {
  const failures: Failure[] = [];
  const list = candidates();
  for (const candidate of list) {
    if (!fs.existsSync(candidate.path)) {
      failures.push({ candidate, error: 'not found' });
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return { binding: require(candidate.path) as NativeBinding, ...candidate };
    } catch (error) {
      // require() puts the path first; it is already in the list.
      const message = (error as Error).message.replace(`${candidate.path}: `, '');
      failures.push({ candidate, error: message.replace(/\s+/g, ' ').trim() });
    }
  }
  const triedPrebuild = list.some((c) => c.source === 'prebuild');
  const tried = failures.map((f) => `  - ${f.candidate.path} (${f.candidate.source}): ${f.error}`);
  if (!triedPrebuild && !process.env.TERA_ADDON_PATH) {
    tried.push(`  - ${prebuildsFolder} (prebuild): no binary for ${platformTuple} and N-API 8`);
  }
  throw new Error(
    [
      `tera-peft: could not load its native addon on ${platformTuple}, Node ${process.version}. Tried:`,
      ...tried,
      'Possible fixes:',
      ...likelyFixes(failures, triedPrebuild).map((fix) => `  - ${fix}`),
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
