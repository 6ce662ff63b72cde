/*
 * Memory that changes while it is copied: from "ready" until "go" (so
 * during phaul's pre-copy rounds and up to the freeze) four threads
 * rewrite pages of their own regions, a generation per page; regions are
 * mapped, unmapped, grown and moved (mremap); a child shares copy-on-write
 * pages with its parent, which keeps rewriting some of them; anonymous
 * MAP_SHARED memory and a SysV shm segment (in an IPC namespace of the
 * tree's own) are rewritten; a transparent huge page region is rewritten a
 * page at a time; and one page is changed and changed back. Over 64 MiB in
 * all, so that phaul's pre-copy (auto) runs. Every region's record (its
 * generations, its seed) lives in the same memory as the region, so a page
 * the move got wrong disagrees with its record after the writers stop.
 * phaul-precopy: rounds
 */
#include "corpus.h"
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>

#define PAGE 4096
#define THREADS 4
#define THREAD_PAGES 4096 /* 16 MiB each */
#define SLOTS 16
#define COW_PAGES 512
#define SHM_PAGES 64
#define THP_SIZE (4 << 20)

/* word is the content of 8-byte word w of a page of (seed, page, gen). */
static uint64_t word(uint64_t seed, uint64_t page, uint64_t gen, uint64_t w)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ page * 0xbf58476d1ce4e5b9ull ^ gen * 0x94d049bb133111ebull ^ w;
	x ^= x >> 31;
	x *= 0xd6e8feb86659fd39ull;
	return x ^ (x >> 29);
}

static void fill_page(void *p, uint64_t seed, uint64_t page, uint64_t gen)
{
	uint64_t *q = p;
	for (uint64_t w = 0; w < PAGE / 8; w++)
		q[w] = word(seed, page, gen, w);
}

static int page_ok(const void *p, uint64_t seed, uint64_t page, uint64_t gen)
{
	const uint64_t *q = p;
	for (uint64_t w = 0; w < PAGE / 8; w++)
		if (q[w] != word(seed, page, gen, w))
			return 0;
	return 1;
}

static uint64_t lcg(uint64_t *s) { return *s = *s * 6364136223846793005ull + 1442695040888963407ull, *s >> 33; }

/* Writer threads. */
struct writer {
	pthread_t t;
	int id;
	unsigned char *mem;
	uint32_t gen[THREAD_PAGES];
};
static struct writer writers[THREADS];
static volatile int stop;

static void *write_loop(void *arg)
{
	struct writer *w = arg;
	uint64_t s = w->id + 1;
	while (!stop) {
		uint64_t p = lcg(&s) % THREAD_PAGES;
		w->gen[p]++;
		fill_page(w->mem + p * PAGE, 10 + w->id, p, w->gen[p]);
		sleep_ms(4); /* about 250 pages a second per thread */
	}
	return NULL;
}

/* Regions mapped, unmapped, grown and moved by the main thread. */
struct slot {
	unsigned char *addr;
	size_t pages;
	uint64_t seed;
};
static struct slot slots[SLOTS];
static uint64_t next_seed = 1000;

static void churn(uint64_t *s)
{
	struct slot *sl = &slots[lcg(s) % SLOTS];
	switch (lcg(s) % 4) {
	case 0: /* (re)map */
		if (sl->addr)
			munmap(sl->addr, sl->pages * PAGE);
		sl->pages = 1 + lcg(s) % 64;
		sl->seed = next_seed++;
		sl->addr = map(sl->pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		for (size_t p = 0; p < sl->pages; p++)
			fill_page(sl->addr + p * PAGE, sl->seed, p, 0);
		break;
	case 1: /* unmap */
		if (sl->addr)
			munmap(sl->addr, sl->pages * PAGE);
		sl->addr = NULL;
		break;
	case 2: /* grow, wherever the kernel puts it */
		if (sl->addr) {
			size_t more = 1 + lcg(s) % 16;
			void *n = mremap(sl->addr, sl->pages * PAGE, (sl->pages + more) * PAGE, MREMAP_MAYMOVE);
			if (n == MAP_FAILED)
				die("mremap grow");
			sl->addr = n;
			for (size_t p = sl->pages; p < sl->pages + more; p++)
				fill_page(sl->addr + p * PAGE, sl->seed, p, 0);
			sl->pages += more;
		}
		break;
	case 3: /* move to a new place, content and all */
		if (sl->addr) {
			void *to = map(sl->pages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
			void *n = mremap(sl->addr, sl->pages * PAGE, sl->pages * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
			if (n != to)
				die("mremap move");
			sl->addr = n;
		}
		break;
	}
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	if (unshare(CLONE_NEWIPC) < 0)
		die("unshare ipc");

	/* Copy-on-write pages shared with a child, and a page of results. */
	unsigned char *cow = map(COW_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	for (int p = 0; p < COW_PAGES; p++)
		fill_page(cow + p * PAGE, 100, p, 0);
	static uint32_t cow_gen[COW_PAGES];
	/* Shared anonymous memory: a generation, then pages of it. */
	volatile uint64_t *shared = map((1 + 16) * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
	unsigned char *shared_pages = (unsigned char *)shared + PAGE;
	char *child_says = (char *)shared + 512;
	shared[0] = 0;
	for (int p = 0; p < 16; p++)
		fill_page(shared_pages + p * PAGE, 300, p, 0);

	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		while (!exists("go"))
			sleep_ms(10);
		while (!shared[1]) /* the parent has stopped writing */
			sleep_ms(10);
		int bad = -1;
		for (int p = 0; p < COW_PAGES && bad < 0; p++)
			if (!page_ok(cow + p * PAGE, 100, p, 0))
				bad = p;
		uint64_t g = shared[0];
		int sbad = -1;
		for (int p = 0; p < 16 && sbad < 0; p++)
			if (!page_ok(shared_pages + p * PAGE, 300, p, g))
				sbad = p;
		if (bad >= 0)
			snprintf(child_says, 256, "the child's copy-on-write page %d changed", bad);
		else if (sbad >= 0)
			snprintf(child_says, 256, "the child sees shared page %d unlike generation %llu", sbad, (unsigned long long)g);
		else
			snprintf(child_says, 256, "ok");
		_exit(0);
	}

	/* SysV shm. */
	int shmid = shmget(IPC_PRIVATE, SHM_PAGES * PAGE, IPC_CREAT | 0600);
	if (shmid < 0)
		die("shmget");
	unsigned char *shm = shmat(shmid, NULL, 0);
	if (shm == (void *)-1)
		die("shmat");
	static uint32_t shm_gen[SHM_PAGES];
	for (int p = 0; p < SHM_PAGES; p++)
		fill_page(shm + p * PAGE, 400, p, 0);

	/* Transparent huge pages, rewritten a page at a time. */
	char *raw = map(2 * THP_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	unsigned char *thp = (unsigned char *)(((uintptr_t)raw + THP_SIZE - 1) & ~(uintptr_t)(THP_SIZE - 1));
	madvise(thp, THP_SIZE, MADV_HUGEPAGE);
	static uint32_t thp_gen[THP_SIZE / PAGE];
	for (int p = 0; p < THP_SIZE / PAGE; p++)
		fill_page(thp + p * PAGE, 500, p, 0);

	/* One page changed and changed back: generation 0, 1, 0, 1... */
	unsigned char *back = map(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	int back_gen = 0;
	fill_page(back, 600, 0, 0);

	for (int i = 0; i < THREADS; i++) {
		writers[i].id = i;
		writers[i].mem = map(THREAD_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		for (int p = 0; p < THREAD_PAGES; p++)
			fill_page(writers[i].mem + p * PAGE, 10 + i, p, 0);
	}
	for (int i = 0; i < THREADS; i++)
		if (pthread_create(&writers[i].t, NULL, write_loop, &writers[i]))
			die("pthread_create");

	ready();
	uint64_t s = 42;
	for (uint64_t n = 0; !exists("go"); n++) {
		churn(&s);
		int c = lcg(&s) % (COW_PAGES / 2);
		fill_page(cow + c * PAGE, 101, c, ++cow_gen[c]);
		int sh = lcg(&s) % SHM_PAGES;
		fill_page(shm + sh * PAGE, 400, sh, ++shm_gen[sh]);
		int t = lcg(&s) % (THP_SIZE / PAGE);
		fill_page(thp + t * PAGE, 500, t, ++thp_gen[t]);
		if (n % 8 == 0) {
			back_gen ^= 1;
			fill_page(back, 600, 0, back_gen);
		}
		if (n % 4 == 0) {
			uint64_t g = shared[0] + 1;
			for (int p = 0; p < 16; p++)
				fill_page(shared_pages + p * PAGE, 300, p, g);
			shared[0] = g;
		}
		sleep_ms(5);
	}
	stop = 1;
	for (int i = 0; i < THREADS; i++)
		pthread_join(writers[i].t, NULL);
	shared[1] = 1;

	for (int i = 0; i < THREADS; i++) {
		int bad = 0, first = -1;
		for (int p = 0; p < THREAD_PAGES; p++)
			if (!page_ok(writers[i].mem + p * PAGE, 10 + i, p, writers[i].gen[p])) {
				bad++;
				if (first < 0)
					first = p;
			}
		CHECK(bad == 0, "writer %d: %d pages unlike their generation (the first: page %d)", i, bad, first);
	}
	for (int i = 0; i < SLOTS; i++) {
		struct slot *sl = &slots[i];
		for (size_t p = 0; sl->addr && p < sl->pages; p++)
			if (!page_ok(sl->addr + p * PAGE, sl->seed, p, 0)) {
				fail("region %d (%zu pages, mapped, grown or moved before the move): page %zu differs", i, sl->pages, p);
				break;
			}
	}
	for (int p = 0; p < COW_PAGES; p++) {
		int ok = p < COW_PAGES / 2 && cow_gen[p] ? page_ok(cow + p * PAGE, 101, p, cow_gen[p]) : page_ok(cow + p * PAGE, 100, p, 0);
		if (!ok) {
			fail("the parent's copy-on-write page %d differs", p);
			break;
		}
	}
	for (int p = 0; p < SHM_PAGES; p++)
		if (!page_ok(shm + p * PAGE, 400, p, shm_gen[p])) {
			fail("SysV shm page %d unlike its generation %u", p, shm_gen[p]);
			break;
		}
	for (int p = 0; p < THP_SIZE / PAGE; p++)
		if (!page_ok(thp + p * PAGE, 500, p, thp_gen[p])) {
			fail("huge page region: page %d unlike its generation %u", p, thp_gen[p]);
			break;
		}
	CHECK(page_ok(back, 600, 0, back_gen), "the page changed and changed back is not generation %d", back_gen);
	for (int i = 0; i < 500 && !child_says[0]; i++)
		sleep_ms(10);
	CHECK(strcmp(child_says, "ok") == 0, "%s", child_says[0] ? child_says : "the child said nothing");
	waitpid(kid, NULL, 0);
	finish();
}
