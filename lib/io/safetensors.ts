/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian
 * header length N, N bytes of UTF-8 JSON mapping each tensor name to
 * {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data
 * section) plus an optional "__metadata__" object of strings, then the raw
 * little-endian data. Tensors must tile the data section exactly: no gaps,
 * no overlaps, nothing left over.
 *
 * We write F32, F16 or BF16 (rounded to nearest even, as torch does), laid out
 * like the reference writer (tensors in byte order of their names, header padded
 * with spaces to a multiple of 8 bytes so the data is aligned). We read F32, F16,
 * BF16 and F64, converting to float32; every number in the header is checked
 * before any data is touched, and what the format forbids is refused: a header
 * that does not start with '{', and a key that appears twice in one object
 * (JSON.parse would silently keep the last).
 *
 * Reading is lazy: openSafetensors() reads and validates only the header, then
 * each tensor is read on demand with positional reads through a scratch buffer
 * of at most SCRATCH_BYTES and converted straight into the caller's Float32Array,
 * so a file is never held in memory whole. Writing streams the same way:
 * encodeSafetensors() hands the bytes to a sink in bounded chunks, one tensor's
 * values at a time. Both assume a little-endian host (every platform Node.js
 * ships for that this package builds on).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { types } from 'node:util';

import { describeValue } from '../shape';
import { writeFileAtomic } from './atomic';

export type TensorInput = Float32Array | { data: Float32Array; shape: number[] };

export interface LoadedTensor {
  /** The dtype stored in the file; `data` is always float32. */
  dtype: string;
  shape: number[];
  data: Float32Array;
}

export interface SafetensorsContents {
  tensors: Record<string, LoadedTensor>;
  metadata: Record<string, string>;
}

const METADATA_KEY = '__metadata__';
/** The reference implementation refuses larger headers too. */
const MAX_HEADER_BYTES = 100_000_000;

/** Bytes per chunk of a tensor's data in reads and writes: bounds the extra memory. */
export const SCRATCH_BYTES = 4 << 20;

/**
 * Converts `count` stored values to float32. `source` starts at offset 0 of its
 * own ArrayBuffer (a scratch buffer), so typed views over it are aligned.
 */
interface DtypeCodec {
  bytes: number;
  decode(source: Buffer, count: number, target: Float32Array, targetOffset: number): void;
}

/** IEEE binary16 to a number; every half value is exact in float32. */
function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

let halfTable: Float32Array | null = null;

/** All 65536 half values as float32 (256 KiB, built on first use). */
function halfValues(): Float32Array {
  if (halfTable === null) {
    halfTable = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) halfTable[bits] = halfToNumber(bits);
  }
  return halfTable;
}

const READABLE_DTYPES: Record<string, DtypeCodec> = {
  F32: {
    bytes: 4,
    decode: (source, count, target, at) => target.set(new Float32Array(source.buffer, 0, count), at),
  },
  F16: {
    bytes: 2,
    decode: (source, count, target, at) => {
      const halves = new Uint16Array(source.buffer, 0, count);
      const table = halfValues();
      for (let i = 0; i < count; i++) target[at + i] = table[halves[i]];
    },
  },
  BF16: {
    bytes: 2,
    // bfloat16 is the upper half of a float32.
    decode: (source, count, target, at) => {
      const halves = new Uint16Array(source.buffer, 0, count);
      const bits = new Uint32Array(target.buffer, target.byteOffset + at * 4, count);
      for (let i = 0; i < count; i++) bits[i] = halves[i] << 16;
    },
  },
  F64: {
    bytes: 8,
    decode: (source, count, target, at) => target.set(new Float64Array(source.buffer, 0, count), at),
  },
};

export type WritableDtype = 'F32' | 'F16' | 'BF16';

/** float32 bits to bfloat16 bits, rounded to nearest even; NaN stays a (quiet) NaN. */
function bfloat16Bits(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) & 0x8000) | 0x7fc0;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/** float32 bits to IEEE binary16 bits, rounded to nearest even (overflow gives infinity). */
function halfBits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa === 0 ? 0 : 0x200);
  const halfExponent = exponent - 112; // rebias 127 -> 15
  if (halfExponent >= 0x1f) return sign | 0x7c00;
  if (halfExponent > 0) {
    // Normal: keep 10 of the 23 mantissa bits; a carry rounds up into the exponent (or to infinity).
    return sign | roundShifted((halfExponent << 10) | (mantissa >>> 13), mantissa & 0x1fff, 0x1000);
  }
  // Subnormal or zero: the value in units of 2^-24, from the mantissa with its implicit 1.
  const shift = 14 - halfExponent;
  if (shift > 24) return sign;
  const full = mantissa | 0x800000;
  return sign | roundShifted(full >>> shift, full & ((1 << shift) - 1), 1 << (shift - 1));
}

/** Round-to-nearest-even of a truncated value given the dropped bits and the halfway point. */
function roundShifted(kept: number, dropped: number, halfway: number): number {
  return dropped > halfway || (dropped === halfway && (kept & 1) === 1) ? kept + 1 : kept;
}

/** Writes `values` in `dtype` into `target`, which starts at offset 0 of its own ArrayBuffer. */
const WRITABLE_DTYPES: Record<WritableDtype, { bytes: number; encode(values: Float32Array, target: Buffer): void }> = {
  F32: { bytes: 4, encode: (values, target) => new Float32Array(target.buffer, 0, values.length).set(values) },
  F16: {
    bytes: 2,
    encode: (values, target) => {
      const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
      const out = new Uint16Array(target.buffer, 0, values.length);
      for (let i = 0; i < values.length; i++) out[i] = halfBits(bits[i]);
    },
  },
  BF16: {
    bytes: 2,
    encode: (values, target) => {
      const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
      const out = new Uint16Array(target.buffer, 0, values.length);
      for (let i = 0; i < values.length; i++) out[i] = bfloat16Bits(bits[i]);
    },
  },
};

export function isWritableDtype(dtype: unknown): dtype is WritableDtype {
  return typeof dtype === 'string' && Object.prototype.hasOwnProperty.call(WRITABLE_DTYPES, dtype);
}

/** Orders names by their UTF-8 bytes, as the reference (Rust String) ordering does. */
function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

interface PreparedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

function prepareTensor(file: string, name: string, value: unknown): PreparedTensor {
  const fail = (problem: string): never => {
    throw new Error(`writeSafetensors(${file}): tensor "${name}" ${problem}`);
  };
  if (name === METADATA_KEY) fail(`cannot be stored: "${METADATA_KEY}" is reserved for metadata`);
  if (types.isFloat32Array(value)) return { name, shape: [value.length], data: value };
  if (!isPlainObject(value)) return fail(`must be a Float32Array or {data, shape}, got ${describeValue(value)}`);
  const { data, shape } = value;
  if (!types.isFloat32Array(data)) return fail(`needs data as a Float32Array, got ${describeValue(data)}`);
  if (!Array.isArray(shape)) return fail(`needs shape as an array of dimensions, got ${describeValue(shape)}`);
  let size = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) fail(`has dimension ${String(dim)}; use non-negative integers`);
    size *= dim;
  }
  if (size !== data.length) {
    fail(`has shape [${shape.join(', ')}] (${size} elements) but ${data.length} values`);
  }
  return { name, shape: [...shape], data };
}

/**
 * Writes float32 tensors (a bare Float32Array is stored as 1-D) and optional
 * string metadata to `file`, atomically.
 */
export function writeSafetensors(
  file: string,
  tensors: Record<string, TensorInput>,
  metadata: Record<string, string> = {},
): void {
  if (!isPlainObject(tensors)) {
    throw new Error(
      `writeSafetensors(${file}): tensors must be an object of name -> tensor, got ${describeValue(tensors)}`,
    );
  }
  if (!isPlainObject(metadata)) {
    throw new Error(`writeSafetensors(${file}): metadata must be an object of strings, got ${describeValue(metadata)}`);
  }
  const metadataKeys = Object.keys(metadata).sort(compareUtf8);
  for (const key of metadataKeys) {
    if (typeof metadata[key] !== 'string') {
      throw new Error(
        `writeSafetensors(${file}): metadata "${key}" must be a string, got ${describeValue(metadata[key])}`,
      );
    }
  }
  const prepared = Object.entries(tensors).map(([name, value]) => prepareTensor(file, name, value));
  const encoded = encodeSafetensors(
    prepared.map(({ name, shape, data }) => ({ name, shape, dtype: 'F32' as const, values: () => data })),
    metadata,
  );
  const out = Buffer.allocUnsafe(encoded.byteLength);
  let offset = 0;
  encoded.write((bytes) => {
    out.set(bytes, offset);
    offset += bytes.length;
  });
  writeFileAtomic(file, out);
}

/** One tensor to encode; `values()` is asked for once, when its bytes are written. */
export interface TensorSource {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: WritableDtype;
  values(): Float32Array;
}

export interface EncodedSafetensors {
  /** Size of the whole file in bytes. */
  readonly byteLength: number;
  /**
   * Hands the file's bytes to `sink` in order, header first, in chunks of at
   * most SCRATCH_BYTES; a chunk's memory is reused afterwards, so a sink that
   * keeps bytes copies them.
   */
  write(sink: (bytes: Uint8Array) => void): void;
}

/**
 * Lays out a safetensors file (tensors sorted by the UTF-8 bytes of their names,
 * metadata keys likewise) and streams it. Names and metadata must already be
 * checked by the caller; shapes and value counts are checked here.
 */
export function encodeSafetensors(
  tensors: readonly TensorSource[],
  metadata: Readonly<Record<string, string>> = {},
): EncodedSafetensors {
  const sorted = [...tensors].sort((a, b) => compareUtf8(a.name, b.name));
  const metadataKeys = Object.keys(metadata).sort(compareUtf8);

  // Built by hand rather than JSON.stringify(object): JS objects list integer-like
  // keys ("0", "12") first, which would break the sorted order.
  const headerEntries: string[] = [];
  if (metadataKeys.length > 0) {
    const pairs = metadataKeys.map((key) => `${JSON.stringify(key)}:${JSON.stringify(metadata[key])}`);
    headerEntries.push(`${JSON.stringify(METADATA_KEY)}:{${pairs.join(',')}}`);
  }
  const sizes: number[] = [];
  let dataBytes = 0;
  for (const tensor of sorted) {
    let size = 1;
    for (const dim of tensor.shape) {
      if (!Number.isSafeInteger(dim) || dim < 0) {
        throw new Error(`safetensors: tensor "${tensor.name}" has dimension ${String(dim)}; use non-negative integers`);
      }
      size *= dim;
    }
    sizes.push(size);
    const begin = dataBytes;
    dataBytes += size * WRITABLE_DTYPES[tensor.dtype].bytes;
    const info = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [begin, dataBytes] };
    headerEntries.push(`${JSON.stringify(tensor.name)}:${JSON.stringify(info)}`);
  }
  const json = Buffer.from(`{${headerEntries.join(',')}}`, 'utf8');
  const headerBytes = Math.ceil(json.length / 8) * 8;
  // Filled with spaces so the header's alignment padding is spaces.
  const prefix = Buffer.alloc(8 + headerBytes, ' ');
  prefix.writeBigUInt64LE(BigInt(headerBytes), 0);
  json.copy(prefix, 8);

  return {
    byteLength: prefix.length + dataBytes,
    write(sink) {
      sink(prefix);
      sorted.forEach((tensor, i) => {
        const values = tensor.values();
        if (!types.isFloat32Array(values) || values.length !== sizes[i]) {
          throw new Error(
            `safetensors: tensor "${tensor.name}" has shape [${tensor.shape.join(', ')}] (${sizes[i]} values) ` +
              `but its source gave ${types.isFloat32Array(values) ? `${values.length} values` : 'no Float32Array'}`,
          );
        }
        const codec = WRITABLE_DTYPES[tensor.dtype];
        const perChunk = SCRATCH_BYTES / codec.bytes;
        const scratch = Buffer.allocUnsafeSlow(Math.min(SCRATCH_BYTES, values.length * codec.bytes));
        for (let start = 0; start < values.length; start += perChunk) {
          const part = values.subarray(start, start + perChunk);
          codec.encode(part, scratch);
          sink(scratch.subarray(0, part.length * codec.bytes));
        }
      });
    },
  };
}

/**
 * The first key that appears twice in one object of `text`, which must be valid
 * JSON (it has been parsed), or null. One pass, no recursion: a deeply nested
 * header cannot overflow the stack.
 */
function repeatedKey(text: string): string | null {
  const objects: (Set<string> | null)[] = []; // null for an array
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      const keys = objects[objects.length - 1];
      if (keyNext && keys) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (keys.has(key)) return key;
        keys.add(key);
      }
      keyNext = false;
      i = end;
    } else if (c === '{') {
      objects.push(new Set());
      keyNext = true;
    } else if (c === '[') {
      objects.push(null);
    } else if (c === '}' || c === ']') {
      objects.pop();
    } else if (c === ',') {
      keyNext = objects[objects.length - 1] instanceof Set;
    }
  }
  return null;
}

interface HeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

function checkEntry(name: string, value: unknown, dataLength: number, fail: (problem: string) => never): HeaderEntry {
  if (!isPlainObject(value)) return fail(`tensor "${name}" must be an object, got ${describeValue(value)}`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string') return fail(`tensor "${name}" has no dtype string`);
  const codec = READABLE_DTYPES[dtype];
  if (codec === undefined) {
    return fail(
      `tensor "${name}" has unsupported dtype ${dtype} (readable: ${Object.keys(READABLE_DTYPES).join(', ')})`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) {
    return fail(`tensor "${name}" has shape ${JSON.stringify(shape)}; expected an array of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((offset) => Number.isSafeInteger(offset) && offset >= 0)
  ) {
    return fail(`tensor "${name}" has data_offsets ${JSON.stringify(offsets)}; expected [begin, end] byte offsets`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) return fail(`tensor "${name}" has data_offsets [${begin}, ${end}] that end before they begin`);
  if (end > dataLength) {
    return fail(`tensor "${name}" has data_offsets [${begin}, ${end}] beyond the ${dataLength}-byte data section`);
  }
  const expectedBytes = (shape as number[]).reduce((size, dim) => size * dim, codec.bytes);
  if (expectedBytes !== end - begin) {
    return fail(
      `tensor "${name}" is ${dtype} [${shape.join(', ')}] (${expectedBytes} bytes) ` +
        `but data_offsets [${begin}, ${end}] span ${end - begin} bytes`,
    );
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

/**
 * Checks a header against the size of the data section that follows it: valid
 * UTF-8 JSON, string metadata, every tensor's dtype, shape and offsets, and
 * tensors tiling the data exactly. Returns the entries in data order.
 */
function parseHeader(
  headerBytes: Uint8Array,
  dataLength: number,
  fail: (problem: string) => never,
): { entries: HeaderEntry[]; metadata: Record<string, string> } {
  let headerText: string;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    return fail('the header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (err) {
    return fail(`the header is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(header)) return fail(`the header must be a JSON object, got ${describeValue(header)}`);
  if (!headerText.startsWith('{')) {
    fail(`the header starts with ${JSON.stringify(headerText[0])}; the format requires it to start with '{'`);
  }
  const repeated = repeatedKey(headerText);
  if (repeated !== null) fail(`the header has the key ${JSON.stringify(repeated)} twice in one object`);

  const metadata = header[METADATA_KEY] ?? {};
  if (!isPlainObject(metadata)) return fail(`"${METADATA_KEY}" must be an object of strings`);
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') fail(`metadata "${key}" must be a string, got ${describeValue(value)}`);
  }

  const entries = Object.entries(header)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, value]) => checkEntry(name, value, dataLength, fail))
    .sort((a, b) => a.begin - b.begin || a.end - b.end);

  let covered = 0;
  let previous = '';
  for (const entry of entries) {
    if (entry.begin < covered) {
      fail(`tensor "${entry.name}" at bytes [${entry.begin}, ${entry.end}] overlaps tensor "${previous}"`);
    }
    if (entry.begin > covered) fail(`bytes [${covered}, ${entry.begin}] of the data section belong to no tensor`);
    covered = entry.end;
    previous = entry.name;
  }
  if (covered !== dataLength) {
    fail(`tensors cover ${covered} bytes but the data section has ${dataLength}; the file has trailing bytes`);
  }
  return { entries, metadata: { ...(metadata as Record<string, string>) } };
}

/** A tensor of an opened file, as its header declares it. */
export interface SafetensorsEntry {
  readonly name: string;
  /** The stored dtype; reads always give float32. */
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Number of values. */
  readonly size: number;
}

/**
 * An opened safetensors file whose header has been validated; tensor data is
 * read on demand. Holds a file descriptor until close().
 */
export class SafetensorsReader {
  readonly file: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** Every tensor, in the order of its data in the file. */
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
  readonly #label: string;
  readonly #layout: Map<string, HeaderEntry>;
  readonly #dataStart: number;
  #fd: number | null;

  /** Use openSafetensors(): it validates the header this takes. */
  constructor(
    file: string,
    label: string,
    fd: number,
    dataStart: number,
    entries: readonly HeaderEntry[],
    metadata: Record<string, string>,
  ) {
    this.file = file;
    this.#label = label;
    this.#fd = fd;
    this.#dataStart = dataStart;
    this.metadata = Object.freeze(metadata);
    this.#layout = new Map(entries.map((entry) => [entry.name, entry]));
    this.entries = new Map(
      entries.map(({ name, dtype, shape }) => [
        name,
        Object.freeze({ name, dtype, shape: Object.freeze([...shape]), size: shapeElements(shape) }),
      ]),
    );
  }

  /**
   * Converts tensor `name` to float32 into `target`, which must hold exactly its
   * values; reads through a scratch buffer of at most SCRATCH_BYTES.
   */
  readInto(name: string, target: Float32Array): void {
    const entry = this.#layout.get(name);
    if (entry === undefined) throw new Error(`${this.#label}: no tensor "${name}" in the file`);
    const size = shapeElements(entry.shape);
    if (!types.isFloat32Array(target) || target.length !== size) {
      throw new Error(
        `${this.#label}: tensor "${name}" has ${size} values; the target must be a Float32Array of that length, ` +
          `got ${types.isFloat32Array(target) ? `length ${target.length}` : 'no Float32Array'}`,
      );
    }
    const codec = READABLE_DTYPES[entry.dtype];
    const perChunk = SCRATCH_BYTES / codec.bytes;
    const scratch = Buffer.allocUnsafeSlow(Math.min(SCRATCH_BYTES, entry.end - entry.begin));
    for (let start = 0; start < size; start += perChunk) {
      const count = Math.min(perChunk, size - start);
      readExactly(
        this.#openFd(),
        scratch.subarray(0, count * codec.bytes),
        this.#dataStart + entry.begin + start * codec.bytes,
        this.#label,
      );
      codec.decode(scratch, count, target, start);
    }
  }

  /** Tensor `name` as a new Float32Array. */
  read(name: string): Float32Array {
    const entry = this.entries.get(name);
    if (entry === undefined) throw new Error(`${this.#label}: no tensor "${name}" in the file`);
    const target = new Float32Array(entry.size);
    this.readInto(name, target);
    return target;
  }

  #openFd(): number {
    if (this.#fd === null) throw new Error(`${this.#label}: the file has been closed`);
    return this.#fd;
  }

  /** Releases the file descriptor; reads fail afterwards. Calling it twice is harmless. */
  close(): void {
    if (this.#fd === null) return;
    fs.closeSync(this.#fd);
    this.#fd = null;
  }
}

/** Fills `buffer` from `position` of `fd`; a file that ends first is an error, not a short read. */
function readExactly(fd: number, buffer: Uint8Array, position: number, label: string): void {
  let done = 0;
  while (done < buffer.length) {
    const n = fs.readSync(fd, buffer, done, buffer.length - done, position + done);
    if (n === 0) {
      throw new Error(
        `${label}: the file ends at byte ${position + done}, before the ${buffer.length} bytes ` +
          `at ${position} (was it truncated or replaced after it was opened?)`,
      );
    }
    done += n;
  }
}

/** Opens `file` and validates its header; errors start with `label(file)`. */
function openReader(file: string, caller: string): SafetensorsReader {
  const label = `${caller}(${file})`;
  const fail = (problem: string): never => {
    throw new Error(`${label}: ${problem}`);
  };
  if (os.endianness() !== 'LE') fail('reading safetensors needs a little-endian host');
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    return fail(`cannot read the file: ${(err as Error).message}`);
  }
  try {
    const fileLength = fs.fstatSync(fd).size;
    if (fileLength < 8) fail(`the file is ${fileLength} bytes, too short for the 8-byte header length`);
    const lengthBytes = Buffer.alloc(8);
    readExactly(fd, lengthBytes, 0, label);
    const headerLength = lengthBytes.readBigUInt64LE(0);
    if (headerLength > BigInt(MAX_HEADER_BYTES)) {
      fail(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    }
    const dataStart = 8 + Number(headerLength);
    if (dataStart > fileLength) {
      fail(`header length ${headerLength} runs beyond the end of the ${fileLength}-byte file`);
    }
    const headerBytes = Buffer.alloc(Number(headerLength));
    readExactly(fd, headerBytes, 8, label);
    const { entries, metadata } = parseHeader(headerBytes, fileLength - dataStart, fail);
    return new SafetensorsReader(file, label, fd, dataStart, entries, metadata);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

function shapeElements(shape: readonly number[]): number {
  return shape.reduce((size, dim) => size * dim, 1);
}

/** Opens a safetensors file and validates its header; read tensors with readInto()/read(), then close(). */
export function openSafetensors(file: string): SafetensorsReader {
  return openReader(file, 'openSafetensors');
}

/** Reads and validates a safetensors file; every tensor comes back as float32. */
export function readSafetensors(file: string): SafetensorsContents {
  const reader = openReader(file, 'readSafetensors');
  try {
    const tensors = [...reader.entries.values()].map(({ name, dtype, shape }): [string, LoadedTensor] => [
      name,
      { dtype, shape: [...shape], data: reader.read(name) },
    ]);
    // fromEntries defines own properties, so a tensor named "__proto__" stays a tensor.
    return { tensors: Object.fromEntries(tensors), metadata: { ...reader.metadata } };
  } finally {
    reader.close();
  }
}
