/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian
 * header length N, N bytes of UTF-8 JSON mapping each tensor name to
 * {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data
 * section) plus an optional "__metadata__" object of strings, then the raw
 * little-endian data. Tensors must tile the data section exactly: no gaps,
 * no overlaps, nothing left over.
 *
 * We write F32 only, laid out like the reference writer (tensors in byte order
 * of their names, header padded with spaces to a multiple of 8 bytes so the
 * data is aligned). We read F32, F16, BF16 and F64, converting to float32; every
 * number in the header is checked before any data is touched, and what the
 * format forbids is refused: a header that does not start with '{', and a key
 * that appears twice in one object (JSON.parse would silently keep the last).
 */
import * as fs from 'node:fs';
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

interface DtypeCodec {
  bytes: number;
  read(view: DataView, offset: number): number;
}

const bfloat16Scratch = new DataView(new ArrayBuffer(4));

/** IEEE binary16 to a number; every half value is exact in float32. */
function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 is the upper half of a float32. */
function bfloat16ToNumber(bits: number): number {
  bfloat16Scratch.setUint32(0, bits << 16);
  return bfloat16Scratch.getFloat32(0);
}

const READABLE_DTYPES: Record<string, DtypeCodec> = {
  F32: { bytes: 4, read: (view, offset) => view.getFloat32(offset, true) },
  F16: { bytes: 2, read: (view, offset) => halfToNumber(view.getUint16(offset, true)) },
  BF16: { bytes: 2, read: (view, offset) => bfloat16ToNumber(view.getUint16(offset, true)) },
  F64: { bytes: 8, read: (view, offset) => view.getFloat64(offset, true) },
};

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
  const prepared = Object.entries(tensors)
    .map(([name, value]) => prepareTensor(file, name, value))
    .sort((a, b) => compareUtf8(a.name, b.name));

  // Built by hand rather than JSON.stringify(object): JS objects list integer-like
  // keys ("0", "12") first, which would break the sorted order.
  const headerEntries: string[] = [];
  if (metadataKeys.length > 0) {
    const pairs = metadataKeys.map((key) => `${JSON.stringify(key)}:${JSON.stringify(metadata[key])}`);
    headerEntries.push(`${JSON.stringify(METADATA_KEY)}:{${pairs.join(',')}}`);
  }
  let dataBytes = 0;
  for (const tensor of prepared) {
    const begin = dataBytes;
    dataBytes += tensor.data.length * 4;
    const info = { dtype: 'F32', shape: tensor.shape, data_offsets: [begin, dataBytes] };
    headerEntries.push(`${JSON.stringify(tensor.name)}:${JSON.stringify(info)}`);
  }
  const json = Buffer.from(`{${headerEntries.join(',')}}`, 'utf8');
  const headerBytes = Math.ceil(json.length / 8) * 8;

  // Filled with spaces so the header's alignment padding is spaces; the data overwrites the rest.
  const out = Buffer.alloc(8 + headerBytes + dataBytes, ' ');
  out.writeBigUInt64LE(BigInt(headerBytes), 0);
  json.copy(out, 8);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let offset = 8 + headerBytes;
  for (const tensor of prepared) {
    for (const value of tensor.data) {
      view.setFloat32(offset, value, true);
      offset += 4;
    }
  }
  writeFileAtomic(file, out);
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

/** Reads and validates a safetensors file; every tensor comes back as float32. */
export function readSafetensors(file: string): SafetensorsContents {
  const fail = (problem: string): never => {
    throw new Error(`readSafetensors(${file}): ${problem}`);
  };
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    return fail(`cannot read the file: ${(err as Error).message}`);
  }
  if (bytes.length < 8) fail(`the file is ${bytes.length} bytes, too short for the 8-byte header length`);
  const headerLength = bytes.readBigUInt64LE(0);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const dataStart = 8 + Number(headerLength);
  if (dataStart > bytes.length) {
    fail(`header length ${headerLength} runs beyond the end of the ${bytes.length}-byte file`);
  }

  let headerText: string;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart));
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

  const dataLength = bytes.length - dataStart;
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

  const view = new DataView(bytes.buffer, bytes.byteOffset + dataStart, dataLength);
  const tensors = entries.map((entry): [string, LoadedTensor] => {
    const codec = READABLE_DTYPES[entry.dtype];
    const data = new Float32Array((entry.end - entry.begin) / codec.bytes);
    for (let i = 0; i < data.length; i++) data[i] = codec.read(view, entry.begin + i * codec.bytes);
    return [entry.name, { dtype: entry.dtype, shape: entry.shape, data }];
  });
  // fromEntries defines own properties, so a tensor named "__proto__" stays a tensor.
  return { tensors: Object.fromEntries(tensors), metadata: { ...(metadata as Record<string, string>) } };
}
