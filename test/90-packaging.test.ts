/**
 * What `npm install tera-peft` gives a user. Packs the package, checks the
 * tarball's file list and the prebuilt binary, installs the tarball into a fresh
 * project with a PATH that has no cmake, no C/C++ compiler, no make and no nvcc,
 * then runs a kernel and a TeRA adapter training step from CommonJS and from
 * ESM, and type-checks both entry points. Also checks how a binary that does
 * not load is explained, and both source-build paths of the install script:
 * told what to install when the tools are missing, and a real CPU-only cmake-js
 * build when they are there.
 *
 * The tarball is made here, the way a release makes it: the files `npm pack`
 * takes from this repository (prepack rebuilds dist/), plus a prebuilt binary
 * that `npm run prebuildify` builds now from these sources into a temporary
 * folder, with CUDA when the local build has it. So the test needs nothing
 * beyond the setup, checks what it packs, and never uses a stale binary from
 * prebuilds/ (one lying there is left out, and left alone).
 *
 * Offline: the fresh project gets a lockfile made from ours, so `npm ci
 * --offline` takes every dependency from the npm cache that our own `npm ci`
 * filled.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { backendInfo } from '../lib';

const repo = path.resolve(__dirname, '..');
const maxBinaryBytes = 40 * 1024 * 1024;
const toolNames = ['cmake', 'cc', 'c++', 'gcc', 'g++', 'clang', 'clang++', 'make', 'ninja', 'nvcc'];
// Build tools (and their versioned or target-prefixed names) left off the test PATH.
const buildTool =
  /^(cmake|ccmake|cpack|ctest|cc|c\+\+|cpp|gcc|g\+\+|clang|clang\+\+|make|gmake|ninja|nvcc|ld)([-.][\w.]+)?$|-(gcc|g\+\+|cpp|ld)(-[\d.]+)?$/;

interface Run {
  status: number | null;
  stdout: string;
  /** stdout and stderr together, for messages. */
  output: string;
}

/**
 * The environment for the user's side: ours without the npm_* variables that
 * `npm test` sets (a nested npm would take them as its own configuration, and
 * the local prefix among them points at this repository) and without TERA_*.
 */
function userEnv(overrides: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^(npm_|TERA_|INIT_CWD$)/i.test(key)));
  return { ...env, ...overrides };
}

/**
 * The developer's side (building the release binary): ours without the npm_*
 * variables, keeping TERA_* (TERA_WERROR, TERA_CUDA) and CUDAARCHS.
 */
function developerEnv(overrides: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^(npm_|INIT_CWD$)/i.test(key)));
  return { ...env, ...overrides };
}

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = userEnv()): Run {
  const result = spawnSync(command, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return {
    status: result.status,
    stdout: result.stdout,
    output: `${result.stdout}${result.stderr}${result.error ?? ''}`,
  };
}

function mustRun(command: string, args: string[], cwd: string, env?: NodeJS.ProcessEnv): Run {
  const result = run(command, args, cwd, env);
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.output}`);
  return result;
}

/** A folder of links to everything on the PATH except the build tools. */
function pathWithoutBuildTools(folder: string): string {
  fs.mkdirSync(folder);
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir || !fs.existsSync(dir)) continue;
    for (const name of fs.readdirSync(dir)) {
      const link = path.join(folder, name);
      if (buildTool.test(name) || fs.existsSync(link)) continue;
      fs.symlinkSync(path.join(dir, name), link);
    }
  }
  return folder;
}

interface LockEntry {
  version: string;
  resolved?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  dev?: boolean;
  devOptional?: boolean;
}

/** Where node would find `name` from the package at `from`, in a lockfile's layout. */
function resolveInLock(packages: Record<string, LockEntry>, from: string, name: string): string | undefined {
  for (let dir = from; ;) {
    const location = `${dir ? `${dir}/` : ''}node_modules/${name}`;
    if (packages[location]) return location;
    if (!dir) return undefined;
    const parent = dir.lastIndexOf('/node_modules/');
    dir = parent < 0 ? '' : dir.slice(0, parent);
  }
}

interface PackResult {
  filename: string;
  integrity: string;
  size: number;
  files: { path: string; size: number }[];
}

/** The JSON `npm pack --json` prints after any lifecycle script output. */
function packJson(stdout: string): PackResult {
  return (JSON.parse(stdout.slice(stdout.indexOf('[\n'))) as PackResult[])[0];
}

/**
 * The release tarball, made in `work`: the files npm packs from this
 * repository are staged in `work`/package (prebuilds/ left out), `npm run
 * prebuildify` builds the binary into that folder (CPU-only when the local
 * build has no CUDA, as the local build was made where there is no nvcc), and
 * the stage is packed. Returns the pack result and the tarball's path.
 */
function packRelease(work: string): { pack: PackResult; tarball: string } {
  // --dry-run still runs prepack, which rebuilds dist/ from lib/.
  const listed = packJson(mustRun('npm', ['pack', '--dry-run', '--json'], repo).stdout);
  const stage = path.join(work, 'package');
  for (const { path: file } of listed.files) {
    if (file.startsWith('prebuilds/')) continue;
    fs.mkdirSync(path.dirname(path.join(stage, file)), { recursive: true });
    fs.copyFileSync(path.join(repo, file), path.join(stage, file));
  }
  const cpuOnly = backendInfo().cuda.built ? {} : { TERA_CUDA: '0' };
  mustRun('npm', ['run', 'prebuildify'], repo, developerEnv({ ...cpuOnly, TERA_PREBUILD_DIR: stage }));
  // The stage has no sources to rebuild dist/ from: what was staged is packed as it is.
  const args = ['pack', '--json', '--ignore-scripts', '--pack-destination', work];
  const pack = packJson(mustRun('npm', args, stage, developerEnv()).stdout);
  return { pack, tarball: path.join(work, pack.filename) };
}

/**
 * A project depending on the tarball, with a lockfile holding our own lockfile's
 * entries for the package's dependency tree, so npm needs no registry to install.
 * Each entry gets its tarball URL (ours may omit them, with
 * omit-lockfile-registry-resolved): with URL and integrity npm takes the tarball
 * from its cache without asking the registry for package metadata.
 */
function writeProject(dir: string, pack: PackResult, tarball: string): void {
  const registry = mustRun('npm', ['config', 'get', 'registry'], repo).stdout.trim().replace(/\/?$/, '/');
  const manifest = JSON.parse(fs.readFileSync(path.join(repo, 'package.json'), 'utf8'));
  const ourLock = JSON.parse(fs.readFileSync(path.join(repo, 'package-lock.json'), 'utf8'));
  const packages: Record<string, LockEntry> = ourLock.packages;
  const entries: Record<string, LockEntry> = {};
  const pending = Object.keys(manifest.dependencies).map((name) => ['', name]);
  for (let next = pending.pop(); next; next = pending.pop()) {
    const [from, name] = next;
    const location = resolveInLock(packages, from, name);
    if (!location) throw new Error(`package-lock.json has no entry for ${name} (needed by ${from || 'tera-peft'})`);
    if (entries[location]) continue;
    // eslint-disable-next-line @typescript-eslint/no-unused-vars
    const { dev, devOptional, ...entry } = packages[location];
    const basename = name.split('/').pop();
    entry.resolved ??= `${registry}${name}/-/${basename}-${entry.version}.tgz`;
    entries[location] = entry;
    for (const dep of Object.keys({ ...entry.dependencies, ...entry.optionalDependencies }))
      pending.push([location, dep]);
  }
  const spec = `file:${path.relative(dir, tarball)}`;
  const project = { name: 'packaging-check', private: true, dependencies: { 'tera-peft': spec } };
  const lock = {
    name: project.name,
    lockfileVersion: 3,
    requires: true,
    packages: {
      '': { name: project.name, dependencies: project.dependencies },
      'node_modules/tera-peft': {
        version: manifest.version,
        resolved: spec,
        integrity: pack.integrity,
        hasInstallScript: true,
        license: manifest.license,
        dependencies: manifest.dependencies,
        engines: manifest.engines,
      },
      ...entries,
    },
  };
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(project, null, 2));
  fs.writeFileSync(path.join(dir, 'package-lock.json'), JSON.stringify(lock, null, 2));
  writeUserCode(dir);
}

/**
 * What a user writes: one check run from require() and from import, printing
 * JSON, and a type-check of both entry points. Plain JS, as a user would have.
 */
function writeUserCode(dir: string): void {
  const files: Record<string, string> = {
    'check.cjs': `
module.exports = function check(tera) {
  const info = tera.backendInfo();
  const a = tera.tensor(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
  const b = tera.tensor(new Float32Array([1, 0, 0, 1, 1, 1]), [3, 2]);
  const gemm = Array.from(tera.kernels.gemm(a, b).toFloat32Array());

  // One TeRA adapter training step on a fixed batch: the loss on that batch must drop.
  const { nn, autograd } = tera;
  const base = new nn.Sequential(new nn.Linear(16, 16, { seed: 1 }), new nn.ReLU(), new nn.Linear(16, 3, { seed: 2 }));
  const model = tera.injectAdapter(base, new tera.TeraConfig({ targetModules: ['0'] }));
  const [trainable, all] = model.getNbTrainableParameters();
  const opt = new tera.AdamW(model.trainableParameters(), { lr: 0.05 });
  const input = tera.tensor(Float32Array.from({ length: 32 }, (_, i) => Math.sin(i + 1)), [2, 16]);
  const lossOf = () => autograd.softmaxCrossEntropy(model.forward(input), [0, 2]);
  const loss = lossOf();
  loss.backward();
  opt.step();
  const losses = [loss.item(), autograd.noGrad(lossOf).item()];

  return { source: info.addonSource, addon: info.addon, blas: info.cpu.blas, cuda: info.cuda, gemm, losses, trainable, all };
};
`,
    'main.cjs': `console.log(JSON.stringify(require('./check.cjs')(require('tera-peft'))));\n`,
    'main.mjs': `
import tera, { tensor, kernels, backendInfo } from 'tera-peft';
import * as namespace from 'tera-peft';
import check from './check.cjs';
const result = check(tera);
const missing = Object.keys(tera).filter((key) => namespace[key] !== tera[key]);
const named = [tensor, kernels, backendInfo].every((value) => typeof value !== 'undefined');
console.log(JSON.stringify({ ...result, missing, named }));
`,
    'types.cts': `
import tera = require('tera-peft');
const info: tera.BackendInfo = tera.backendInfo();
const source: 'prebuild' | 'local build' | 'TERA_ADDON_PATH' = info.addonSource;
const t: tera.Tensor = tera.tensor(new Float32Array(4), [2, 2]);
export const checks = [source, t.shape];
`,
    'types.mts': `
import tera, { tensor, type BackendInfo, type Tensor } from 'tera-peft';
const info: BackendInfo = tera.backendInfo();
const t: Tensor = tensor(new Float32Array(4), [2, 2]);
export const checks = [info.addonSource, t.shape];
`,
    'tsconfig.json': JSON.stringify({
      compilerOptions: { module: 'nodenext', strict: true, noEmit: true, types: ['node'] },
      files: ['types.cts', 'types.mts'],
    }),
  };
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text.trimStart());
}

interface CheckResult {
  source: string;
  addon: string;
  blas: string;
  cuda: { built: boolean; available: boolean; reason?: string; archs?: string };
  gemm: number[];
  losses: number[];
  trainable: number;
  all: number;
  missing?: string[];
  named?: boolean;
}

function runCheck(app: string, entry: string, env: NodeJS.ProcessEnv): CheckResult {
  const { stdout } = mustRun(process.execPath, [entry], app, env);
  return JSON.parse(stdout.trim().split('\n').pop() as string) as CheckResult;
}

function expectWorkingPackage(result: CheckResult): void {
  expect(result.gemm).toEqual([4, 5, 10, 11]);
  expect(result.blas).toMatch(/OpenBLAS/);
  expect(result.losses[1]).toBeLessThan(result.losses[0]);
  expect(result.trainable).toBeGreaterThan(0);
  expect(result.trainable).toBeLessThan(result.all / 5);
  // Without a GPU the reason must say why, whatever the machine.
  if (!result.cuda.available) expect(result.cuda.reason).toBeTruthy();
}

describe('the npm package', () => {
  let work: string;
  let app: string;
  let pack: PackResult;
  let noToolsEnv: NodeJS.ProcessEnv;
  let installOutput: string;

  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-packaging-'));
    const release = packRelease(work);
    pack = release.pack;
    app = path.join(work, 'app');
    writeProject(app, pack, release.tarball);
    const bin = pathWithoutBuildTools(path.join(work, 'bin'));
    noToolsEnv = userEnv({ PATH: bin });
    const install = ['ci', '--offline', '--foreground-scripts', '--no-audit', '--no-fund'];
    installOutput = mustRun('npm', install, app, noToolsEnv).output;
  }, 600_000);

  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('ships dist/, binding.d.ts, prebuilds/, the native sources (with the MPI binding), CMakeLists.txt, README and LICENSE only', () => {
    const files = pack.files.map((f) => f.path);
    const allowed =
      /^(package\.json|README\.md|LICENSE|CMakeLists\.txt|binding\.d\.ts|scripts\/install(-mpi)?\.mjs|dist\/.+\.(js|mjs|d\.ts|d\.mts|js\.map)|prebuilds\/[\w-]+\/[\w.-]+\.node|native\/(core|cpu|cuda|binding|distributed|mpi)\/[\w.]+\.(cc|cu|cuh|h)|native\/mpi\/(CMakeLists\.txt|package\.json))$/;
    expect(files.filter((file) => !allowed.test(file))).toEqual([]);
    for (const required of [
      'package.json',
      'README.md',
      'LICENSE',
      'CMakeLists.txt',
      'binding.d.ts',
      'scripts/install.mjs',
      'dist/index.js',
      'dist/index.d.ts',
      'dist/index.mjs',
      'dist/index.d.mts',
      'dist/native/loader.js',
      'native/binding/addon.cc',
      'scripts/install-mpi.mjs',
      'native/mpi/CMakeLists.txt',
      'native/mpi/package.json',
      'native/mpi/mpi_binding.cc',
    ]) {
      expect(files).toContain(required);
    }
    // Every native source CMakeLists.txt names must ship, or source builds break.
    const cmake = fs.readFileSync(path.join(repo, 'CMakeLists.txt'), 'utf8');
    const sources = [...cmake.matchAll(/\bnative\/(?!tests\/)[\w/]+\.(?:cc|cu)\b/g)].map((m) => m[0]);
    expect(sources.length).toBeGreaterThan(0);
    for (const source of sources) expect(files).toContain(source);
    expect(files.filter((file) => file.startsWith('prebuilds/'))).toHaveLength(1);
    console.log(`tarball ${pack.filename}: ${(pack.size / 2 ** 20).toFixed(1)} MiB, ${files.length} files`);
  });

  it('ships a stripped prebuilt binary under 40 MB that links only the C and C++ runtime', () => {
    const prebuild = pack.files.find((f) => f.path.startsWith('prebuilds/'));
    const binary = path.join(app, 'node_modules', 'tera-peft', prebuild?.path ?? 'missing');
    expect(fs.statSync(binary).size).toBeLessThan(maxBinaryBytes);
    const dynamic = mustRun('readelf', ['-d', binary], app).stdout;
    const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1]).sort();
    expect(needed.filter((lib) => !/^(libc|libm|libstdc\+\+|libgcc_s|ld-linux[\w-]*)\.so/.test(lib))).toEqual([]);
    expect(mustRun('readelf', ['-S', binary], app).stdout).not.toMatch(/\.symtab/);
    console.log(`prebuilt binary: ${(fs.statSync(binary).size / 2 ** 20).toFixed(1)} MiB, needs ${needed.join(' ')}`);
  });

  it('installs with no build tools on the PATH, using the prebuilt binary', () => {
    const found = toolNames.filter((tool) => run('sh', ['-c', `command -v ${tool}`], app, noToolsEnv).status === 0);
    expect(found).toEqual([]);
    expect(installOutput).toMatch(/tera-peft: using the prebuilt binary prebuilds\/linux-x64\//);
    expect(fs.existsSync(path.join(app, 'node_modules', 'tera-peft', 'build'))).toBe(false);
  });

  it('runs a kernel and a TeRA adapter training step from require()', () => {
    const result = runCheck(app, 'main.cjs', noToolsEnv);
    expect(result.source).toBe('prebuild');
    expect(result.addon).toContain(path.join('node_modules', 'tera-peft', 'prebuilds'));
    expectWorkingPackage(result);
  });

  it('runs the same from import, with the default export and named exports alike', () => {
    const result = runCheck(app, 'main.mjs', noToolsEnv);
    expect(result.source).toBe('prebuild');
    expectWorkingPackage(result);
    expect(result.missing).toEqual([]);
    expect(result.named).toBe(true);
  });

  it('has types for require() and import', () => {
    const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
    const typeRoots = path.join(repo, 'node_modules', '@types');
    const result = run(process.execPath, [tsc, '-p', '.', '--typeRoots', typeRoots], app);
    expect(result.output).toBe('');
    expect(result.status).toBe(0);
  });

  it('explains a binary that does not load: each path tried, its error, and the fixes', () => {
    const broken = path.join(work, 'broken');
    fs.cpSync(app, broken, { recursive: true, verbatimSymlinks: true });
    const packageDir = path.join(broken, 'node_modules', 'tera-peft');
    const prebuild = path.join(packageDir, pack.files.find((f) => f.path.startsWith('prebuilds/'))?.path ?? 'missing');
    fs.writeFileSync(prebuild, 'not an ELF file');
    const result = run(process.execPath, ['main.cjs'], broken, noToolsEnv);
    expect(result.status).toBe(1);
    expect(result.output).toContain('tera-peft: could not load its native addon');
    expect(result.output).toContain(
      `${path.join(packageDir, 'build', 'Release', 'tera.node')} (local build): not found`,
    );
    expect(result.output).toMatch(new RegExp(`${prebuild} \\(prebuild\\): (file too short|invalid ELF header)`));
    expect(result.output).toContain('A binary is damaged, built for another platform');
    expect(result.output).toContain(
      'Build from source instead of using the prebuilt binary: npm_config_build_from_source',
    );
  });

  it('says what to install when a source build is forced without build tools', () => {
    const env = { ...noToolsEnv, npm_config_build_from_source: 'true' };
    const result = run('npm', ['rebuild', 'tera-peft', '--foreground-scripts'], app, env);
    expect(result.status).not.toBe(0);
    expect(result.output).toMatch(
      /cannot build from source: cmake, a C\+\+17 compiler \(c\+\+\), make \(or ninja\) not/,
    );
    expect(result.output).toContain('sudo apt-get install cmake g++ make libopenblas-dev');
    // The failed rebuild leaves the prebuilt binary in use.
    expect(runCheck(app, 'main.cjs', noToolsEnv).source).toBe('prebuild');
  });

  it('builds from source with cmake-js when forced (CPU-only) and then loads that build', () => {
    const sourceApp = path.join(work, 'source-build');
    fs.cpSync(app, sourceApp, { recursive: true, verbatimSymlinks: true });
    const env = userEnv({ npm_config_build_from_source: 'true', TERA_CUDA: '0' });
    const { output } = mustRun('npm', ['rebuild', 'tera-peft', '--foreground-scripts'], sourceApp, env);
    expect(output).toContain('tera-peft: building from source, CPU only (TERA_CUDA=0)');
    const result = runCheck(sourceApp, 'main.cjs', env);
    expect(result.source).toBe('local build');
    expect(result.addon).toBe(path.join(sourceApp, 'node_modules', 'tera-peft', 'build', 'Release', 'tera.node'));
    expect(result.cuda.built).toBe(false);
    expectWorkingPackage(result);
    // A plain rebuild keeps the local build current rather than switching to the prebuilt binary.
    const again = mustRun(
      'npm',
      ['rebuild', 'tera-peft', '--foreground-scripts'],
      sourceApp,
      userEnv({ TERA_CUDA: '0' }),
    );
    expect(again.output).toContain('tera-peft: updating the local build build/Release/tera.node');
  }, 600_000);
});
