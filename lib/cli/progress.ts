// Progress on stderr: a live bar on a terminal, plain lines otherwise (logs, CI), never on stdout.
import { SingleBar, Presets } from 'cli-progress';

export interface Progress {
  /** unit: what is counted (default windows); only windows show a token rate. */
  start(label: string, total: number, unit?: string): void;
  update(done: number, tokens?: number): void;
  stop(): void;
  log(line: string): void;
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr, quiet = false): Progress {
  if (quiet) return { start() {}, update() {}, stop() {}, log() {} };
  let t0 = 0;
  let total = 0;
  let label = '';
  let unit = 'windows';
  const rate = (tokens: number) => (unit === 'windows' ? ` | ${(tokens / Math.max(1e-9, (performance.now() - t0) / 1000)).toFixed(0)} tok/s` : '');
  if (stream.isTTY) {
    const bar = new SingleBar(
      { stream, format: '{label} |{bar}| {value}/{total} {unit}{rate} | ETA {eta_formatted}', hideCursor: true, etaBuffer: 20 },
      Presets.shades_classic,
    );
    let active = false;
    return {
      start(l, n, u = 'windows') {
        if (active) bar.stop();
        label = l;
        total = n;
        unit = u;
        t0 = performance.now();
        bar.start(n, 0, { label, rate: rate(0), unit });
        active = true;
      },
      update(done, tokens = 0) {
        bar.update(done, { label, rate: rate(tokens), unit });
      },
      stop() {
        if (active) bar.stop();
        active = false;
      },
      log(line) {
        // Clears the bar's line first; the bar redraws itself below on its next tick.
        stream.write((active ? '\r\x1b[K' : '') + line + '\n');
      },
    };
  }
  let lastPrint = 0;
  return {
    start(l, n, u = 'windows') {
      label = l;
      total = n;
      unit = u;
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
      stream.write(`${label}: ${done}/${total}${rate(tokens).replace(' |', '')} ETA ${eta.toFixed(0)}s\n`);
    },
    stop() {},
    log(line) {
      stream.write(line + '\n');
    },
  };
}
