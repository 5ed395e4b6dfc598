/**
 * The one registry of frozen buffers that adapted layers share: TeRA's core and
 * factors (one set per signature), VeRA's projections (one pair per adapter
 * shape and seed) and TeRA's workspaces (one per layer size). Each value exists
 * once per key; every layer that uses it holds one reference, taken with
 * acquire() and given back with release(), and the last release frees it.
 *
 * Entries are held weakly: a model dropped without unload() does not pin its
 * buffers here (the tensors' own finalisers free them), and a key whose value
 * was collected is made afresh on the next acquire().
 */

/** What a registry value must offer: freeing its native memory. */
export interface Disposable {
  dispose(): void;
}

/** One reference-counted value. Users share this handle; each acquire() is matched by one release(). */
export class Shared<T extends Disposable> {
  readonly value: T;
  readonly #registry: SharedRegistry<T>;
  readonly #key: string;
  #users = 0;

  /** @internal made by SharedRegistry.acquire */
  constructor(registry: SharedRegistry<T>, key: string, value: T) {
    this.#registry = registry;
    this.#key = key;
    this.value = value;
  }

  /** @internal */
  addUser(): this {
    this.#users++;
    return this;
  }

  /** How many users hold it now (e.g. the layers sharing a workspace). */
  get users(): number {
    return this.#users;
  }

  /** Drops one user; the last one frees the value and removes the entry. */
  release(): void {
    if (--this.#users > 0) return;
    this.#registry.forget(this.#key, this);
    this.value.dispose();
  }
}

export class SharedRegistry<T extends Disposable> {
  readonly #entries = new Map<string, WeakRef<Shared<T>>>();

  /** The value under `key` with one more user, made by `make` if none is alive. */
  acquire(key: string, make: () => T): Shared<T> {
    let entry = this.#entries.get(key)?.deref();
    if (entry === undefined) {
      entry = new Shared(this, key, make());
      this.#entries.set(key, new WeakRef(entry));
    }
    return entry.addUser();
  }

  /** How many values are alive now. */
  get size(): number {
    for (const [key, ref] of this.#entries) if (ref.deref() === undefined) this.#entries.delete(key);
    return this.#entries.size;
  }

  /** @internal removes `entry` (and not a newer value under the same key). */
  forget(key: string, entry: Shared<T>): void {
    if (this.#entries.get(key)?.deref() === entry) this.#entries.delete(key);
  }
}
