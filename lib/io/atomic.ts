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

/**
 * Replaces the folder `target` with one that `fill(dir)` writes into a fresh
 * temporary folder beside it, so no half-written folder is ever visible.
 * Entries of an existing `target` for which `replaced(name)` is false (files
 * that are not the caller's, such as a tokenizer next to a checkpoint) are
 * carried into the new folder as hard links (copies where linking fails).
 * The swap is two renames (old folder aside, new folder in) and then the old
 * folder is removed; on any failure the temporary folder is removed and
 * `target` is left as it was. A crash between the two renames leaves the old
 * folder complete under its '.<name>.<pid>.<hex>.old' name.
 */
export function writeDirectoryAtomic(
  target: string,
  fill: (dir: string) => void,
  replaced: (name: string) => boolean,
): void {
  const parent = path.dirname(target);
  const base = path.basename(target);
  const stamp = `${process.pid}.${randomBytes(6).toString('hex')}`;
  const temp = path.join(parent, `.${base}.${stamp}.tmpdir`);
  const aside = path.join(parent, `.${base}.${stamp}.old`);
  let existing = false;
  try {
    fs.mkdirSync(parent, { recursive: true });
    existing = fs.existsSync(target);
    if (existing && !fs.statSync(target).isDirectory()) throw new Error('it exists and is not a folder');
    fs.mkdirSync(temp);
    fill(temp);
    if (existing) {
      for (const name of fs.readdirSync(target)) {
        if (!replaced(name)) linkTree(path.join(target, name), path.join(temp, name));
      }
    }
    syncDirectory(temp);
    if (existing) fs.renameSync(target, aside);
    try {
      fs.renameSync(temp, target);
    } catch (err) {
      if (existing) fs.renameSync(aside, target);
      throw err;
    }
  } catch (err) {
    fs.rmSync(temp, { recursive: true, force: true });
    throw new Error(`writeDirectoryAtomic: could not write ${target}: ${(err as Error).message}`, { cause: err });
  }
  syncDirectory(parent);
  if (existing) fs.rmSync(aside, { recursive: true, force: true });
}

/** Recreates `source` at `destination`: folders recursively, files as hard links or copies, links as links. */
function linkTree(source: string, destination: string): void {
  const stat = fs.lstatSync(source);
  if (stat.isDirectory()) {
    fs.mkdirSync(destination);
    for (const name of fs.readdirSync(source)) linkTree(path.join(source, name), path.join(destination, name));
  } else if (stat.isSymbolicLink()) {
    fs.symlinkSync(fs.readlinkSync(source), destination);
  } else {
    try {
      fs.linkSync(source, destination);
    } catch {
      fs.copyFileSync(source, destination);
    }
  }
}

/** Writes all of `data` to `fd` (writeSync may write less than asked). */
export function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done);
}
