/**
 * Model checkpoints in Hugging Face's layout, as from_pretrained reads them and
 * save_pretrained writes them: a folder with config.json and model.safetensors,
 * or with model.safetensors.index.json ({metadata: {total_size}, weight_map})
 * and shards named model-00001-of-0000N.safetensors.
 *
 * openCheckpoint() reads config.json, the index and every shard's header, maps
 * the stored keys to the names of expectedParameters(config) (GPT-2 files often
 * lack the `transformer.` prefix; causal-mask buffers and rotary inv_freq
 * buffers are not weights and are skipped) and checks the whole checkpoint
 * before any tensor is read: every missing, unexpected, mis-shaped or duplicated
 * tensor, missing shard or index entry absent from its shard is listed in one
 * error. Tensors are then read one at a time into the caller's destination
 * (loadInto), through the safetensors reader's bounded scratch buffer, so the
 * model never exists twice in memory: the extra memory is one tensor's float32
 * values (which Storage.write takes whole) plus the scratch.
 *
 * writeCheckpoint() writes the same layout, sharded exactly as
 * huggingface_hub's split_state_dict_into_shards does, into a temporary folder
 * that replaces the target in one step (lib/io/atomic).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { writeAll, writeDirectoryAtomic } from '../io/atomic';
import {
  encodeSafetensors,
  isWritableDtype,
  openSafetensors,
  type SafetensorsReader,
  type WritableDtype,
} from '../io/safetensors';
import type { DeviceRequest } from '../tensor/device';
import { formatShape, sameShape } from '../shape';
import { Tensor, uninitialized } from '../tensor/tensor';
import { expectedParameters, modelConfigToJson, parseModelConfig, readModelConfig } from './config';
import type { ModelConfig } from './config';

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';
const SHARD_NAME = /^model-(\d{5})-of-(\d{5})\.safetensors$/;
/** save_pretrained's default max_shard_size. */
const DEFAULT_MAX_SHARD_SIZE = '5GB';

/** One tensor of an opened checkpoint. */
export interface CheckpointTensor {
  /** Hugging Face's name, as in expectedParameters(). */
  readonly name: string;
  readonly shape: readonly number[];
  /** The stored dtype (F32, F16, BF16 or F64); reads give float32. */
  readonly dtype: string;
  /** The file that holds it, and its key there (which may lack the model's prefix). */
  readonly file: string;
  readonly key: string;
}

/** Where a family's names start, and which stored keys are buffers rather than weights. */
const FAMILY_KEYS = {
  gpt2: { prefix: 'transformer.', buffers: /^transformer\.h\.\d+\.attn\.(bias|masked_bias)$/ },
  llama: { prefix: 'model.', buffers: /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/ },
} as const;

function familyKeys(config: ModelConfig) {
  return config.modelType === 'gpt2' ? FAMILY_KEYS.gpt2 : FAMILY_KEYS.llama;
}

type Destinations = Readonly<Record<string, Tensor>> | ReadonlyMap<string, Tensor>;

function destinationEntries(destinations: Destinations): [string, Tensor][] {
  return destinations instanceof Map ? [...destinations] : Object.entries(destinations);
}

/**
 * A checked checkpoint whose tensors have not been read yet. Holds the shards
 * open until close().
 */
export class Checkpoint {
  readonly folder: string;
  readonly config: ModelConfig;
  /** Every tensor, in the order of expectedParameters(config). */
  readonly tensors: readonly CheckpointTensor[];
  /** Stored keys that are not weights (causal-mask and inv_freq buffers); never read. */
  readonly skipped: readonly string[];
  readonly #byName: Map<string, { tensor: CheckpointTensor; reader: SafetensorsReader }>;
  readonly #readers: SafetensorsReader[];

  /** Use openCheckpoint(). */
  constructor(
    folder: string,
    config: ModelConfig,
    located: { tensor: CheckpointTensor; reader: SafetensorsReader }[],
    skipped: string[],
    readers: SafetensorsReader[],
  ) {
    this.folder = folder;
    this.config = config;
    this.tensors = Object.freeze(located.map(({ tensor }) => tensor));
    this.skipped = Object.freeze(skipped);
    this.#byName = new Map(located.map((entry) => [entry.tensor.name, entry]));
    this.#readers = readers;
  }

  /** Converts tensor `name` to float32 into `target` (a Float32Array of exactly its size). */
  readInto(name: string, target: Float32Array): void {
    const found = this.#byName.get(name);
    if (found === undefined) throw new Error(`checkpoint ${this.folder}: no tensor "${name}"`);
    found.reader.readInto(found.tensor.key, target);
  }

  /** Tensor `name` as a new Float32Array. */
  read(name: string): Float32Array {
    const found = this.#byName.get(name);
    if (found === undefined) throw new Error(`checkpoint ${this.folder}: no tensor "${name}"`);
    return found.reader.read(found.tensor.key);
  }

  /**
   * Copies every tensor into its destination (by Hugging Face name), one at a
   * time. The names, shapes and state of all destinations are checked first, so
   * a mismatch changes nothing. A read error part way (a shard changed on disk
   * after opening) leaves the earlier destinations written: load into a model
   * built for the purpose.
   */
  loadInto(destinations: Destinations): void {
    const given = destinationEntries(destinations);
    const problems: string[] = [];
    for (const [name, tensor] of given) {
      const problem = this.#destinationProblem(name, tensor);
      if (problem !== null) problems.push(problem);
    }
    const givenNames = new Set(given.map(([name]) => name));
    const missing = this.tensors.filter((t) => !givenNames.has(t.name)).map((t) => t.name);
    if (missing.length > 0) problems.push(`no destination for ${missing.join(', ')}`);
    if (problems.length > 0) {
      throw new Error(`checkpoint ${this.folder}: cannot load into these destinations: ${problems.join('; ')}`);
    }
    for (const [name, tensor] of given) this.#fill(name, tensor);
  }

  /** Copies one tensor into `destination` (checked first: same shape, live). */
  load(name: string, destination: Tensor): void {
    const problem = this.#destinationProblem(name, destination);
    if (problem !== null) throw new Error(`checkpoint ${this.folder}: ${problem}`);
    this.#fill(name, destination);
  }

  #destinationProblem(name: string, tensor: unknown): string | null {
    const spec = this.#byName.get(name)?.tensor;
    if (spec === undefined) return `no tensor in the checkpoint for destination "${name}"`;
    if (!(tensor instanceof Tensor)) return `destination "${name}" is not a Tensor`;
    if (tensor.disposed) return `destination "${name}" has been disposed`;
    if (!sameShape(tensor.shape, spec.shape)) {
      return `destination "${name}" is ${formatShape(tensor.shape)}, the checkpoint's is ${formatShape(spec.shape)}`;
    }
    return null;
  }

  /** One tensor's float32 values (the only full-size temporary), written to the storage whole. */
  #fill(name: string, tensor: Tensor): void {
    const values = new Float32Array(tensor.size);
    this.readInto(name, values);
    tensor.storage.write(values);
  }

  /** Closes the shards; reads fail afterwards. Calling it twice is harmless. */
  close(): void {
    for (const reader of this.#readers) reader.close();
  }
}

/** Problems found while opening, grouped so the error reads as a list. */
class ProblemList {
  readonly groups = new Map<string, string[]>();

  add(group: string, item: string): void {
    const list = this.groups.get(group) ?? [];
    list.push(item);
    this.groups.set(group, list);
  }

  /** "<what>:" then one line per group. */
  message(what: string): string {
    const parts = [...this.groups].map(([group, items]) => `${group} (${items.length}): ${items.join(', ')}`);
    return `${what}:\n  ${parts.join('\n  ')}`;
  }
}

function readIndex(file: string): Record<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: cannot read the index: ${(err as Error).message}`, { cause: err });
  }
  const weightMap = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new Error(`${file}: the index needs a "weight_map" object of tensor name -> shard file`);
  }
  for (const [key, shard] of Object.entries(weightMap)) {
    // A shard is a file of this folder: a path elsewhere is refused, not followed.
    if (typeof shard !== 'string' || shard !== path.basename(shard) || shard === '.' || shard === '..') {
      throw new Error(`${file}: weight_map["${key}"] must be a file name in the folder, got ${JSON.stringify(shard)}`);
    }
  }
  return weightMap as Record<string, string>;
}

/**
 * Opens and checks a checkpoint folder (see the file header). Throws one error
 * listing every problem; on success the caller reads tensors and then close()s.
 */
export function openCheckpoint(folder: string): Checkpoint {
  const config = readModelConfig(path.join(folder, CONFIG_FILE));
  const single = path.join(folder, WEIGHTS_FILE);
  const indexFile = path.join(folder, INDEX_FILE);
  const hasSingle = fs.existsSync(single);
  const hasIndex = fs.existsSync(indexFile);
  if (hasSingle && hasIndex) {
    throw new Error(`checkpoint ${folder} has both ${WEIGHTS_FILE} and ${INDEX_FILE}; remove the stale one`);
  }
  if (!hasSingle && !hasIndex) throw new Error(`checkpoint ${folder} has neither ${WEIGHTS_FILE} nor ${INDEX_FILE}`);
  const weightMap = hasIndex ? readIndex(indexFile) : null;
  const shardNames = weightMap ? [...new Set(Object.values(weightMap))] : [WEIGHTS_FILE];

  const problems = new ProblemList();
  const readers: SafetensorsReader[] = [];
  try {
    // Stored key -> where it is; every shard's header is read and checked.
    const stored = new Map<string, { reader: SafetensorsReader; shard: string }>();
    for (const shard of shardNames) {
      let reader: SafetensorsReader;
      try {
        reader = openSafetensors(path.join(folder, shard));
      } catch (err) {
        problems.add(
          fs.existsSync(path.join(folder, shard)) ? 'unreadable shards' : 'missing shards',
          `${shard}${fs.existsSync(path.join(folder, shard)) ? ` (${(err as Error).message})` : ''}`,
        );
        continue;
      }
      readers.push(reader);
      for (const key of reader.entries.keys()) {
        const previous = stored.get(key);
        if (previous !== undefined) {
          problems.add('tensors stored in two shards', `${key} (${previous.shard} and ${shard})`);
        } else if (weightMap && weightMap[key] !== shard) {
          problems.add(
            'tensors the index does not place in their shard',
            `${key} (in ${shard}, index: ${weightMap[key] ?? 'not listed'})`,
          );
        } else {
          stored.set(key, { reader, shard });
        }
      }
    }
    if (weightMap) {
      for (const [key, shard] of Object.entries(weightMap)) {
        const reader = readers.find((r) => path.basename(r.file) === shard);
        if (reader && !reader.entries.has(key))
          problems.add('tensors listed in the index but absent from their shard', `${key} (${shard})`);
      }
    }

    const { prefix, buffers } = familyKeys(config);
    // transformers' rule: a checkpoint of the base model (no key has the prefix) gets it added.
    const addPrefix = ![...stored.keys()].some((key) => key.startsWith(prefix));
    const byName = new Map<string, { key: string; reader: SafetensorsReader }>();
    const skipped: string[] = [];
    for (const [key, { reader }] of stored) {
      const name = addPrefix && !key.startsWith('lm_head.') ? prefix + key : key;
      if (buffers.test(name)) skipped.push(key);
      else byName.set(name, { key, reader });
    }

    const located: { tensor: CheckpointTensor; reader: SafetensorsReader }[] = [];
    for (const spec of expectedParameters(config)) {
      const found = byName.get(spec.name);
      if (found === undefined) {
        problems.add('missing tensors', spec.name);
        continue;
      }
      byName.delete(spec.name);
      const entry = found.reader.entries.get(found.key)!;
      if (!sameShape(entry.shape, spec.shape)) {
        problems.add(
          'mis-shaped tensors',
          `${spec.name} is ${formatShape(entry.shape)}, expected ${formatShape(spec.shape)}`,
        );
        continue;
      }
      located.push({
        tensor: Object.freeze({
          name: spec.name,
          shape: spec.shape,
          dtype: entry.dtype,
          file: found.reader.file,
          key: found.key,
        }),
        reader: found.reader,
      });
    }
    for (const name of byName.keys()) {
      const tiedHint =
        name === 'lm_head.weight' && config.tieWordEmbeddings
          ? ' (config.json ties lm_head to the token embedding: set tie_word_embeddings to false to load a separate lm_head)'
          : '';
      problems.add('unexpected tensors', `${name}${tiedHint}`);
    }
    if (problems.groups.size > 0) throw new Error(problems.message(`checkpoint ${folder} does not match its config`));
    return new Checkpoint(folder, config, located, skipped, readers);
  } catch (err) {
    for (const reader of readers) reader.close();
    throw err;
  }
}

export interface ReadCheckpointOptions {
  /** Where the tensors go (default: the default device). */
  device?: DeviceRequest;
}

/**
 * Opens, checks and loads a whole checkpoint: each tensor is allocated on the
 * device and filled in turn. On any error every tensor made so far is freed.
 */
export function readCheckpoint(
  folder: string,
  options: ReadCheckpointOptions = {},
): { config: ModelConfig; tensors: Map<string, Tensor> } {
  const checkpoint = openCheckpoint(folder);
  const tensors = new Map<string, Tensor>();
  try {
    for (const { name, shape } of checkpoint.tensors) {
      const tensor = uninitialized(shape, { device: options.device }); // load() writes every element
      tensors.set(name, tensor);
      checkpoint.load(name, tensor);
    }
    return { config: checkpoint.config, tensors };
  } catch (err) {
    for (const tensor of tensors.values()) tensor.dispose();
    throw err;
  } finally {
    checkpoint.close();
  }
}

export interface WriteCheckpointOptions {
  /** Largest shard in bytes, or a size such as '5GB' / '500MiB' (default '5GB', as save_pretrained). */
  maxShardSize?: number | string;
  /** Stored dtype (default 'F32'); BF16 and F16 round to nearest even. */
  dtype?: WritableDtype;
}

const SIZE_UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

/** Bytes from a number or a size string, as huggingface_hub's parse_size_to_int reads it. */
function parseSize(size: number | string): number {
  if (typeof size === 'number') {
    if (Number.isSafeInteger(size) && size > 0) return size;
  } else if (typeof size === 'string') {
    const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$/.exec(size);
    const unit = match ? SIZE_UNITS[match[2].toUpperCase()] : undefined;
    if (match && unit !== undefined && Number(match[1]) * unit >= 1) return Math.floor(Number(match[1]) * unit);
  }
  throw new Error(
    `writeCheckpoint: maxShardSize must be a positive number of bytes or a size like '5GB', got ${JSON.stringify(size)}`,
  );
}

const DTYPE_BYTES: Record<WritableDtype, number> = { F32: 4, F16: 2, BF16: 2 };
const TORCH_DTYPE: Record<WritableDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

/**
 * Splits tensors into shards as huggingface_hub's split_state_dict_into_shards:
 * in order, a new shard when the next tensor would pass the limit, and a tensor
 * larger than the limit alone in its own shard.
 */
function splitIntoShards<T extends { bytes: number }>(tensors: readonly T[], maxShardSize: number): T[][] {
  const shards: T[][] = [];
  let current: T[] = [];
  let currentSize = 0;
  for (const tensor of tensors) {
    if (tensor.bytes > maxShardSize) {
      shards.push([tensor]);
      continue;
    }
    if (currentSize + tensor.bytes > maxShardSize) {
      shards.push(current);
      current = [];
      currentSize = 0;
    }
    current.push(tensor);
    currentSize += tensor.bytes;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

/** The files a checkpoint consists of; on rewriting a folder these are replaced and others kept. */
export function isCheckpointFile(name: string): boolean {
  return name === CONFIG_FILE || name === WEIGHTS_FILE || name === INDEX_FILE || SHARD_NAME.test(name);
}

/**
 * Writes `tensors` (by Hugging Face name; exactly expectedParameters(config))
 * and config.json to `folder` in transformers' layout, replacing a previous
 * checkpoint there in one step; other files in the folder are kept. Everything
 * is checked before anything is written. Returns the written file names.
 */
export function writeCheckpoint(
  folder: string,
  config: ModelConfig,
  tensors: Destinations,
  options: WriteCheckpointOptions = {},
): { files: string[]; totalSize: number } {
  if (typeof folder !== 'string' || folder.length === 0)
    throw new Error('writeCheckpoint: folder must be a non-empty path');
  if (typeof config !== 'object' || config === null || !('json' in config)) {
    throw new Error('writeCheckpoint: config must be a model config from parseModelConfig/readModelConfig');
  }
  const dtype = options.dtype ?? 'F32';
  if (!isWritableDtype(dtype))
    throw new Error(`writeCheckpoint: dtype must be F32, F16 or BF16, got ${JSON.stringify(dtype)}`);
  const maxShardSize = parseSize(options.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE);
  // The config saved says which dtype the weights are in, as save_pretrained's does.
  const json: Record<string, unknown> = { ...config.json, torch_dtype: TORCH_DTYPE[dtype] };
  if ('dtype' in config.json) json.dtype = TORCH_DTYPE[dtype];
  const saved = parseModelConfig(json, 'writeCheckpoint config');

  const given = new Map(destinationEntries(tensors));
  const problems = new ProblemList();
  const ordered: { name: string; shape: readonly number[]; tensor: Tensor; bytes: number }[] = [];
  for (const spec of expectedParameters(saved)) {
    const tensor = given.get(spec.name);
    given.delete(spec.name);
    if (tensor === undefined) problems.add('missing tensors', spec.name);
    else if (!(tensor instanceof Tensor) || tensor.disposed) problems.add('not live Tensors', spec.name);
    else if (!sameShape(tensor.shape, spec.shape)) {
      problems.add(
        'mis-shaped tensors',
        `${spec.name} is ${formatShape(tensor.shape)}, expected ${formatShape(spec.shape)}`,
      );
    } else {
      ordered.push({ name: spec.name, shape: spec.shape, tensor, bytes: tensor.size * DTYPE_BYTES[dtype] });
    }
  }
  for (const name of given.keys()) problems.add('unexpected tensors', name);
  if (problems.groups.size > 0) {
    throw new Error(
      problems.message(`writeCheckpoint(${folder}): the tensors do not match the config; nothing was written`),
    );
  }

  const shards = splitIntoShards(ordered, maxShardSize);
  const shardFile = (i: number) =>
    shards.length === 1
      ? WEIGHTS_FILE
      : `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
  const files = [CONFIG_FILE, ...shards.map((_, i) => shardFile(i))];
  const totalSize = ordered.reduce((sum, t) => sum + t.bytes, 0);
  writeDirectoryAtomic(
    folder,
    (dir) => {
      shards.forEach((shard, i) => {
        const encoded = encodeSafetensors(
          shard.map(({ name, shape, tensor }) => ({ name, shape, dtype, values: () => tensor.toFloat32Array() })),
          { format: 'pt' },
        );
        writeDurably(path.join(dir, shardFile(i)), (fd) => encoded.write((bytes) => writeAll(fd, bytes)));
      });
      if (shards.length > 1) {
        const weightMap = Object.fromEntries(shards.flatMap((shard, i) => shard.map((t) => [t.name, shardFile(i)])));
        const index = sortedJson({ metadata: { total_size: totalSize }, weight_map: weightMap });
        writeDurably(path.join(dir, INDEX_FILE), (fd) => writeAll(fd, Buffer.from(index)));
        files.push(INDEX_FILE);
      }
      writeDurably(path.join(dir, CONFIG_FILE), (fd) => writeAll(fd, Buffer.from(modelConfigToJson(saved))));
    },
    isCheckpointFile,
  );
  return { files, totalSize };
}

/** json.dumps(value, indent=2, sort_keys=True) + "\n", as transformers writes its index. */
function sortedJson(value: { metadata: object; weight_map: Record<string, string> }): string {
  const sortObject = (o: Record<string, unknown>) =>
    Object.fromEntries(
      Object.keys(o)
        .sort()
        .map((k) => [k, o[k]]),
    );
  return `${JSON.stringify({ metadata: sortObject(value.metadata as Record<string, unknown>), weight_map: sortObject(value.weight_map) }, null, 2)}\n`;
}

/** Creates `file`, lets `write` fill it, and flushes it to disk before closing. */
function writeDurably(file: string, write: (fd: number) => void): void {
  const fd = fs.openSync(file, 'wx');
  try {
    write(fd);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
