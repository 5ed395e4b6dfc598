/**
 * Running the native test executables (built into build/ with the addon) and
 * reading what they report: one line per check (PASS / FAIL / NOTRUN) and a
 * last line "N passed, M failed".
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const buildDir = path.join(__dirname, '..', '..', 'build');

export interface NativeRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs an executable to completion (killed after `timeoutMs`), capturing both streams. */
export function runNative(
  executable: string,
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 600_000,
): Promise<NativeRun> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(executable, args, { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      resolve({ status, signal, stdout, stderr, seconds });
    });
  });
}

export interface Summary {
  passed: number;
  failed: number;
  /** The FAIL lines, for the failure message. */
  failures: string[];
}

/** The final "N passed, M failed" line (null when the run did not get there). */
export function summary(stdout: string): Summary | null {
  const lines = stdout.trimEnd().split('\n');
  const match = /^(\d+) passed, (\d+) failed$/.exec(lines[lines.length - 1] ?? '');
  if (!match) return null;
  return {
    passed: Number(match[1]),
    failed: Number(match[2]),
    failures: lines.filter((line) => line.startsWith('FAIL ')),
  };
}

/**
 * Targets CMake left out and why (build/unavailable-native-tests.json, written
 * when configuring), e.g. a sanitizer the compiler lacks.
 */
export function unavailableTargets(): Record<string, string> {
  const file = path.join(buildDir, 'unavailable-native-tests.json');
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, string>) : {};
}
