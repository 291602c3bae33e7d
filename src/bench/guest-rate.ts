/**
 * Unthrottled page-write rate of the emulated guest's vCPUs.
 *
 *   npx tsx src/bench/guest-rate.ts [--json] [--memory 256MiB] [--seconds 2] [--vcpus 1,2]
 *                                   [--workload lmbench] [--write-ratio 1]
 *
 * Each configuration runs a guest flat out (rate 'max'), skips a warm-up (JIT, worker
 * start), then measures page writes per second of vCPU running time over --seconds.
 * The goal is >= 200k pages/s per vCPU.
 */
import { parseArgs } from 'node:util';
import { parseSize } from '../common/units';
import { EmulatedGuest, type GuestStats } from '../guest';

const GOAL_PER_VCPU = 200_000;

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    memory: { type: 'string', default: '256MiB' },
    seconds: { type: 'string', default: '2' },
    vcpus: { type: 'string', default: '1,2' },
    workload: { type: 'string', default: 'lmbench' },
    'write-ratio': { type: 'string', default: '1' },
  },
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function measure(vcpus: number): Promise<Record<string, number>> {
  const g = EmulatedGuest.create({
    name: `bench-${vcpus}`,
    memoryBytes: parseSize(values.memory, 'memory'),
    vcpus,
    workload: { profile: values.workload, rate: 'max', writeRatio: Number(values['write-ratio']) },
    seed: 1,
  });
  try {
    await g.start();
    await sleep(300);
    const a = g.stats();
    await sleep(Number(values.seconds) * 1000);
    const b = g.stats();
    await g.pause();
    const verified = g.verify().ok ? 1 : 0;
    const per = b.vcpus.map((v, i) => {
      const before = a.vcpus[i]!;
      return ((v.writes - before.writes) / (v.elapsedMs - before.elapsedMs)) * 1000;
    });
    const perVcpu = per.reduce((x, y) => x + y, 0) / per.length;
    return {
      vcpus,
      pagesPerSecPerVcpu: Math.round(perVcpu),
      minPagesPerSecPerVcpu: Math.round(Math.min(...per)),
      totalPagesPerSec: Math.round(per.reduce((x, y) => x + y, 0)),
      totalMiBps: Math.round((per.reduce((x, y) => x + y, 0) * g.memory.pageSize) / 1024 ** 2),
      writeShare: ratio(a, b),
      verified,
    };
  } finally {
    await g.stop();
  }
}

function ratio(a: GuestStats, b: GuestStats): number {
  const ops = b.ops - a.ops;
  return ops > 0 ? Math.round(((b.writes - a.writes) / ops) * 1000) / 1000 : 0;
}

const results = [];
for (const v of values.vcpus.split(',').map(Number)) results.push(await measure(v));
const single = results.find((r) => r.vcpus === 1) ?? results[0]!;
const out = {
  bench: 'guest-rate',
  memory: values.memory,
  workload: values.workload,
  pageSize: 4096,
  goalPagesPerSecPerVcpu: GOAL_PER_VCPU,
  meetsGoal: single.pagesPerSecPerVcpu! >= GOAL_PER_VCPU,
  cpus: (await import('node:os')).availableParallelism(),
  results,
};
if (values.json) console.log(JSON.stringify(out));
else {
  for (const r of results) {
    console.log(`${r.vcpus} vCPU(s): ${r.pagesPerSecPerVcpu} pages/s per vCPU (min ${r.minPagesPerSecPerVcpu}), ${r.totalMiBps} MiB/s total, verified=${r.verified === 1}`);
  }
  console.log(`goal ${GOAL_PER_VCPU} pages/s per vCPU: ${out.meetsGoal ? 'met' : 'NOT met'}`);
}
