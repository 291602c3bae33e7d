/**
 * The native cluster and the server config cannot drift: every variable ferry.yaml reads is
 * one `ferry cluster` sets for each service (or one it leaves to its default on purpose), and
 * a process is recognised by pid and start time, never by pid alone.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { serviceArgs, serviceEnv, DEPLOY_DIR } from '../../src/cluster/services';
import { isAlive, processStartTicks, SERVICES, type ClusterPorts } from '../../src/cluster/state';

const ports: ClusterPorts = {
  postgres: 5000,
  services: {
    frontend: { grpc: 5001, membership: 5002, metrics: 5003, http: 5004 },
    history: { grpc: 5011, membership: 5012, metrics: 5013 },
    matching: { grpc: 5021, membership: 5022, metrics: 5023 },
    worker: { grpc: 5031, membership: 5032, metrics: 5033 },
  },
};

/** Left to the config's defaults by the native cluster. */
const DEFAULTED = ['FERRY_TEMPORAL_LOG_LEVEL', 'FERRY_TEMPORAL_DB', 'FERRY_TEMPORAL_VISIBILITY_DB'];

describe('ferry cluster and deploy/temporal/config/ferry.yaml', () => {
  const config = fs.readFileSync(path.join(DEPLOY_DIR, 'config', 'ferry.yaml'), 'utf8');
  const body = config.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n');
  const read = new Set([...body.matchAll(/env "(\w+)"/g)].map((m) => m[1]!));

  it.each(SERVICES)('%s: sets exactly the variables the config reads', (name) => {
    // `ferry cluster up` always gives the services its TLS directory (the frontend requires client certificates).
    const env = serviceEnv(name, { ports, pgUser: 'temporal', pgPassword: 'pw', tlsDir: '/srv/cluster/tls' });
    expect(Object.keys(env).sort()).toEqual([...read].filter((v) => !DEFAULTED.includes(v)).sort());
    expect(env.FERRY_TEMPORAL_TLS_DIR).toBe('/srv/cluster/tls');
    expect(env.FERRY_TEMPORAL_METRICS_PORT).toBe(String(ports.services[name].metrics));
    expect(env.FERRY_TEMPORAL_FRONTEND_PORT).toBe('5001');
    expect(env.FERRY_PG_PORT).toBe('5000');
    expect(serviceArgs(name)).toEqual(['--root', DEPLOY_DIR, '--config', 'config', '--env', 'ferry', '--allow-no-auth', 'start', '--service', name]);
  });

  it('a process is ours only with the same pid and start time', () => {
    const ticks = processStartTicks(process.pid);
    expect(ticks).toBeGreaterThan(0);
    expect(isAlive({ pid: process.pid, startTicks: ticks! })).toBe(true);
    expect(isAlive({ pid: process.pid, startTicks: ticks! + 1 })).toBe(false);
    expect(isAlive(null)).toBe(false);
  });
});
