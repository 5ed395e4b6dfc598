/**
 * Rank-0-only work in a job: logging, and saving (or anything else) done once
 * rather than by every rank. onRank0 runs a function on rank 0 while the others
 * wait, then tells every rank whether it worked: a failure on rank 0 throws on
 * every rank, with its message, so no rank runs on alone into a collective the
 * others will never join. When it returns, what rank 0 wrote is complete, so
 * every rank may read it.
 */
import type { PeftModel } from '../adapters/peft-model';
import { type SaveAdapterOptions, type SavedAdapter, saveAdapter as saveAdapterFiles } from '../adapters/save';
import type { Module } from '../nn/module';
import { type Group, group, runSync } from './group';
import { type Steps, broadcastBytes } from './requests';

/** console.log on rank 0 only. */
export function log(...args: unknown[]): void {
  if (group('log').info.rank === 0) console.log(...args);
}

function* onRank0Steps<T>(g: Group, fn: () => T): Steps<T | undefined> {
  const isRoot = g.info.rank === 0;
  let result: T | undefined;
  let failure: unknown = null;
  if (isRoot) {
    try {
      result = fn();
      if (result instanceof Promise) {
        failure = new Error('onRank0 takes a synchronous function; await async work before calling it');
      }
    } catch (error) {
      failure = error;
    }
  }
  const status = isRoot
    ? new TextEncoder().encode(JSON.stringify(failure === null ? null : String((failure as Error)?.message ?? failure)))
    : null;
  const message = JSON.parse(new TextDecoder().decode(yield* broadcastBytes(status, 0, isRoot))) as string | null;
  if (message !== null) throw isRoot ? failure : new Error(`onRank0: rank 0 failed: ${message}`);
  return result;
}

/**
 * Runs `fn` on rank 0 and returns its result there (undefined elsewhere).
 * Collective: every rank calls it, and the others wait until rank 0 is done,
 * under the same timeout as any collective. `fn` must not call collectives.
 */
export function onRank0<T>(fn: () => T): T | undefined {
  if (typeof fn !== 'function') throw new Error('onRank0(fn) takes a function');
  return runSync('onRank0', (g) => onRank0Steps(g, fn));
}

/** saveAdapter on rank 0 only (see onRank0); returns what it wrote there, undefined elsewhere. */
export function saveAdapter(
  model: Module | PeftModel,
  dir: string,
  options: SaveAdapterOptions = {},
): SavedAdapter | undefined {
  return onRank0(() => saveAdapterFiles(model, dir, options));
}
