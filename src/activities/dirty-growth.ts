/** The dirty set's growth during a round, for the switch rule (source side, emulated engine). */

/** Growth samples kept per round: enough to interpolate, small in workflow history. */
const GROWTH_POINTS = 16;

/**
 * How the dirty set grows while a round runs: the dirty log is peeked (counted, not cleared)
 * every 20 ms; the policy reads what the next round will leave from it (src/policy/ferry-switch.ts).
 */
export function sampleGrowth(count: () => number, t0: number): { stop(): void; curve(last: [number, number]): number[][] } {
  const points: number[][] = [];
  const timer = setInterval(() => points.push([Math.round(performance.now() - t0), count()]), 20);
  return {
    stop: () => clearInterval(timer),
    curve(last) {
      const all = [...points.filter((p) => p[0]! < last[0]), last];
      if (all.length <= GROWTH_POINTS) return all;
      // Thin evenly, keeping the last point.
      return Array.from({ length: GROWTH_POINTS }, (_, i) => all[Math.round(((i + 1) * all.length) / GROWTH_POINTS) - 1]!);
    },
  };
}
