/**
 * The native tests that need a GPU, and the script that runs them there.
 *
 * tera_native_tests (native/tests/cuda_vs_cpu.cc) checks every CUDA kernel
 * against its CPU twin. Whether this machine has a usable CUDA device is asked
 * when the file is collected (`--probe`); without one the check is reported as
 * skipped, with the reason, never as passed.
 *
 * scripts/gpu-check.sh must not be able to pass falsely: it runs here against
 * fake nvcc, cmake, nvidia-smi and compute-sanitizer commands that build a fake
 * test executable, and must fail on a failed build (never running an old
 * executable), on SKIPPED, on a failed check and on any sanitizer finding.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { buildDir, runNative, summary } from './helpers/native';

const executable = path.join(buildDir, 'tera_native_tests');
const minutes = 60_000;

const probe = fs.existsSync(executable)
  ? spawnSync(executable, ['--probe'], { encoding: 'utf8', timeout: minutes })
  : null;
const noDevice = probe?.status === 77 ? (/^SKIPPED: (.*)$/m.exec(probe.stdout)?.[1] ?? 'no reason given') : null;
if (noDevice !== null) console.warn(`skipped: the CUDA-vs-CPU test needs a usable CUDA device: ${noDevice}`);
const gpuIt = noDevice === null ? it : it.skip;

describe('native CUDA-vs-CPU test executable', () => {
  it('is built alongside the addon', () => {
    expect(fs.existsSync(executable) ? executable : 'missing: run `npm run build:native`').toBe(executable);
  });

  it('answers the probe: a device (exit 0), or SKIPPED with the reason (exit 77)', () => {
    expect(probe?.error).toBeUndefined();
    expect([0, 77]).toContain(probe?.status);
    if (probe?.status === 77) expect((noDevice ?? '').length).toBeGreaterThan(0);
    else expect(probe?.stdout).toMatch(/^CUDA device: /m);
  });

  gpuIt(
    'every CUDA kernel matches its CPU twin',
    async () => {
      const run = await runNative(executable, [], {}, 20 * minutes);
      const result = summary(run.stdout);
      expect(result?.failures ?? ['no summary line']).toEqual([]);
      expect(run.status).toBe(0);
      expect(result?.passed ?? 0).toBeGreaterThan(100);
    },
    25 * minutes,
  );
});

describe('scripts/gpu-check.sh cannot pass falsely', () => {
  const script = path.join(__dirname, '..', 'scripts', 'gpu-check.sh');
  let root: string;

  // Fake tools: cmake "builds" a test executable whose behaviour FAKE_TESTS
  // chooses (pass, skip, fail); FAKE_BUILD=fail makes the build fail; each
  // compute-sanitizer tool named in FAKE_FINDINGS reports an error.
  const tools: Record<string, string> = {
    nvcc: 'exit 0',
    'nvidia-smi': `case "$*" in
  *--query-gpu=compute_cap*) echo "\${FAKE_COMPUTE_CAP:-9.0}" ;;
  *) echo "Fake GPU, 580.00, \${FAKE_COMPUTE_CAP:-9.0}, 143771 MiB" ;;
esac`,
    cmake: `if [ "$1" = "--build" ]; then
  [ "\${FAKE_BUILD:-ok}" = fail ] && { echo "error: the compiler failed"; exit 2; }
  cat > "$2/tera_native_tests" <<'EOF'
#!/bin/sh
echo "args: $*" >> "$FAKE_LOG"
case "\${FAKE_TESTS:-pass}" in
  pass) echo "PASS a check"; echo "BENCH something"; echo "1 passed, 0 failed"; exit 0 ;;
  skip) echo "SKIPPED: no CUDA device found"; echo "0 passed, 0 failed"; exit 77 ;;
  *) echo "FAIL a check: differs"; echo "0 passed, 1 failed"; exit 1 ;;
esac
EOF
  chmod +x "$2/tera_native_tests"
  exit 0
fi
echo "configure: $*" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do [ "$1" = -B ] && mkdir -p "$2"; shift; done
exit 0`,
    'compute-sanitizer': `tool=$2
shift 4
if echo "\${FAKE_FINDINGS:-}" | grep -qw "$tool"; then
  echo "========= Invalid __global__ read of size 4 bytes"; echo "========= ERROR SUMMARY: 1 error"; exit 3
fi
"$@"; code=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $code`,
  };

  beforeAll(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-gpu-check-'));
    fs.mkdirSync(path.join(root, 'bin'));
    for (const [name, body] of Object.entries(tools)) {
      fs.writeFileSync(path.join(root, 'bin', name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    }
    // Two cuBLAS installs where the full paths sort the other way round from the versions.
    for (const file of ['aaa/torch/lib/libcublas.so.13.0.2', 'zzz/nvidia/cublas/lib/libcublas.so.12.9.1']) {
      fs.mkdirSync(path.dirname(path.join(root, 'cublas', file)), { recursive: true });
      fs.writeFileSync(path.join(root, 'cublas', file), '');
    }
  });

  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  function gpuCheck(env: Record<string, string>): { status: number | null; summary: string; log: string } {
    const out = path.join(root, 'out');
    fs.rmSync(out, { recursive: true, force: true });
    const fakeLog = path.join(root, 'fake.log');
    fs.writeFileSync(fakeLog, '');
    const run = spawnSync('bash', [script], {
      encoding: 'utf8',
      timeout: minutes,
      env: {
        ...process.env,
        PATH: `${path.join(root, 'bin')}:${process.env.PATH}`,
        OUT: out,
        TERA_GPU_BUILD: path.join(root, 'build'),
        TERA_CUBLAS_DIRS: path.join(root, 'cublas'),
        TERA_CUBLAS_PATH: '',
        TERA_CUDA_ARCH: '',
        FAKE_LOG: fakeLog,
        ...env,
      },
    });
    expect(run.error).toBeUndefined();
    const summaryFile = path.join(out, 'summary.log');
    return {
      status: run.status,
      summary: fs.existsSync(summaryFile) ? fs.readFileSync(summaryFile, 'utf8') : '',
      log: fs.readFileSync(fakeLog, 'utf8'),
    };
  }

  it('passes when everything passes, with the architecture from nvidia-smi and the newest cuBLAS', () => {
    const run = gpuCheck({ FAKE_COMPUTE_CAP: '8.6' });
    expect(run.summary).toMatch(/all passed/);
    expect(run.status).toBe(0);
    expect(run.log).toMatch(/-DCMAKE_CUDA_ARCHITECTURES=86 /);
    expect(run.summary).toContain(`TERA_CUBLAS_PATH=${path.join(root, 'cublas', 'aaa/torch/lib/libcublas.so.13.0.2')}`);
    // The full run, then the four sanitizer tools on the small run.
    expect(run.log.match(/^args: $/gm)?.length).toBe(1);
    expect(run.log.match(/^args: --sanitizer$/gm)?.length).toBe(4);
    expect(run.summary).toMatch(/BENCH something/);
  });

  it('fails when the build fails, without running the executable of an earlier build', () => {
    expect(gpuCheck({}).status).toBe(0); // leaves an executable behind
    const run = gpuCheck({ FAKE_BUILD: 'fail' });
    expect(run.status).not.toBe(0);
    expect(run.summary).toMatch(/FAILED: the build failed/);
    expect(run.log).not.toMatch(/^args:/m);
  });

  it('fails when the tests report SKIPPED (no usable device)', () => {
    const run = gpuCheck({ FAKE_TESTS: 'skip' });
    expect(run.status).not.toBe(0);
    expect(run.summary).toMatch(/FAILED: tests skipped, no usable CUDA device: SKIPPED: no CUDA device found/);
  });

  it('fails when a check fails', () => {
    const run = gpuCheck({ FAKE_TESTS: 'fail' });
    expect(run.status).not.toBe(0);
    expect(run.summary).toMatch(/FAILED: tests: exit 1/);
  });

  it.each(['memcheck', 'racecheck', 'synccheck', 'initcheck'])(
    'fails when compute-sanitizer %s finds an error',
    (tool) => {
      const run = gpuCheck({ FAKE_FINDINGS: tool });
      expect(run.status).not.toBe(0);
      expect(run.summary).toMatch(
        new RegExp(`FAILED: compute-sanitizer ${tool}: exit 3 \\(========= ERROR SUMMARY: 1 error`),
      );
    },
  );

  it('fails when the compute capability cannot be read', () => {
    const run = gpuCheck({ FAKE_COMPUTE_CAP: 'N/A' });
    expect(run.status).not.toBe(0);
    expect(run.summary).toMatch(/FAILED: cannot read the compute capability/);
  });
});
