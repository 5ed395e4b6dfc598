#!/usr/bin/env node
// Builds tera.distributed's MPI binding (native/mpi -> build-mpi/Release/tera_mpi.node)
// against the MPI on this machine, as mpi4py does: MPI has no ABI shared by its
// implementations, so the binding cannot ship prebuilt (the main binary never
// links MPI). The MPI is the one whose mpicc is first on the PATH, or $MPICC.
//
//   node scripts/install-mpi.mjs             npm's install hook, after the main addon:
//                                            builds when mpicc and cmake are found, else
//                                            says why not; never fails the install (MPI
//                                            is optional: without it tera.distributed
//                                            runs single-process jobs only).
//   node scripts/install-mpi.mjs --required  `npm run build:mpi`: fails when it cannot build.
// TERA_MPI=0 skips the build at install.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const packageRoot = path.resolve(import.meta.dirname, '..');
const addon = path.join('build-mpi', 'Release', 'tera_mpi.node');
const required = process.argv.includes('--required');
const say = (line) => console.log(`tera-peft: ${line}`);

const install =
  'install an MPI and its compiler wrapper (Debian/Ubuntu: sudo apt-get install openmpi-bin libopenmpi-dev; ' +
  'Fedora/RHEL: sudo dnf install openmpi-devel), then run `npm run build:mpi` (in a clone) or ' +
  '`npm rebuild tera-peft --foreground-scripts` (in a project)';

function skip(reason) {
  if (required) {
    console.error(`tera-peft: cannot build the MPI binding: ${reason}\n  Fix: ${install}`);
    process.exit(1);
  }
  say(`MPI binding not built (${reason}); tera.distributed will run single-process jobs only. To use MPI: ${install}`);
  process.exit(0);
}

if (!required && process.env.TERA_MPI === '0') skip('TERA_MPI=0');
const mpicc = process.env.MPICC || 'mpicc';
const probe = spawnSync(mpicc, ['--version'], { encoding: 'utf8' });
if (probe.error) skip(`${mpicc} not found on the PATH`);
if (probe.status !== 0) skip(`${mpicc} does not run (is its C compiler installed?): ${probe.stderr.trim()}`);
if (spawnSync(process.env.CMAKE || 'cmake', ['--version'], { stdio: 'ignore' }).status !== 0) {
  skip('cmake not found on the PATH');
}

const args = [
  require.resolve('cmake-js/bin/cmake-js'),
  'compile',
  '--directory',
  path.join('native', 'mpi'),
  '--out',
  'build-mpi',
  '--parallel',
  String(availableParallelism()),
  ...(process.env.MPICC ? [`--CDMPI_C_COMPILER=${process.env.MPICC}`] : []),
];
say(`building the MPI binding with ${mpicc}: cmake-js ${args.slice(1).join(' ')}`);
const build = spawnSync(process.execPath, args, { cwd: packageRoot, stdio: 'inherit' });
if (build.status !== 0) skip('the build failed; the CMake output above says why');
// A binding that builds but does not load (an MPI library that moved) is no binding.
const check = spawnSync(
  process.execPath,
  ['-e', `console.log(require(${JSON.stringify(path.join(packageRoot, addon))}).libraryVersion())`],
  { encoding: 'utf8' },
);
if (check.status !== 0) skip(`${addon} was built but does not load: ${check.stderr.trim()}`);
say(`built ${addon} against ${check.stdout.trim()}`);
