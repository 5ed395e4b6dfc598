/**
 * Whole-file writes that never leave a half-written file behind: the data goes
 * to a temporary file in the target's directory (so the rename cannot cross a
 * file system), is flushed to disk, and only then renamed over the target.
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
