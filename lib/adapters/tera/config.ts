/**
 * TeRA's config and its tensorisation rule (docs/math.md).
 * dW = alpha * reshape(G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)), [out, in])
 * over the modes (o_1..o_P, i_1..i_Q) of d_out = o_1 ... o_P and d_in = i_1 ... i_Q.
 */
import { describeValue } from '../../shape';
import { configClass } from '../config';
import {
  type OptionalField,
  checkBoolean,
  checkDims,
  checkFinite,
  checkInteger,
  checkSeed,
  dimsToJson,
} from '../fields';

/** The native Tucker kernels take tensors of order 1 to 8. */
export const MAX_TERA_ORDER = 8;

/** The two ways to evaluate a layer (docs/math.md). */
export type TeraPath = 'merged' | 'factored';
/** A path, or 'auto': the cheaper one per call, by the cost model. */
export type TeraEvaluation = TeraPath | 'auto';
const EVALUATIONS: readonly TeraEvaluation[] = ['auto', 'merged', 'factored'];

function checkEvaluation(value: unknown, what: string): TeraEvaluation {
  if (!EVALUATIONS.includes(value as TeraEvaluation)) {
    throw new Error(
      `${what} must be one of ${EVALUATIONS.map((e) => `'${e}'`).join(', ')}, got ${describeValue(value)}`,
    );
  }
  return value as TeraEvaluation;
}

const TERA_FIELDS = {
  maxModeSize: {
    json: 'max_mode_size',
    // Chosen by the parameter-budget studies (README, "TeRA's default configuration"):
    // 4096 -> 64x64, 768 -> 24x32, a dimension up to 128 one mode.
    default: 128,
    help: 'largest default mode size: see factorizeDimension',
    check: (value, what) => checkInteger(value, what, 2),
  } satisfies OptionalField<number>,
  maxRank: {
    json: 'max_rank',
    default: 128,
    help: 'R_n = min(I_n, maxRank) unless ranks is given (128: full Tucker rank for default modes)',
    check: (value, what) => checkInteger(value, what, 1),
  } satisfies OptionalField<number>,
  outModes: {
    json: 'out_modes',
    default: null,
    help: 'modes of d_out (their product must equal it), overriding the default factorisation for every target',
    check: checkDims,
    toJson: dimsToJson,
  } satisfies OptionalField<readonly number[] | null>,
  inModes: {
    json: 'in_modes',
    default: null,
    help: 'modes of d_in, likewise',
    check: checkDims,
    toJson: dimsToJson,
  } satisfies OptionalField<readonly number[] | null>,
  ranks: {
    json: 'ranks',
    default: null,
    help: 'one rank per mode (out modes first), overriding maxRank',
    check: checkDims,
    toJson: dimsToJson,
  } satisfies OptionalField<readonly number[] | null>,
  alpha: {
    json: 'alpha',
    default: 1,
    help: 'multiplies dW',
    check: checkFinite,
  } satisfies OptionalField<number>,
  seed: {
    json: 'seed',
    default: 0,
    help: 'seeds the frozen core and factors',
    check: checkSeed,
  } satisfies OptionalField<number>,
  evaluation: {
    // Stored so that a reloaded adapter computes along the same path (the paths round differently).
    json: 'evaluation',
    default: 'auto',
    help: "how each call evaluates the layer: 'merged' (W0 + dW formed, then GEMMs), 'factored' (dW never formed) or 'auto' (the cheaper by tera/cost.ts)",
    check: checkEvaluation,
  } satisfies OptionalField<TeraEvaluation>,
  saveFactors: {
    json: 'save_factors',
    default: false,
    help: 'store the frozen core and factors in the adapter file (they regenerate from the seed)',
    check: checkBoolean,
  } satisfies OptionalField<boolean>,
};

export class TeraConfig extends configClass('TERA', 'TeraConfig', TERA_FIELDS) {}

export type TeraConfigOptions = ConstructorParameters<typeof TeraConfig>[0];

function primeFactors(d: number): number[] {
  const out: number[] = [];
  for (let p = 2; p * p <= d; p++) {
    while (d % p === 0) {
      out.push(p);
      d /= p;
    }
  }
  if (d > 1) out.push(d);
  return out;
}

/**
 * Splits m into exactly k factors, each <= limit, as balanced as possible
 * (smallest largest factor, then smallest sum of squares); null if impossible.
 */
function balancedSplit(m: number, k: number, limit: number): number[] | null {
  const divisors: number[] = [];
  for (let f = 2; f <= Math.min(m, limit); f++) if (m % f === 0) divisors.push(f);
  let best: number[] | null = null;
  const score = (s: number[]): [number, number] => [s[s.length - 1], s.reduce((a, f) => a + f * f, 0)];
  const better = (s: number[]): boolean => {
    if (best === null) return true;
    const [maxA, sqA] = score(s);
    const [maxB, sqB] = score(best);
    return maxA < maxB || (maxA === maxB && sqA < sqB);
  };
  // Non-decreasing sequences of divisors whose product is m.
  const walk = (rest: number, from: number, sequence: number[]): void => {
    if (sequence.length === k - 1) {
      if (rest >= (sequence[sequence.length - 1] ?? 2) && rest <= limit && better([...sequence, rest])) {
        best = [...sequence, rest];
      }
      return;
    }
    for (let i = from; i < divisors.length; i++) {
      const f = divisors[i];
      if (f ** (k - sequence.length) > rest) break;
      if (rest % f === 0) walk(rest / f, i, [...sequence, f]);
    }
  };
  walk(m, 0, []);
  return best;
}

/**
 * The default modes of a dimension: the fewest factors that are each <=
 * maxModeSize, as balanced as possible, in ascending order (with maxModeSize 16:
 * 4096 -> 16x16x16, 768 -> 8x8x12, 1000 -> 10x10x10; with the default 128:
 * 4096 -> 64x64, 768 -> 24x32). A prime factor > maxModeSize stays one mode
 * (with 16: 11008 = 2^8 * 43 -> 16x16x43); 1 -> [1].
 */
export function factorizeDimension(d: number, maxModeSize = TERA_FIELDS.maxModeSize.default): number[] {
  checkInteger(d, 'factorizeDimension: d', 1);
  checkInteger(maxModeSize, 'factorizeDimension: maxModeSize', 2);
  const primes = primeFactors(d);
  const large = primes.filter((p) => p > maxModeSize);
  const small = primes.filter((p) => p <= maxModeSize).reduce((a, p) => a * p, 1);
  let modes: number[] = [];
  if (small > 1) {
    for (let k = 1; ; k++) {
      const split = balancedSplit(small, k, maxModeSize);
      if (split !== null) {
        modes = split;
        break;
      }
    }
  }
  modes.push(...large);
  return modes.length === 0 ? [1] : modes.sort((a, b) => a - b);
}

/** The Tucker shape of one layer. */
export interface TeraShape {
  outModes: number[];
  inModes: number[];
  /** outModes then inModes. */
  modes: number[];
  ranks: number[];
}

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/** The modes and ranks `config` gives a [outFeatures, inFeatures] layer; throws naming the module if invalid. */
export function teraShape(config: TeraConfig, outFeatures: number, inFeatures: number, moduleName: string): TeraShape {
  const fail = (problem: string): never => {
    throw new Error(`TeRA cannot adapt '${moduleName}' ([${outFeatures}, ${inFeatures}]): ${problem}`);
  };
  const outModes = config.outModes ? [...config.outModes] : factorizeDimension(outFeatures, config.maxModeSize);
  const inModes = config.inModes ? [...config.inModes] : factorizeDimension(inFeatures, config.maxModeSize);
  if (product(outModes) !== outFeatures) fail(`outModes [${outModes.join(', ')}] multiply to ${product(outModes)}`);
  if (product(inModes) !== inFeatures) fail(`inModes [${inModes.join(', ')}] multiply to ${product(inModes)}`);
  const modes = [...outModes, ...inModes];
  if (modes.length > MAX_TERA_ORDER) {
    fail(
      `its ${modes.length} modes [${modes.join(', ')}] exceed the kernels' limit of ${MAX_TERA_ORDER}; ` +
        'raise maxModeSize or give outModes / inModes',
    );
  }
  const ranks = config.ranks ? [...config.ranks] : modes.map((m) => Math.min(m, config.maxRank));
  if (ranks.length !== modes.length) {
    fail(`ranks has ${ranks.length} entries but there are ${modes.length} modes [${modes.join(', ')}]`);
  }
  return { outModes, inModes, modes, ranks };
}
