// Progress on stderr: a live bar on a terminal, plain lines otherwise (logs, CI), never on stdout.
import { SingleBar, Presets } from 'cli-progress';

export interface Progress {
  start(label: string, total: number): void;
  update(done: number, tokens?: number): void;
  stop(): void;
  log(line: string): void;
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr, quiet = false): Progress {
  if (quiet) return { start() {}, update() {}, stop() {}, log() {} };
  let t0 = 0;
  let total = 0;
  let label = '';
  const rate = (tokens: number) => (tokens / Math.max(1e-9, (performance.now() - t0) / 1000)).toFixed(0);
  if (stream.isTTY) {
    const bar = new SingleBar(
      { stream, format: '{label} |{bar}| {value}/{total} {unit} | {rate} tok/s | ETA {eta_formatted}', hideCursor: true, etaBuffer: 20 },
      Presets.shades_classic,
    );
    let active = false;
    return {
      start(l, n) {
        if (active) bar.stop();
        label = l;
        total = n;
        t0 = performance.now();
        bar.start(n, 0, { label, rate: 0, unit: 'windows' });
        active = true;
      },
      update(done, tokens = 0) {
        bar.update(done, { label, rate: rate(tokens), unit: 'windows' });
      },
      stop() {
        if (active) bar.stop();
        active = false;
      },
      log(line) {
        stream.write(line + '\n');
      },
    };
  }
  let lastPrint = 0;
  return {
    start(l, n) {
      label = l;
      total = n;
      t0 = performance.now();
      lastPrint = 0;
      stream.write(`${label}: 0/${total}\n`);
    },
    update(done, tokens = 0) {
      const now = performance.now();
      if (done < total && now - lastPrint < 5000) return;
      lastPrint = now;
      const secs = (now - t0) / 1000;
      const eta = done > 0 ? (secs / done) * (total - done) : 0;
      stream.write(`${label}: ${done}/${total} ${rate(tokens)} tok/s ETA ${eta.toFixed(0)}s\n`);
    },
    stop() {},
    log(line) {
      stream.write(line + '\n');
    },
  };
}
