// The native thread pool (native/cpu/threads.cpp) under many small parallel regions in a row: every chunk runs once,
// none after its region returned, a chunk's exception reaches the caller, and nothing deadlocks. Each run is a child
// process with a time limit, so that a deadlock fails the test instead of hanging the whole run. The pool before
// this test deadlocked within 2 M regions at 2 threads and 200 k at 3 (a worker still draining one region claimed
// the next one's chunk before its pending count was set), which is how `npm start` hung in a GPTQ Cholesky.
import { spawnSync } from 'child_process';
import * as path from 'path';

// The package's own loader, compiled (the build before the tests writes dist/, as for the CLI tests).
const ADDON = path.join(__dirname, '..', 'dist', 'native', 'addon.js');

interface SelfTest {
  wrong?: number;
  late?: number;
  error?: string;
}

/** Runs threadPoolSelfTest(regions, throwAt) for each entry in one child process at `threads` threads. */
function selfTest(threads: number, runs: [number, number][]): SelfTest[] {
  const script = `
const { addon } = require(${JSON.stringify(ADDON)});
addon.setThreads(${threads});
(async () => {
  for (const [regions, throwAt] of ${JSON.stringify(runs)}) {
    try { console.log(JSON.stringify(await addon.threadPoolSelfTest(regions, throwAt))); }
    catch (e) { console.log(JSON.stringify({ error: e.message })); }
  }
  process.exit(0);
})();`;
  const r = spawnSync(process.execPath, ['-e', script], { timeout: 90_000, encoding: 'utf8' });
  if (r.error || r.status !== 0)
    throw new Error(`the pool at ${threads} threads did not finish ${JSON.stringify(runs)}: ${r.error?.message ?? `exit ${r.status}`} ${r.stderr}`);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as SelfTest);
}

test.each([
  [2, 2_000_000],
  [3, 1_000_000],
  [4, 300_000],
])('%i threads, %i regions in a row: each chunk once, none late, no deadlock', (threads, regions) => {
  expect(selfTest(threads, [[regions, -1]])).toEqual([{ wrong: 0, late: 0 }]);
});

test("a chunk's exception rejects the call once the region has ended, and the pool goes on working", () => {
  const [thrown, after] = selfTest(2, [
    [5000, 1234],
    [100_000, -1],
  ]);
  expect(thrown.error).toBe('threadPoolSelfTest: item 0 of region 1234 threw');
  expect(after).toEqual({ wrong: 0, late: 0 });
});
