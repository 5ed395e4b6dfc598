#!/usr/bin/env node
// npm's install hook. Uses the prebuilt binary when one loads on this machine;
// otherwise (or with npm_config_build_from_source=true) builds from source with
// cmake-js into build/, the folder the loader tries first. A build/ that exists
// already is brought up to date, since the loader would prefer it over the
// prebuilt binary. When the build cannot even start, says exactly what to
// install instead of failing deep in CMake. A git clone has no prebuilds, so
// `npm ci` there does the developer build, and later `npm run build:native`
// calls find it up to date.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const packageRoot = path.resolve(import.meta.dirname, '..');
const localBuild = path.join(packageRoot, 'build', 'Release', 'tera.node');
const say = (line) => console.log(`tera-peft: ${line}`);

const installHelp = [
  '  Debian/Ubuntu: sudo apt-get install cmake g++ make libopenblas-dev',
  '  Fedora/RHEL:   sudo dnf install cmake gcc-c++ make openblas-devel',
  '  For GPU support also install the CUDA toolkit (nvcc, CUDA 12 or 13); without it the build is CPU-only.',
  '  Then run again: npm_config_build_from_source=true npm rebuild tera-peft --foreground-scripts',
].join('\n');

/** The path of a prebuilt binary that loads here, or why there is none. */
function findPrebuild() {
  // node-gyp-build reads PREBUILDS_ONLY when first loaded: skip build/Release.
  process.env.PREBUILDS_ONLY = '1';
  let file;
  try {
    file = require('node-gyp-build').resolve(packageRoot);
  } catch (error) {
    return { reason: error.message.split('\n')[0] };
  }
  try {
    const info = require(file).backendInfo();
    const gpu = info.cuda.built ? `CUDA archs ${info.cuda.archs}` : 'CPU only';
    return { file, description: `${info.cpu.blas.split(' ').slice(0, 2).join(' ')}, ${gpu}` };
  } catch (error) {
    return { reason: `${path.relative(packageRoot, file)} does not load: ${error.message}` };
  }
}

/** Tools the source build needs that are not on the PATH. */
function missingTools() {
  const runs = (command) => spawnSync(command, ['--version'], { stdio: 'ignore' }).status === 0;
  const missing = [];
  if (!runs(process.env.CMAKE || 'cmake')) missing.push('cmake');
  if (!runs(process.env.CXX || 'c++')) missing.push(`a C++17 compiler (${process.env.CXX || 'c++'})`);
  if (!runs('make') && !runs('ninja')) missing.push('make (or ninja)');
  return missing;
}

function buildFromSource() {
  const missing = missingTools();
  if (missing.length) {
    console.error(`tera-peft: cannot build from source: ${missing.join(', ')} not found on the PATH.`);
    console.error(`Install the build tools:\n${installHelp}`);
    process.exit(1);
  }
  // The package ships no native tests; a clone builds them as usual.
  const withTests = fs.existsSync(path.join(packageRoot, 'native', 'tests')) ? 'ON' : 'OFF';
  const args = [
    require.resolve('cmake-js/bin/cmake-js'),
    'build',
    '--out',
    'build',
    '--parallel',
    String(availableParallelism()),
    `--CDTERA_BUILD_TESTS=${withTests}`,
  ];
  const cuda = process.env.TERA_CUDA === '0' ? 'CPU only (TERA_CUDA=0)' : 'with CUDA when nvcc is found';
  say(`building from source, ${cuda}: cmake-js ${args.slice(1).join(' ')}`);
  const build = spawnSync(process.execPath, args, { cwd: packageRoot, stdio: 'inherit' });
  if (build.status !== 0) {
    console.error('tera-peft: the source build failed; the CMake output above says why. It needs:');
    console.error(installHelp);
    process.exit(1);
  }
  say(`built ${path.relative(packageRoot, localBuild)}`);
}

if (process.env.npm_config_build_from_source === 'true') {
  say('npm_config_build_from_source=true: skipping the prebuilt binary');
  buildFromSource();
} else if (fs.existsSync(localBuild)) {
  say(
    `updating the local build ${path.relative(packageRoot, localBuild)}, which the loader prefers (delete build/ to use the prebuilt binary)`,
  );
  buildFromSource();
} else {
  const prebuild = findPrebuild();
  if (prebuild.file) {
    say(`using the prebuilt binary ${path.relative(packageRoot, prebuild.file)} (${prebuild.description})`);
  } else {
    say(`no usable prebuilt binary (${prebuild.reason}); building from source`);
    buildFromSource();
  }
}
