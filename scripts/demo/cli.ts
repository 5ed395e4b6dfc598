/**
 * Command-line flags of the MNIST demo (node's own parseArgs), checked up
 * front so a typo fails in the first second rather than after minutes of
 * training, the checks both demos' flags share, and the harness both demos'
 * entry points run in (runCli).
 */
import { parseArgs } from 'node:util';

import type { DeviceRequest } from '../../lib';
import { METHOD_NAMES, type MethodName } from './methods';

export interface DemoOptions {
  methods: MethodName[];
  epochs: number;
  device: DeviceRequest;
  /** Degrees counter-clockwise: the shift the adapters must learn. */
  rotate: number;
  batchSize: number;
  /** Train on only the first N training digits (the test split is always complete). */
  trainLimit: number | undefined;
  outDir: string;
  /** Data-parallel over the ranks of an mpirun job (tera.distributed). */
  distributed: boolean;
  /** The parameter-budget study instead of the four default runs. */
  sweep: boolean;
  help: boolean;
}

export const USAGE = `Usage: npm run demo -- [options]

Adapts a base MLP pretrained on upright MNIST digits to rotated digits with
TeRA, VeRA and LoRA, and with full fine-tuning for reference.

  --methods LIST     comma-separated, from ${METHOD_NAMES.join(', ')} (default: all)
  --epochs N         training epochs per method (default 10)
  --sweep            the parameter-budget study: every method at several sizes,
                     learning rates chosen on 1500 validation digits held out of
                     the training digits, scored on the test digits; writes
                     sweep.md, sweep.json and sweep.svg into OUT/sweep, and caches
                     every run there (rerun to resume; about an hour on 2 cores)
  --device D         cpu, cuda or auto (default auto: the GPU when one is usable;
                     with --distributed the default is cpu, and cuda uses NCCL)
  --rotate DEG       rotation of the shifted task, degrees (default 90)
  --batch-size N     minibatch size (default 64)
  --train-limit N    use only the first N of the 8000 training digits
  --out DIR          where the table, loss curves and adapters go (default .cache/demo)
  --distributed      train data-parallel over the ranks of an MPI job, e.g.
                     mpirun -np 2 npm run demo -- --distributed
                     (each rank trains on its part of every batch; rank 0 reports)
  --help             show this text`;

export function positiveInteger(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got '${value}'`);
  return n;
}

/** --methods: a comma-separated list of METHOD_NAMES, in the order given, without repeats. */
export function parseMethods(value: string): MethodName[] {
  const methods = value.split(',').map((m) => m.trim().toLowerCase());
  const unknown = methods.filter((m) => !(METHOD_NAMES as readonly string[]).includes(m));
  if (unknown.length > 0 || methods.length === 0) {
    throw new Error(`--methods: unknown method '${unknown.join(', ')}'; choose from ${METHOD_NAMES.join(', ')}`);
  }
  return [...new Set(methods)] as MethodName[];
}

/** --device: cpu, cuda or auto (whether CUDA is usable is checked when the demo resolves it). */
export function parseDevice(value: string): DeviceRequest {
  if (!['cpu', 'cuda', 'auto'].includes(value)) throw new Error(`--device must be cpu, cuda or auto, got '${value}'`);
  return value as DeviceRequest;
}

export function parseDemoArgs(argv: readonly string[]): DemoOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      methods: { type: 'string', default: METHOD_NAMES.join(',') },
      epochs: { type: 'string', default: '10' },
      device: { type: 'string' },
      rotate: { type: 'string', default: '90' },
      'batch-size': { type: 'string', default: '64' },
      'train-limit': { type: 'string' },
      out: { type: 'string', default: '.cache/demo' },
      distributed: { type: 'boolean', default: false },
      sweep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const methods = parseMethods(values.methods);
  // The engine (MPI or NCCL) is chosen before CUDA may start, so a distributed run names its device.
  const device = parseDevice(values.device ?? (values.distributed ? 'cpu' : 'auto'));
  if (values.distributed && device === 'auto') {
    throw new Error('--distributed needs --device cpu (MPI) or --device cuda (NCCL, one GPU per rank)');
  }
  if (values.sweep && values.distributed) throw new Error('--sweep runs in one process; leave out --distributed');
  const rotate = Number(values.rotate);
  if (!Number.isFinite(rotate)) throw new Error(`--rotate must be a number of degrees, got '${values.rotate}'`);
  return {
    methods,
    epochs: positiveInteger(values.epochs, '--epochs'),
    device,
    rotate,
    batchSize: positiveInteger(values['batch-size'], '--batch-size'),
    trainLimit:
      values['train-limit'] === undefined ? undefined : positiveInteger(values['train-limit'], '--train-limit'),
    outDir: values.out,
    distributed: values.distributed,
    sweep: values.sweep,
    help: values.help,
  };
}

/**
 * A demo's entry point: parses the command line (a bad flag prints the problem
 * and the usage, exit code 2), answers --help with the usage, else runs; an
 * error of the run prints as `name: message` with exit code 1.
 */
export function runCli<Options extends { help: boolean }>(cli: {
  /** The npm script, the prefix of a run's error message. */
  name: string;
  usage: string;
  parse: (argv: readonly string[]) => Options;
  run: (options: Options) => void;
}): void {
  let options: Options;
  try {
    options = cli.parse(process.argv.slice(2));
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${cli.usage}`);
    process.exit(2);
  }
  if (options.help) {
    console.log(cli.usage);
    return;
  }
  try {
    cli.run(options);
  } catch (error) {
    // Our errors name the problem and the fix; a stack trace would bury that.
    console.error(`${cli.name}: ${(error as Error).message}`);
    process.exitCode = 1;
  }
}
