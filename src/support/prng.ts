/**
 * Seeded randomness for fault timing: a small PRNG and a seed per trial, so a failing run
 * (a fault test or a fault-bench trial) can be repeated from the seed it printed.
 */

/** mulberry32; the seed is printed by whoever uses it, so a failing run can be repeated. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seed per (suite seed, scenario, trial): a trial can be re-run alone. */
export function trialSeed(seed: number, scenario: string, trial: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const c of `${scenario}#${trial}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h % 1_000_000_007;
}
