/**
 * Whole-file writes that never leave a half-written file behind: the data goes
 * to a temporary file in the target's directory (so the rename cannot cross a
 * file system), is flushed to disk, and only then renamed over the target.
 *
 * The temporary file is named '.<target name>.<pid>.<12 hex>.tmp'. A writer
 * killed before its rename leaves one behind; the next write of the same target
 * removes those whose process is gone (never those of a live process, which may
 * be writing right now).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { types } from 'node:util';

/**
 * Replaces `target` with `data` in one step. On any failure the temporary file
 * is removed, a previous file at `target` is left as it was, and the error names
 * the target.
 */
export function writeFileAtomic(target: string, data: string | Uint8Array): void {
  if (typeof target !== 'string' || target.length === 0) {
    throw new Error(`writeFileAtomic: the path must be a non-empty string, got ${String(target)}`);
  }
  if (typeof data !== 'string' && !types.isUint8Array(data)) {
    throw new Error(`writeFileAtomic: data for ${target} must be a string or a Uint8Array`);
  }
  const dir = path.dirname(target);
  removeStaleTemporaries(dir, path.basename(target));
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number | null = null;
  try {
    fd = fs.openSync(temp, 'wx');
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(temp, target);
  } catch (err) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(temp, { force: true });
    throw new Error(`writeFileAtomic: could not write ${target}: ${(err as Error).message}`, { cause: err });
  }
  syncDirectory(dir);
}

function processIsGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** Removes temporary files of `name` in `dir` whose writing process no longer exists. */
function removeStaleTemporaries(dir: string, name: string): void {
  let entries: string[];
  try {
    entries = fs.readdirSync(dir);
  } catch {
    return; // a missing directory is reported by the write itself
  }
  const prefix = `.${name}.`;
  for (const entry of entries) {
    if (!entry.startsWith(prefix)) continue;
    const match = /^(\d+)\.[0-9a-f]{12}\.tmp$/.exec(entry.slice(prefix.length));
    if (match === null) continue;
    const pid = Number(match[1]);
    if (pid !== process.pid && processIsGone(pid)) fs.rmSync(path.join(dir, entry), { force: true });
  }
}

/** Makes the rename itself durable; platforms that cannot fsync a directory (Windows) skip this. */
function syncDirectory(dir: string): void {
  let fd: number;
  try {
    fd = fs.openSync(dir, 'r');
  } catch {
    return;
  }
  try {
    fs.fsyncSync(fd);
  } catch {
    // EISDIR/EPERM/EINVAL: the directory entry is still written, just not forced to disk yet.
  } finally {
    fs.closeSync(fd);
  }
}
