/*
 * ferry-workload: the test guest's memory-dirtying workload (QEMU migration tests).
 *
 * Built with `gcc -static -O2` and run by the initramfs /init as the guest's only program.
 * Parameters come from the kernel command line (/proc/cmdline):
 *   ferry.wss=<MiB>        working set to dirty (default 64)
 *   ferry.rate=<pages/s>   dirtying rate, 0 = as fast as possible (default 0)
 *   ferry.verify=<ms>      verification period (default 1000)
 *   ferry.pattern=seq|random  page order (default random)
 *   ferry.seed=<n>         seed of the PRNG of the random pattern (default 1)
 *   ferry.grow=<KiB/s>     grow the written window at this speed, from ferry.wss0=<MiB>
 *                          up to the whole working set (default 0: the whole set at once);
 *                          a cache warming up, whose dirty set grows pass after pass
 *
 * Every 4 KiB page i of the working set has a generation g (kept in a separate array). A
 * write of page i fills the whole page with words derived from (i, g, word index) and then
 * bumps the recorded generation. Every verify period every page is checked against its
 * recorded generation (17 words a page: every 32nd word and the last one, which holds a
 * checksum of the page's identity) and one line goes to stdout (the serial console):
 *   FERRY verify ok pass=<n> pages=<N> writes=<total writes>
 *   FERRY verify FAIL pass=<n> bad=<count> first=<page index>
 * followed by
 *   FERRY stats t_ms=<monotonic ms since start> writes=<total writes> verify_us=<pass duration>
 * Lines start with "\n" so that a kernel message printed mid-line cannot hide them.
 *
 * The VM may be paused for seconds (migration downtime): the pacing never tries to catch
 * up for time it did not run, and the verify schedule restarts from the current time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define CHECK_STRIDE 32u

static uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* The page's identity word: a function of (page, generation) only. */
static inline uint64_t page_key(uint64_t i, uint32_t g) {
  return splitmix((i << 32) ^ g ^ 0xFE44700000000000ull);
}

/* Word k of page i at generation g. The last word is the checksum (key complemented). */
static inline uint64_t word_value(uint64_t key, uint32_t k) {
  if (k == WORDS - 1) return ~key;
  return key ^ ((uint64_t)k * 0x9E3779B97F4A7C15ull);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void out(const char *s) {
  size_t len = strlen(s);
  while (len > 0) {
    ssize_t n = write(1, s, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    s += n;
    len -= (size_t)n;
  }
}

/* The value of `name=` on the kernel command line, or NULL. */
static const char *param(const char *cmdline, const char *name) {
  size_t nl = strlen(name);
  const char *p = cmdline;
  while ((p = strstr(p, name)) != NULL) {
    if ((p == cmdline || p[-1] == ' ') && p[nl] == '=') return p + nl + 1;
    p += nl;
  }
  return NULL;
}

static uint64_t param_u64(const char *cmdline, const char *name, uint64_t dflt) {
  const char *v = param(cmdline, name);
  if (!v) return dflt;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  return end == v ? dflt : (uint64_t)x;
}

static uint64_t *mem;
static uint32_t *gen;
static uint64_t npages;
/* Pages [0, active) are written; the rest of the working set is still zero (never written). */
static uint64_t active;

static void write_page(uint64_t i) {
  uint32_t g = gen[i] + 1;
  uint64_t key = page_key(i, g);
  uint64_t *p = mem + i * WORDS;
  for (uint32_t k = 0; k < WORDS; k++) p[k] = word_value(key, k);
  gen[i] = g;
}

/* Returns the number of bad pages, the first in *first. */
static uint64_t verify(uint64_t *first) {
  uint64_t bad = 0;
  for (uint64_t i = 0; i < npages; i++) {
    const uint64_t *p = mem + i * WORDS;
    int ok = 1;
    if (gen[i] == 0) {
      for (uint32_t k = 0; k < WORDS; k += CHECK_STRIDE) ok &= p[k] == 0;
      ok &= p[WORDS - 1] == 0;
    } else {
      uint64_t key = page_key(i, gen[i]);
      for (uint32_t k = 0; k < WORDS; k += CHECK_STRIDE) ok &= p[k] == word_value(key, k);
      ok &= p[WORDS - 1] == word_value(key, WORDS - 1);
    }
    if (!ok) {
      if (bad == 0) *first = i;
      bad++;
    }
  }
  return bad;
}

static void sleep_until(uint64_t t) {
  struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

int main(void) {
  char cmdline[4096] = {0};
  int fd = open("/proc/cmdline", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    if (n > 0) cmdline[n] = 0;
    close(fd);
  }
  for (char *c = cmdline; *c; c++)
    if (*c == '\n' || *c == '\t') *c = ' ';

  uint64_t wss = param_u64(cmdline, "ferry.wss", 64);
  uint64_t rate = param_u64(cmdline, "ferry.rate", 0);
  uint64_t verify_ms = param_u64(cmdline, "ferry.verify", 1000);
  uint64_t seed = param_u64(cmdline, "ferry.seed", 1);
  uint64_t grow_kib = param_u64(cmdline, "ferry.grow", 0);
  uint64_t wss0 = param_u64(cmdline, "ferry.wss0", 0);
  const char *pat = param(cmdline, "ferry.pattern");
  int sequential = pat != NULL && strncmp(pat, "seq", 3) == 0;
  if (wss == 0) wss = 1;
  if (verify_ms == 0) verify_ms = 1000;

  char line[256];
  npages = wss * 1024 * 1024 / PAGE;
  mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  gen = mmap(NULL, npages * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (mem == MAP_FAILED || gen == MAP_FAILED) {
    snprintf(line, sizeof line, "\nFERRY workload error mmap wss=%llu: %s\n", (unsigned long long)wss, strerror(errno));
    out(line);
    return 1;
  }
  /* Touch: every page of the window holds generation 1 before the first verify. */
  active = npages;
  if (grow_kib > 0) {
    active = (wss0 > 0 ? wss0 : (wss + 7) / 8) * 1024 * 1024 / PAGE;
    if (active > npages) active = npages;
    if (active == 0) active = 1;
  }
  const uint64_t active0 = active;
  for (uint64_t i = 0; i < active; i++) write_page(i);

  snprintf(line, sizeof line, "\nFERRY workload ready wss=%llu rate=%llu\n", (unsigned long long)wss, (unsigned long long)rate);
  out(line);

  uint64_t rng = splitmix(seed) | 1;
  uint64_t cursor = 0;
  uint64_t writes = 0;
  uint64_t pass = 0;
  const uint64_t t_start = now_ns();
  const uint64_t verify_ns = verify_ms * 1000000ull;
  const uint64_t slice_ns = 10000000ull; /* pace in 10 ms batches */
  uint64_t next_verify = t_start + verify_ns;
  /* Pacing: pace_done writes were made since pace_t; the rate allows (t - pace_t) * rate.
   * Falling more than 200 ms behind (a paused or starved VM) does not cause a burst. */
  uint64_t pace_t = t_start;
  uint64_t pace_done = 0;
  const uint64_t slice_cap = rate / 100 + 1; /* one 10 ms slice's worth */

  for (;;) {
    uint64_t t = now_ns();
    if (t >= next_verify) {
      uint64_t first = 0;
      uint64_t bad = verify(&first);
      uint64_t t2 = now_ns();
      pass++;
      if (bad == 0)
        snprintf(line, sizeof line, "\nFERRY verify ok pass=%llu pages=%llu writes=%llu\n", (unsigned long long)pass,
                 (unsigned long long)npages, (unsigned long long)writes);
      else
        snprintf(line, sizeof line, "\nFERRY verify FAIL pass=%llu bad=%llu first=%llu\n", (unsigned long long)pass,
                 (unsigned long long)bad, (unsigned long long)first);
      out(line);
      snprintf(line, sizeof line, "\nFERRY stats t_ms=%llu writes=%llu verify_us=%llu\n",
               (unsigned long long)((t2 - t_start) / 1000000ull), (unsigned long long)writes,
               (unsigned long long)((t2 - t) / 1000ull));
      out(line);
      next_verify = t2 + verify_ns;
      t = t2;
    }

    if (active < npages) { /* the window grows with time: its new pages are written now */
      uint64_t want = active0 + (t - t_start) / 1000000ull * grow_kib / 4000ull;
      if (want > npages) want = npages;
      while (active < want) write_page(active++);
    }
    uint64_t batch;
    if (rate == 0) {
      batch = 256;
    } else {
      if (t - pace_t >= 1000000000ull) { /* rebase every second: keep the products small */
        uint64_t secs = (t - pace_t) / 1000000000ull;
        pace_t += secs * 1000000000ull;
        pace_done = pace_done > secs * rate ? pace_done - secs * rate : 0;
      }
      uint64_t allowed = (t - pace_t) * rate / 1000000000ull;
      if (allowed > pace_done + rate / 5 + slice_cap) pace_done = allowed - slice_cap;
      if (pace_done >= allowed) {
        uint64_t wake = t + slice_ns;
        if (wake > next_verify) wake = next_verify;
        sleep_until(wake);
        continue;
      }
      batch = allowed - pace_done;
      if (batch > slice_cap) batch = slice_cap;
    }
    for (uint64_t b = 0; b < batch; b++) {
      uint64_t i;
      if (sequential) {
        i = cursor < active ? cursor : 0;
        cursor = i + 1 == active ? 0 : i + 1;
      } else {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        i = (rng * 0x2545F4914F6CDD1Dull) % active;
      }
      write_page(i);
    }
    writes += batch;
    pace_done += batch;
  }
}
