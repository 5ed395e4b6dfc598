#!/usr/bin/env node
// Stands in for node-gyp when prebuildify runs (`prebuildify --node-gyp <this>`):
// prebuildify has no cmake-js backend, so its `node-gyp rebuild` call becomes a
// `cmake-js rebuild` of this package into <cwd>/build, where prebuildify picks up
// build/Release/*.node, strips it and moves it to prebuilds/. The npm script runs
// prebuildify in build-prebuild/ so the developer's own build/ stays untouched.
// Afterwards the fresh binary is loaded once: a release binary that silently
// lacks CUDA, or links a shared library users may not have, must fail here.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const packageRoot = path.resolve(import.meta.dirname, '..');
const outDir = path.resolve('build');
const [command, ...options] = process.argv.slice(2);

function fail(message) {
  console.error(`prebuildify-cmake: ${message}`);
  process.exit(1);
}

if (command !== 'rebuild') fail(`only "rebuild" is supported, got: ${process.argv.slice(2).join(' ')}`);

// prebuildify passes --target, --devdir, --arch and --release/--debug; with
// N-API the target and devdir do not matter, cmake-js takes the rest.
const args = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--directory', packageRoot, '--out', outDir];
args.push('--parallel', String(availableParallelism()), '--CDTERA_BUILD_TESTS=OFF');
for (const option of options) {
  if (option.startsWith('--arch=')) args.push('--arch', option.slice('--arch='.length));
  if (option === '--debug') args.push('--debug');
}
console.log(`prebuildify-cmake: cmake-js ${args.slice(1).join(' ')}`);
const build = spawnSync(process.execPath, args, { stdio: 'inherit' });
if (build.status !== 0) fail(`cmake-js failed (exit ${build.status ?? build.signal})`);

const binary = path.join(outDir, options.includes('--debug') ? 'Debug' : 'Release', 'tera.node');
const info = require(binary).backendInfo();
console.log(`prebuildify-cmake: built ${binary}`);
console.log(`  BLAS: ${info.cpu.blas}`);
console.log(`  CUDA: ${info.cuda.built ? `archs ${info.cuda.archs}` : info.cuda.reason}`);
if (!info.cuda.built && process.env.TERA_CUDA !== '0') {
  fail('no CUDA in this prebuild: install the CUDA toolkit (nvcc), or set TERA_CUDA=0 for a CPU-only prebuild');
}

const allowedLibraries = /^(libc|libm|libstdc\+\+|libgcc_s|ld-linux[\w-]*)\.so/;
const dynamic = spawnSync('readelf', ['-d', binary], { encoding: 'utf8' });
if (dynamic.status !== 0) fail(`readelf -d failed: ${dynamic.stderr || dynamic.error}`);
const needed = [...dynamic.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1]);
console.log(`  needs: ${needed.join(' ')}`);
const unexpected = needed.filter((library) => !allowedLibraries.test(library));
if (unexpected.length) fail(`links ${unexpected.join(', ')}: a prebuild may need only the C and C++ runtime`);
