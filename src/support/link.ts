/**
 * The links between the two fixture hosts (veth pairs inside network namespaces): their
 * interface names, tc shaping (netem rate and delay, or tbf rate where the kernel has no
 * netem) and cutting a link (link down: both ends lose carrier, packets vanish silently).
 */
import { run } from './shell';

export type LinkName = 'migration' | 'storage';
export type End = 'source' | 'target';

/** The interface of each link, the same name in both namespaces. */
export const IFACE: Record<LinkName, string> = { migration: 'mig0', storage: 'sto0' };

let netemAvailable: boolean | null = null;

/** Shape `dev` in namespace `ns`; returns what was applied, e.g. "tbf rate 400mbit (…)". */
export function shape(ns: string, dev: string, rate: string, delay: string): string {
  if (netemAvailable !== false) {
    const r = run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'netem', 'delay', delay, 'rate', rate], { check: false });
    if (r.ok) {
      netemAvailable = true;
      return `netem delay ${delay} rate ${rate}`;
    }
    netemAvailable = false;
  }
  run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '50ms']);
  return `tbf rate ${rate} (no netem in this kernel: no added delay)`;
}

/** Set one end of a link (its interface in namespace `ns`) up or down. */
export function setLink(ns: string, link: LinkName, state: 'up' | 'down'): void {
  run('ip', ['-n', ns, 'link', 'set', 'dev', IFACE[link], state]);
}
