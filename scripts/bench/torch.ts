/**
 * The PyTorch side of the comparison: finds a Python that can `import torch` and runs
 * torch_reference.py as a worker (one JSON request and reply per line), so that its runs
 * interleave with ours. Without torch the suite still runs and says why those columns are empty.
 */
import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';

export interface TorchInfo {
  available: true;
  torch: string;
  python: string;
  executable: string;
  blas: string;
  mkldnn: boolean;
  cuda: string | null;
}

export interface TorchUnavailable {
  available: false;
  reason: string;
}

interface Reply {
  ok?: Record<string, unknown>;
  error?: string;
}

const script = path.join(__dirname, 'torch_reference.py');

/** Where to look for torch: the user's choice, else python3 on the PATH, then Debian's (python3-torch). */
function pythonCandidates(requested: string | undefined): string[] {
  const chosen = requested ?? process.env.TERA_BENCH_PYTHON;
  return chosen ? [chosen] : ['python3', '/usr/bin/python3'];
}

function probe(python: string): string | null {
  const result = spawnSync(python, ['-c', 'import torch'], { encoding: 'utf8', timeout: 120_000 });
  if (result.error) return `${python}: ${result.error.message}`;
  if (result.status !== 0) {
    const lastLine = result.stderr.trim().split('\n').pop() ?? `exit status ${result.status}`;
    return `${python} -c "import torch": ${lastLine}`;
  }
  return null;
}

export class TorchWorker {
  private readonly pending: ((reply: Reply) => void)[] = [];
  private exited: string | null = null;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    readline.createInterface({ input: child.stdout }).on('line', (line) => this.pending.shift()?.(JSON.parse(line)));
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
    child.on('exit', (code) => {
      this.exited = `torch_reference.py exited (code ${code}): ${stderr.trim() || 'no message'}`;
      for (const settle of this.pending.splice(0)) settle({ error: this.exited });
    });
  }

  /** A running worker, or the reasons no Python with torch was found. */
  static start(python?: string): { worker: TorchWorker; info: Promise<TorchInfo> } | TorchUnavailable {
    const failures: string[] = [];
    for (const candidate of pythonCandidates(python)) {
      const failure = probe(candidate);
      if (failure) {
        failures.push(failure);
        continue;
      }
      const worker = new TorchWorker(spawn(candidate, [script], { stdio: 'pipe' }));
      const info = worker.request('info').then((reply) => ({ available: true, ...reply }) as TorchInfo);
      return { worker, info };
    }
    return { available: false, reason: `no Python with PyTorch (${failures.join('; ')})` };
  }

  request(op: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    if (this.exited) return Promise.reject(new Error(this.exited));
    return new Promise((resolve, reject) => {
      this.pending.push((reply) =>
        reply.error !== undefined ? reject(new Error(`torch ${op}: ${reply.error}`)) : resolve(reply.ok ?? {}),
      );
      this.child.stdin.write(JSON.stringify({ op, ...args }) + '\n');
    });
  }

  /** Milliseconds of one run of `what` on the case set up under `key`, timed in Python. */
  async time(key: string, what: string): Promise<number> {
    return (await this.request('time', { key, what })).ms as number;
  }

  close(): void {
    if (!this.exited) this.child.stdin.end(JSON.stringify({ op: 'quit' }) + '\n');
  }
}
