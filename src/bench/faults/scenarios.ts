/**
 * The fault scenarios: crashes of processes on a loopback cluster (state survives in
 * Temporal), and link and storage faults over the two-host network fixture. Each one says
 * which verdicts count as surviving its fault.
 */
import type { End } from '../../support/link';
import type { TwoHostNet } from '../../support/netns';
import { run } from '../../support/shell';
import type { Progress } from '../../workflows/messages';
import type { MigrationReport } from '../../workflows/report';
import { mountHangFs, type HangFs } from './hangfs';
import { ms, scenario, type Plan, type Scenario, type TrialContext } from './trial';

const MiB = 1024 ** 2;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const controllerKill = (ctx: TrialContext) => async (): Promise<string> => {
  const c = ctx.cluster;
  c.controller.kill('SIGKILL');
  await c.controller.exited;
  const down = 300 + ctx.random() * 1700;
  await sleep(down);
  await c.startController();
  return `controller SIGKILLed, restarted after ${ms(down)}`;
};

/*
 * The hybrids here run the paper's switch rule: on a plateau it keeps pre-copy going (the
 * rounds these faults aim at); ferry's rule would switch after the first round.
 */

/** The scenarios of test/faults/crash.test.ts: processes die, state survives in Temporal. */
export const CRASH_SCENARIOS: Scenario[] = [
  scenario('controller-static-save', 'controller killed during the static save (pa-hybrid)', 'local', ['completed'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', storageBandwidthBytesPerSec: 8 * MiB, pbdata: 'async', maxIterations: 10 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false && p.iteration >= 1,
    inject: controllerKill(ctx),
  })),
  scenario('controller-iterations', 'controller killed mid-iterations (as-hybrid)', 'local', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 12 },
    when: (p) => p.iteration >= 3,
    inject: controllerKill(ctx),
  })),
  scenario('controller-switch', 'controller killed at the switch (pa-hybrid, PbData sync)', 'local', ['completed'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', storageBandwidthBytesPerSec: 12 * MiB, pbdata: 'sync', maxDowntimeMs: 1 },
    when: (p) => p.phase === 'switching',
    inject: controllerKill(ctx),
  })),
  scenario('controller-postcopy', 'controller killed during post-copy (postcopy)', 'local', ['completed'], (ctx) => ({
    strategy: 'postcopy',
    workload: 'kernel-compile',
    options: { bandwidthBytesPerSec: 8 * MiB },
    when: (p) => p.phase === 'postcopy',
    inject: controllerKill(ctx),
  })),
  scenario('server-restart', 'Temporal server killed and restarted mid-iterations', 'local', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 10 },
    when: (p) => p.iteration >= 2,
    inject: async () => {
      const down = 500 + ctx.random() * 1500;
      await ctx.cluster.restartServer(down);
      return `server SIGKILLed, restarted after ${ms(down)}`;
    },
  })),
  scenario('target-agent-killed', 'target agent killed before the switch', 'local', ['rolled-back'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 50 },
    when: (p) => p.iteration >= 2,
    jitterMs: 500,
    inject: () => {
      ctx.cluster.agents.get(ctx.cluster.target)?.kill('SIGKILL');
      return 'target agent SIGKILLed';
    },
  })),
  scenario('source-agent-restarted', 'source agent restarted before the switch (the emulated guest lives in its process)', 'local', ['host-died'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 50 },
    when: (p) => p.iteration >= 2,
    jitterMs: 500,
    hostDies: true,
    inject: async () => {
      const a = ctx.cluster.agents.get(ctx.cluster.source)!;
      a.kill('SIGKILL');
      await a.exited;
      await ctx.cluster.startAgent(ctx.cluster.source);
      return 'source agent SIGKILLed and started again';
    },
  })),
];

const preSwitch = (p: Progress): boolean => p.phase === 'precopy' && p.iteration >= 1;
/** A storage fault landed if the save failed (the migration then went on without it, or rolled back). */
const staticFailed = (r: MigrationReport): boolean => r.outcome === 'rolled-back' || r.decisions.some((d) => /StaticData abandoned/.test(d.reason));

/** Link and storage faults, over the two-host network fixture. */
export const NET_SCENARIOS: Scenario[] = [
  scenario('link-blip', 'migration link down 1–3 s before the switch', 'net', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 8 },
    when: preSwitch,
    jitterMs: 500,
    inject: async () => {
      const end: End = ctx.random() < 0.5 ? 'source' : 'target';
      const down = 1000 + ctx.random() * 2000;
      ctx.cluster.net!.down('migration', end);
      await sleep(down);
      ctx.cluster.net!.up('migration', end);
      return `migration link down on the ${end} end for ${ms(down)}`;
    },
  })),
  scenario('link-outage', 'migration link down 9–12 s before the switch (stall, retry, redial)', 'net', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 8 },
    when: preSwitch,
    jitterMs: 500,
    inject: async () => {
      // The target end: the source's route stays, so a redial hangs until its timeout (as
      // over a switch that lost the far side) instead of failing at once.
      const down = 9000 + ctx.random() * 3000;
      ctx.cluster.net!.down('migration', 'target');
      await sleep(down);
      ctx.cluster.net!.up('migration', 'target');
      return `migration link down on the target end for ${ms(down)}`;
    },
  })),
  scenario('link-dead', 'migration link down for good before the switch', 'net', ['rolled-back'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 8 },
    when: preSwitch,
    jitterMs: 500,
    inject: () => {
      const end: End = ctx.random() < 0.5 ? 'source' : 'target';
      ctx.cluster.net!.down('migration', end);
      return `migration link down on the ${end} end for good`;
    },
  })),
  scenario('link-cut-postcopy', 'migration link cut during post-copy (PbData async)', 'net', ['completed'], (ctx) => ({
    strategy: 'postcopy',
    workload: 'memcached',
    options: { bandwidthBytesPerSec: 8 * MiB, pbdata: 'async' },
    when: (p) => p.phase === 'postcopy',
    jitterMs: 2000,
    inject: () => {
      const end: End = ctx.random() < 0.5 ? 'source' : 'target';
      ctx.cluster.net!.down('migration', end);
      return `migration link down on the ${end} end for good, during post-copy`;
    },
  })),
  scenario('source-killed-postcopy', 'source agent killed during post-copy (PbData sync)', 'net', ['completed'], (ctx) => ({
    strategy: 'postcopy',
    workload: 'memcached',
    options: { bandwidthBytesPerSec: 8 * MiB, pbdata: 'sync' },
    when: (p) => p.phase === 'postcopy',
    jitterMs: 2000,
    inject: () => {
      ctx.cluster.agents.get(ctx.cluster.source)?.kill('SIGKILL');
      return 'source agent SIGKILLed during post-copy';
    },
  })),
  scenario('storage-full', 'storage full during the static save (pa-hybrid)', 'net', ['completed', 'rolled-back'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    // A slow storage link keeps the save running for a few seconds (the guest is young:
    // StaticData is mostly zero pages, elided).
    options: { switchRule: 'paper', storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 8 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false,
    jitterMs: 800,
    inject: () => {
      const st = ctx.cluster.storage!;
      const room = Math.round(ctx.random() * 1024) * 1024;
      st.resize(st.used() + room);
      return `shared storage shrunk to what it holds + ${Math.round(room / 1024)} KiB during the static save (ENOSPC)`;
    },
    landed: staticFailed,
  })),
  scenario('storage-gone', 'storage unreachable during the static save (pa-hybrid)', 'net', ['completed', 'rolled-back'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 8 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false,
    jitterMs: 800,
    inject: () => {
      ctx.cluster.storage!.vanish();
      return 'shared storage replaced by an empty read-only mount during the static save';
    },
    landed: staticFailed,
  })),
  scenario('storage-full-sync', 'storage full from the start, PbData sync (pa-hybrid)', 'net', ['rolled-back'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 4, pbdata: 'sync' },
    before: () => {
      const st = ctx.cluster.storage!;
      const room = Math.round(ctx.random() * 256) * 1024;
      st.resize(st.used() + room);
      return `shared storage full from the start (${Math.round(room / 1024)} KiB free)`;
    },
    when: (p) => p.phase === 'precopy',
    inject: () => '',
  })),
];

/*
 * Storage that hangs: shared storage served by hangfs (test/fixtures/hangfs.py, FUSE) whose
 * operations on command block without an answer or an error. The agents' storage watchdog
 * (FERRY_STORAGE_STALL_MS) abandons the blocked call; the migration goes on over channel-2.
 */

/** Writes of StaticData (or PbData): create, write, fsync, rename of its files, mkdir of its directory. */
const WRITES = (kind: 'static' | 'pbdata'): string => `^(mkdir|create|open|write|flush|fsync|release|rename) .*/${kind}(/|$)`;
const abandoned = (r: MigrationReport, by: RegExp): boolean => r.decisions.some((d) => /StaticData abandoned/.test(d.reason) && by.test(d.reason));

function onHangingStorage(ctx: TrialContext, plan: Omit<Plan, 'before' | 'after' | 'inject'> & { inject: (h: HangFs) => string; hangFromStart?: string }): Plan {
  let h: HangFs | null = null;
  return {
    ...plan,
    before: async () => {
      h = await mountHangFs(ctx.cluster.storage!.dir);
      if (plan.hangFromStart) h.hang(plan.hangFromStart);
      return 'shared storage served by hangfs (FUSE)';
    },
    inject: () => plan.inject(h!),
    after: async () => {
      await h?.unmount();
      h = null;
    },
  };
}

/** pa-hybrid on memcached with a slow storage link: the hang lands while StaticData is saved and merged. */
function duringStatic(ctx: TrialContext, inject: (h: HangFs) => string, reason: RegExp): Plan {
  return onHangingStorage(ctx, {
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { switchRule: 'paper', storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 8 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false,
    jitterMs: 800,
    inject,
    landed: (r) => abandoned(r, reason),
  });
}

export const HANG_SCENARIOS: Scenario[] = [
  scenario('storage-hang-save', 'storage hangs during the static save (pa-hybrid)', 'net', ['completed'], (ctx) =>
    duringStatic(ctx, (h) => {
      h.hang(WRITES('static'));
      return 'StaticData writes hang (no answer, no error) during the static save';
    }, /storage hung/),
  ),
  scenario('storage-hang-merge', "storage hangs for the target's reads during the static merge (pa-hybrid)", 'net', ['completed'], (ctx) =>
    duringStatic(ctx, (h) => {
      h.hang('^(open|read) .*/static/chunk-');
      return 'reads of StaticData chunks hang during the merge';
    }, /the merge on .*storage hung/),
  ),
  scenario('storage-hang-pbdata', 'storage hangs for PbData in post-copy (postcopy, PbData async)', 'net', ['completed'], (ctx) =>
    onHangingStorage(ctx, {
      strategy: 'postcopy',
      workload: 'memcached',
      options: { bandwidthBytesPerSec: 8 * MiB, pbdata: 'async' },
      hangFromStart: WRITES('pbdata'),
      when: (p) => p.phase === 'postcopy',
      inject: () => 'PbData writes hang from the switch on',
      landed: (r) => /PbData not written \(storage hung/.test(r.reason),
    }),
  ),
];

/*
 * An agent cut off from Temporal: its control link (the veth to the root namespace, where
 * the dev server's relay listens) goes down. Its activities run on meanwhile; their
 * heartbeats and results wait for the link.
 */
function controlLink(net: TwoHostNet, end: End, state: 'up' | 'down'): void {
  const ns = net.ns[end];
  run('ip', ['-n', ns, 'link', 'set', 'dev', 'ctl0', state]);
  // A link going down takes its routes with it: the host route to the server comes back here.
  if (state === 'up') {
    const gw = net.control[end].replace(/\d+$/, (n) => String(Number(n) - 1));
    run('ip', ['-n', ns, 'route', 'replace', `${net.serverIp}/32`, 'via', gw, 'dev', 'ctl0']);
  }
}

function cutControl(ctx: TrialContext, end: End): () => void {
  const net = ctx.cluster.net!;
  controlLink(net, end, 'down');
  return () => controlLink(net, end, 'up');
}

/** The for-good cuts run with `--agent-timeout 8s`: how long the migration waits for the cut-off agent. */
const CONTROL_AGENT_TIMEOUT_MS = 8000;

export const CONTROL_SCENARIOS: Scenario[] = [
  scenario('control-blip', "an agent's link to Temporal down 5 s mid-iteration", 'net', ['completed'], (ctx) => {
    let restore: (() => void) | null = null;
    return {
      strategy: 'as-hybrid',
      workload: 'memcached',
      options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 8 },
      when: preSwitch,
      jitterMs: 500,
      inject: async () => {
        const end: End = ctx.random() < 0.5 ? 'source' : 'target';
        restore = cutControl(ctx, end);
        await sleep(5000);
        restore();
        restore = null;
        return `control link of the ${end} agent down for 5.0 s`;
      },
      after: () => restore?.(),
    };
  }),
  scenario('control-dead-before', "the target agent's link to Temporal down for good before the switch", 'net', ['rolled-back'], (ctx) => {
    let restore: (() => void) | null = null;
    return {
      strategy: 'as-hybrid',
      workload: 'memcached',
      // --agent-timeout 8s: the migration gives the cut-off agent 8 s, not the default 30 s.
      options: { switchRule: 'paper', maxDowntimeMs: 1, maxIterations: 8, agentTimeoutMs: CONTROL_AGENT_TIMEOUT_MS },
      when: preSwitch,
      jitterMs: 500,
      inject: () => {
        restore = cutControl(ctx, 'target');
        return 'control link of the target agent down for good, before the switch';
      },
      after: () => restore?.(),
    };
  }),
  scenario('control-dead-after', "the source agent's link to Temporal down for good after the switch (post-copy)", 'net', ['completed'], (ctx) => {
    let restore: (() => void) | null = null;
    return {
      strategy: 'postcopy',
      workload: 'memcached',
      options: { bandwidthBytesPerSec: 8 * MiB, pbdata: 'async', agentTimeoutMs: CONTROL_AGENT_TIMEOUT_MS },
      when: (p) => p.phase === 'postcopy',
      inject: () => {
        restore = cutControl(ctx, 'source');
        return 'control link of the source agent down for good, during post-copy';
      },
      after: () => restore?.(),
    };
  }),
];

export const FAULT_SCENARIOS: Scenario[] = [...CRASH_SCENARIOS, ...NET_SCENARIOS, ...HANG_SCENARIOS, ...CONTROL_SCENARIOS];

export function scenarioById(id: string): Scenario {
  const s = FAULT_SCENARIOS.find((x) => x.id === id);
  if (!s) throw new Error(`unknown fault scenario '${id}' (one of ${FAULT_SCENARIOS.map((x) => x.id).join(', ')})`);
  return s;
}
