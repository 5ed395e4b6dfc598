import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { types } from 'node:util';

import { readSafetensors, writeFileAtomic, writeSafetensors } from '../lib/io';

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-io-'));
});

afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Bit patterns, so NaN, -0 and subnormals compare exactly. */
function bits(data: Float32Array): number[] {
  return Array.from(new Uint32Array(Float32Array.from(data).buffer));
}

/** Assembles a file by hand: header length, header text, data bytes. */
function rawFile(name: string, header: string | object, data: Uint8Array = new Uint8Array(), declaredLength?: bigint) {
  const headerBytes = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(declaredLength ?? BigInt(headerBytes.length));
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([length, headerBytes, data]));
  return file;
}

function float32Bytes(values: number[]): Uint8Array {
  const out = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => out.writeFloatLE(v, i * 4));
  return out;
}

/** No temporary files left next to a target. */
function leftovers(): string[] {
  return fs.readdirSync(dir).filter((name) => name.endsWith('.tmp'));
}

describe('safetensors round trip', () => {
  test('shapes, special values, names and metadata come back bit for bit', () => {
    const file = path.join(dir, 'model.safetensors');
    const special = new Float32Array([NaN, Infinity, -Infinity, -0, 1e-45, 3.4028234663852886e38, -1.5]);
    const matrix = Float32Array.from({ length: 12 }, (_, i) => i * 0.25 - 1);
    writeSafetensors(
      file,
      {
        special,
        'layer.0.weight': { data: matrix, shape: [3, 4] },
        scalar: { data: new Float32Array([42]), shape: [] },
        empty: { data: new Float32Array(0), shape: [0, 5] },
        '10': new Float32Array([10]),
        '2': new Float32Array([2]),
        'ünïcode ✓': new Float32Array([7]),
      },
      { format: 'pt', note: 'θ = 1, "quoted"' },
    );
    const { tensors, metadata } = readSafetensors(file);
    expect(metadata).toEqual({ format: 'pt', note: 'θ = 1, "quoted"' });
    expect(Object.keys(tensors).sort()).toEqual(
      ['special', 'layer.0.weight', 'scalar', 'empty', '10', '2', 'ünïcode ✓'].sort(),
    );
    expect(tensors.special.shape).toEqual([7]);
    expect(bits(tensors.special.data)).toEqual(bits(special));
    expect(tensors['layer.0.weight'].shape).toEqual([3, 4]);
    expect(bits(tensors['layer.0.weight'].data)).toEqual(bits(matrix));
    expect(tensors.scalar).toEqual(expect.objectContaining({ dtype: 'F32', shape: [] }));
    expect(Array.from(tensors.scalar.data)).toEqual([42]);
    expect(tensors.empty.shape).toEqual([0, 5]);
    expect(tensors.empty.data.length).toBe(0);
    expect(Array.from(tensors['2'].data)).toEqual([2]);
    expect(types.isFloat32Array(tensors.special.data)).toBe(true);
  });

  test('reads equal keys in different objects and strings with escaped quotes and brackets', () => {
    const header = '{"__metadata__":{"w":"a \\"}]{[ b"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    const file = rawFile('ok', header, float32Bytes([2.5]));
    const { tensors, metadata } = readSafetensors(file);
    expect(metadata).toEqual({ w: 'a "}]{[ b' });
    expect(Array.from(tensors.w.data)).toEqual([2.5]);
  });

  test('no metadata argument means no __metadata__ entry, and reads back as {}', () => {
    const file = path.join(dir, 'plain.safetensors');
    writeSafetensors(file, { w: new Float32Array([1, 2]) });
    expect(fs.readFileSync(file).toString('utf8')).not.toContain('__metadata__');
    expect(readSafetensors(file).metadata).toEqual({});
  });

  test('overwrites an existing file completely', () => {
    const file = path.join(dir, 'w.safetensors');
    writeSafetensors(file, { big: new Float32Array(1000) });
    writeSafetensors(file, { small: new Float32Array([3]) });
    expect(Object.keys(readSafetensors(file).tensors)).toEqual(['small']);
    expect(leftovers()).toEqual([]);
  });
});

describe('safetensors byte layout', () => {
  test('matches the reference layout, parsed independently', () => {
    const file = path.join(dir, 'layout.safetensors');
    writeSafetensors(
      file,
      { b: new Float32Array([1, 2]), a: { data: new Float32Array([3, 4]), shape: [2, 1] } },
      {
        format: 'pt',
      },
    );
    const bytes = fs.readFileSync(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect(headerLength % 8).toBe(0);
    const header = bytes.subarray(8, 8 + headerLength).toString('utf8');
    const expected =
      '{"__metadata__":{"format":"pt"},' +
      '"a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},' +
      '"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}';
    expect(header.trimEnd()).toBe(expected);
    expect(header.slice(expected.length)).toMatch(/^ {0,7}$/);
    expect(bytes.subarray(8 + headerLength)).toEqual(Buffer.from(float32Bytes([3, 4, 1, 2])));
    expect(bytes.length).toBe(8 + headerLength + 16);
  });

  test('orders tensors by the UTF-8 bytes of their names, integer-like names included', () => {
    const file = path.join(dir, 'order.safetensors');
    // UTF-16 order would put U+FF5E before U+1F600; UTF-8 byte order puts it after.
    const names = ['b', '10', '2', 'A', '\u{1F600}', '\uFF5E'];
    writeSafetensors(file, Object.fromEntries(names.map((name, i) => [name, new Float32Array([i])])));
    const bytes = fs.readFileSync(file);
    const header = bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString('utf8');
    const positions = ['10', '2', 'A', 'b', '\uFF5E', '\u{1F600}'].map((name) => header.indexOf(`"${name}":`));
    expect(positions.every((p, i) => p >= 0 && (i === 0 || p > positions[i - 1]))).toBe(true);
    expect(header).toContain('"10":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}');
  });

  test('reads a file assembled by hand, with unpadded header and any key order', () => {
    const header =
      '{"y":{"shape":[1],"data_offsets":[8,12],"dtype":"F32"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    const file = rawFile('hand.safetensors', header, float32Bytes([0.5, -2, 9]));
    const { tensors } = readSafetensors(file);
    expect(Array.from(tensors.x.data)).toEqual([0.5, -2]);
    expect(Array.from(tensors.y.data)).toEqual([9]);
  });

  test('converts F16, BF16 and F64 to float32', () => {
    const half = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x8000, 0x7e00];
    const brain = [0x3f80, 0xc049];
    const data = Buffer.alloc(half.length * 2 + brain.length * 2 + 16);
    half.forEach((h, i) => data.writeUInt16LE(h, i * 2));
    brain.forEach((h, i) => data.writeUInt16LE(h, 14 + i * 2));
    data.writeDoubleLE(1 / 3, 18);
    data.writeDoubleLE(-1e300, 26);
    const file = rawFile(
      'mixed.safetensors',
      {
        h: { dtype: 'F16', shape: [7], data_offsets: [0, 14] },
        bf: { dtype: 'BF16', shape: [2], data_offsets: [14, 18] },
        d: { dtype: 'F64', shape: [2], data_offsets: [18, 34] },
      },
      data,
    );
    const { tensors } = readSafetensors(file);
    expect(tensors.h.dtype).toBe('F16');
    const h = Array.from(tensors.h.data);
    expect(h.slice(0, 5)).toEqual([1, -2, 65504, 2 ** -24, Infinity]);
    expect(Object.is(h[5], -0)).toBe(true);
    expect(h[6]).toBeNaN();
    expect(Array.from(tensors.bf.data)).toEqual([1, -3.140625]);
    expect(Array.from(tensors.d.data)).toEqual([Math.fround(1 / 3), -Infinity]);
  });
});

describe('readSafetensors refuses malformed files', () => {
  const f32 = (shape: number[], offsets: number[]) => ({ dtype: 'F32', shape, data_offsets: offsets });

  test.each<[string, () => string, RegExp]>([
    ['an empty file', () => writeBytes('empty', new Uint8Array(0)), /0 bytes, too short/],
    ['a file under 8 bytes', () => writeBytes('short', Buffer.from([1, 0, 0])), /3 bytes, too short/],
    ['a header length past the end', () => rawFile('long', '{}', undefined, 40n), /header length 40 runs beyond/],
    ['a huge header length', () => rawFile('huge', '{}', undefined, 1n << 60n), /exceeds the 100000000-byte limit/],
    ['a header that is not UTF-8', () => writeHeaderBytes('utf', Buffer.from([0x7b, 0xff, 0x7d])), /not valid UTF-8/],
    ['malformed JSON', () => rawFile('json', '{"a": {"dtype": "F32",'), /not valid JSON/],
    ['a header that is an array', () => rawFile('arr', '[]'), /must be a JSON object, got Array\(0\)/],
    ['metadata that is not an object', () => rawFile('m1', { __metadata__: 'x' }), /"__metadata__" must be an object/],
    [
      'metadata with a number',
      () => rawFile('m2', { __metadata__: { epochs: 3 } }),
      /metadata "epochs" must be a string/,
    ],
    ['an entry that is not an object', () => rawFile('ent', { w: 5 }), /tensor "w" must be an object/],
    ['a missing dtype', () => rawFile('dt', { w: { shape: [1], data_offsets: [0, 4] } }), /"w" has no dtype/],
    [
      'an unsupported dtype',
      () => rawFile('i32', { w: { dtype: 'I32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      /unsupported dtype I32 \(readable: F32, F16, BF16, F64\)/,
    ],
    ['a negative dimension', () => rawFile('neg', { w: f32([-1], [0, 4]) }, new Uint8Array(4)), /shape \[-1\]/],
    ['a fractional dimension', () => rawFile('frac', { w: f32([1.5], [0, 4]) }, new Uint8Array(4)), /shape \[1.5\]/],
    ['three offsets', () => rawFile('o3', { w: f32([1], [0, 4, 8]) }, new Uint8Array(4)), /data_offsets \[0,4,8\]/],
    ['offsets in reverse', () => rawFile('rev', { w: f32([0], [4, 0]) }, new Uint8Array(4)), /end before they begin/],
    [
      'offsets beyond the data',
      () => rawFile('oob', { w: f32([2], [0, 8]) }, new Uint8Array(4)),
      /\[0, 8\] beyond the 4-byte data section/,
    ],
    [
      'a shape that does not match its offsets',
      () => rawFile('size', { w: f32([3], [0, 8]) }, new Uint8Array(8)),
      /"w" is F32 \[3\] \(12 bytes\) but data_offsets \[0, 8\] span 8 bytes/,
    ],
    [
      'overlapping tensors',
      () => rawFile('ovl', { a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, new Uint8Array(12)),
      /tensor "b" at bytes \[4, 12\] overlaps tensor "a"/,
    ],
    [
      'a gap between tensors',
      () => rawFile('gap', { a: f32([1], [0, 4]), b: f32([1], [8, 12]) }, new Uint8Array(12)),
      /bytes \[4, 8\] of the data section belong to no tensor/,
    ],
    [
      'trailing bytes',
      () => rawFile('tail', { a: f32([1], [0, 4]) }, new Uint8Array(6)),
      /cover 4 bytes but the data section has 6/,
    ],
    [
      'a header that does not start with {',
      () => rawFile('lead', ` {"w":${JSON.stringify(f32([1], [0, 4]))}}`, new Uint8Array(4)),
      /the header starts with " "; the format requires it to start with '\{'/,
    ],
    [
      'a tensor name given twice (JSON.parse would keep the second)',
      () =>
        rawFile(
          'dup',
          `{"w":${JSON.stringify(f32([2], [0, 8]))},"w":${JSON.stringify(f32([1], [0, 4]))}}`,
          new Uint8Array(4),
        ),
      /the header has the key "w" twice in one object/,
    ],
    [
      'a key given twice inside an entry, spelled with an escape',
      () =>
        rawFile(
          'dup2',
          '{"w":{"dtype":"F16","d\\u0074ype":"F32","shape":[1],"data_offsets":[0,4]}}',
          new Uint8Array(4),
        ),
      /the header has the key "dtype" twice in one object/,
    ],
    [
      'a metadata key given twice',
      () => rawFile('dup3', '{"__metadata__":{"format":"pt","format":"np"}}'),
      /the header has the key "format" twice in one object/,
    ],
    ['a missing file', () => path.join(dir, 'absent.safetensors'), /cannot read the file/],
  ])('%s', (_label, make, message) => {
    const file = make();
    expect(() => readSafetensors(file)).toThrow(message);
    expect(() => readSafetensors(file)).toThrow(`readSafetensors(${file})`);
  });

  function writeBytes(name: string, bytes: Uint8Array): string {
    const file = path.join(dir, name);
    fs.writeFileSync(file, bytes);
    return file;
  }

  function writeHeaderBytes(name: string, header: Buffer): string {
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    return writeBytes(name, Buffer.concat([length, header]));
  }
});

describe('writeSafetensors refuses bad input and leaves the old file', () => {
  test.each<[string, Record<string, unknown>, Record<string, unknown> | undefined, RegExp]>([
    [
      'a shape that does not match',
      { w: { data: new Float32Array(5), shape: [2, 3] } },
      undefined,
      /\(6 elements\) but 5/,
    ],
    ['a non-float32 array', { w: new Float64Array(2) }, undefined, /must be a Float32Array or \{data, shape\}/],
    [
      'data that is not float32',
      { w: { data: [1, 2], shape: [2] } },
      undefined,
      /data as a Float32Array, got Array\(2\)/,
    ],
    ['a negative dimension', { w: { data: new Float32Array(0), shape: [-1] } }, undefined, /dimension -1/],
    ['the reserved name', { __metadata__: new Float32Array(1) }, undefined, /reserved for metadata/],
    ['non-string metadata', { w: new Float32Array(1) }, { epochs: 3 }, /metadata "epochs" must be a string/],
  ])('%s', (_label, tensors, metadata, message) => {
    const file = path.join(dir, 'keep.safetensors');
    writeSafetensors(file, { original: new Float32Array([1]) });
    const before = fs.readFileSync(file);
    const call = () => writeSafetensors(file, tensors as never, metadata as never);
    expect(call).toThrow(message);
    expect(call).toThrow(`writeSafetensors(${file})`);
    expect(fs.readFileSync(file)).toEqual(before);
    expect(leftovers()).toEqual([]);
  });
});

describe('writeFileAtomic', () => {
  test('writes strings and bytes, replacing the old contents', () => {
    const file = path.join(dir, 'a.txt');
    writeFileAtomic(file, 'first version, longer');
    writeFileAtomic(file, 'second');
    expect(fs.readFileSync(file, 'utf8')).toBe('second');
    writeFileAtomic(file, new Uint8Array([1, 2, 3]));
    expect(Array.from(fs.readFileSync(file))).toEqual([1, 2, 3]);
    expect(fs.readdirSync(dir)).toEqual(['a.txt']);
  });

  test('a failure mid-write leaves the old file intact and no temporary file', () => {
    const file = path.join(dir, 'model.bin');
    fs.writeFileSync(file, 'old contents');
    // The module reads fs functions at call time, so a spy on the real module reaches it.
    const realFs = jest.requireActual<typeof fs>('node:fs');
    jest.spyOn(realFs, 'writeFileSync').mockImplementation((fd, data) => {
      realFs.writeSync(fd as number, String(data).slice(0, 3));
      throw new Error('ENOSPC: no space left on device');
    });
    expect(() => writeFileAtomic(file, 'new contents that never fully land')).toThrow(
      `writeFileAtomic: could not write ${file}: ENOSPC`,
    );
    jest.restoreAllMocks();
    expect(fs.readFileSync(file, 'utf8')).toBe('old contents');
    expect(leftovers()).toEqual([]);
  });

  test('a rename that fails (target is a directory) removes the temporary file', () => {
    const target = path.join(dir, 'collides');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'inside.txt'), 'kept');
    expect(() => writeFileAtomic(target, 'data')).toThrow(`could not write ${target}`);
    expect(fs.readFileSync(path.join(target, 'inside.txt'), 'utf8')).toBe('kept');
    expect(leftovers()).toEqual([]);
  });

  test('a missing directory is reported with the path', () => {
    const target = path.join(dir, 'no', 'such', 'dir', 'f.txt');
    expect(() => writeFileAtomic(target, 'x')).toThrow(`could not write ${target}: ENOENT`);
  });

  test('removes the temporary file of a writer killed before its rename, never those of a live writer', async () => {
    const writer = path.join(__dirname, 'helpers', 'adapter-writer.ts');
    const crashed = spawnSync(process.execPath, ['--require', 'tsx/cjs', writer, 'crash-in-write', dir]);
    expect(crashed.signal).toBe('SIGKILL');
    const stale = leftovers();
    expect(stale).toEqual([expect.stringMatching(new RegExp(`^\\.blob\\.bin\\.${crashed.pid}\\.[0-9a-f]{12}\\.tmp$`))]);
    expect(fs.statSync(path.join(dir, stale[0])).size).toBe(1 << 16); // a whole copy of the data, left forever before

    // A live process's temporary file may be a write in progress: it stays.
    const live = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
    const inProgress = `.blob.bin.${live.pid}.0123456789ab.tmp`;
    fs.writeFileSync(path.join(dir, inProgress), 'partial');
    try {
      writeFileAtomic(path.join(dir, 'blob.bin'), 'fresh');
      expect(leftovers()).toEqual([inProgress]);
      expect(fs.readFileSync(path.join(dir, 'blob.bin'), 'utf8')).toBe('fresh');
    } finally {
      live.kill('SIGKILL');
    }
    await new Promise((resolve) => live.on('exit', resolve));
    writeFileAtomic(path.join(dir, 'blob.bin'), 'again');
    expect(leftovers()).toEqual([]);
  });

  test('rejects data that is neither a string nor bytes', () => {
    expect(() => writeFileAtomic(path.join(dir, 'n'), 42 as never)).toThrow('must be a string or a Uint8Array');
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
