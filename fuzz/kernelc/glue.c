/*
 * The C side of the kernel-c bridge: the machine's frame arrays (numpy, by pointer) on one
 * side, the extracted rmap helpers on struct folio on the other. Each entry point copies
 * the one folio it is given into a window of struct pages in the kernel's layout, calls the
 * helper, checks what the kernel keeps and the machine does not (_nr_pages_mapped), and
 * copies the folio back. The window has a folio's worth of foreign pages on each side, so
 * a batch that leaves its folio is seen by the helper's own sanity checks.
 */
#include "shim.h"
#include RMAPFUZZ_EXTRACTED

struct rmapfuzz_warning rmapfuzz_warnings[RMAPFUZZ_MAX_WARNINGS];
int rmapfuzz_nr_warnings;
jmp_buf rmapfuzz_escape;

#define WINDOW_PAGES (3 * HPAGE_PMD_NR)
static struct page window[WINDOW_PAGES] __attribute__((aligned(64)));
struct page *rmapfuzz_window_start = window;
struct page *rmapfuzz_window_end = window + WINDOW_PAGES;
static struct page *const folio_window = window + HPAGE_PMD_NR;
long rmapfuzz_window_pfn;		/* pfn of window[0]: the folio's head is at folio_window */
const pte_t *rmapfuzz_batch_table;	/* the page table folio_pte_batch reads, or NULL */
static struct anon_vma live_anon_vma = { .refcount = { 1 } };
static struct mm_struct mms[2];
static struct vm_area_struct vmas[2] = { { &mms[0] }, { &mms[1] } };

/* The machine's FrameTable arrays, indexed by pfn (machine/frames.py). */
struct frames {
	int32_t *page_mapcount;
	uint8_t *page_anon_exclusive;
	int64_t *page_folio;
	int8_t *folio_order;
	int64_t *folio_refcount;
	int32_t *folio_large_mapcount;
	int32_t *folio_entire_mapcount;
	int32_t *folio_pincount;
	int32_t *folio_mm_id;		/* [pfn][2] */
	int32_t *folio_mm_id_mapcount;	/* [pfn][2] */
	uint8_t *folio_mm_ids_shared;
	uint8_t *folio_anon;
};

static long window_nr_pages;

/* _nr_pages_mapped as __folio_add_rmap keeps it: PTE-mapped pages, + ENTIRELY_MAPPED. */
static int nr_pages_mapped(const struct frames *frames, long head, long nr_pages)
{
	int nr = frames->folio_entire_mapcount[head] ? ENTIRELY_MAPPED : 0;

	for (long i = 0; i < nr_pages; i++)
		nr += frames->page_mapcount[head + i] > 0;
	return nr;
}

static struct folio *folio_copy_in(const struct frames *frames, long head)
{
	long nr_pages = 1L << frames->folio_order[head];
	struct folio *folio = (struct folio *)folio_window;

	rmapfuzz_nr_warnings = 0;
	rmapfuzz_window_pfn = head - (folio_window - window);
	window_nr_pages = nr_pages;
	for (long i = 0; i < nr_pages; i++) {
		struct page *page = &folio_window[i];

		page->flags.f = frames->page_anon_exclusive[head + i] ? BIT(PG_anon_exclusive) : 0;
		page->compound_head = i ? (unsigned long)folio_window | 1 : 0;
		atomic_set(&page->_mapcount, frames->page_mapcount[head + i] - 1);
	}
	folio->mapping = frames->folio_anon[head] ? (void *)((unsigned long)&live_anon_vma | FOLIO_MAPPING_ANON)
						  : NULL;
	atomic_set(&folio->_refcount, (int)frames->folio_refcount[head]);
	if (nr_pages == 1)
		return folio;
	set_bit(PG_head, &folio->flags.f);
	folio->_nr_pages = nr_pages;
	atomic_set(&folio->_large_mapcount, frames->folio_large_mapcount[head] - 1);
	atomic_set(&folio->_entire_mapcount, frames->folio_entire_mapcount[head] - 1);
	atomic_set(&folio->_pincount, frames->folio_pincount[head]);
	atomic_set(&folio->_nr_pages_mapped, nr_pages_mapped(frames, head, nr_pages));
	for (int slot = 0; slot < 2; slot++) {
		folio->_mm_id[slot] = frames->folio_mm_id[2 * head + slot];
		folio->_mm_id_mapcount[slot] = frames->folio_mm_id_mapcount[2 * head + slot] - 1;
	}
	if (frames->folio_mm_ids_shared[head])
		folio->_mm_ids |= FOLIO_MM_IDS_SHARED_BIT;
	return folio;
}

/* Copy the folio back; 0, or -1 if the kernel's own state disagrees with the machine's. */
static int folio_copy_out(struct frames *frames, long head)
{
	const struct folio *folio = (const struct folio *)folio_window;
	long nr_pages = window_nr_pages;
	int ret = 0;

	for (long i = 0; i < nr_pages; i++) {
		const struct page *page = &folio_window[i];

		frames->page_anon_exclusive[head + i] = test_bit(PG_anon_exclusive, &page->flags.f);
		frames->page_mapcount[head + i] = atomic_read(&page->_mapcount) + 1;
	}
	frames->folio_refcount[head] = atomic_read(&folio->_refcount);
	if (nr_pages > 1) {
		frames->folio_large_mapcount[head] = atomic_read(&folio->_large_mapcount) + 1;
		frames->folio_entire_mapcount[head] = atomic_read(&folio->_entire_mapcount) + 1;
		frames->folio_pincount[head] = atomic_read(&folio->_pincount);
		for (int slot = 0; slot < 2; slot++) {
			frames->folio_mm_id[2 * head + slot] = folio->_mm_id[slot] & MM_ID_MASK;
			frames->folio_mm_id_mapcount[2 * head + slot] = folio->_mm_id_mapcount[slot] + 1;
		}
		frames->folio_mm_ids_shared[head] = test_bit(FOLIO_MM_IDS_SHARED_BITNUM, &folio->_mm_ids);
		if (test_bit(FOLIO_MM_IDS_LOCK_BITNUM, &folio->_mm_ids)) {
			rmapfuzz_warn(true, __FILE__, __func__, __LINE__, "large mapcount lock left held");
			ret = -1;
		}
		if (atomic_read(&folio->_nr_pages_mapped) != nr_pages_mapped(frames, head, nr_pages)) {
			rmapfuzz_warn(true, __FILE__, __func__, __LINE__, "_nr_pages_mapped disagrees with the mapcounts");
			ret = -1;
		}
	}
	__builtin_memset(folio_window, 0, (nr_pages > 1 ? nr_pages : 2) * sizeof(struct page));
	return ret;
}

static struct page *folio_page_of(const struct frames *frames, long head, long page)
{
	return folio_window + (page - head);
}

static struct vm_area_struct *vma_of(int slot, int mm_id, int has_pinned)
{
	struct mm_struct *mm = &mms[slot];

	mm->mm_id = mm_id;
	mm->flags = has_pinned ? BIT(MMF_HAS_PINNED) : 0;
	mm->write_protect_seq.sequence = 1;	/* fork holds it */
	return &vmas[slot];
}

/*
 * Each entry point returns the helper's result, or RMAPFUZZ_ESCAPED when the helper walked
 * off the window (the call was abandoned and the machine's arrays were left as they were).
 */
#define RMAPFUZZ_ESCAPED (-1000)
#define RMAPFUZZ_INCONSISTENT (-1001)

#define RUN_ON_FOLIO(frames, head, call)					\
	({									\
		int __ret;							\
		struct folio *folio = folio_copy_in(frames, head);		\
		(void)folio;							\
		if (setjmp(rmapfuzz_escape)) {					\
			__builtin_memset(window, 0, sizeof(window));		\
			__ret = RMAPFUZZ_ESCAPED;				\
		} else {							\
			__ret = (call);						\
			if (folio_copy_out(frames, head))			\
				__ret = RMAPFUZZ_INCONSISTENT;			\
		}								\
		__ret;								\
	})

int rmapfuzz_try_dup_anon_rmap_ptes(struct frames *frames, long head, long page, int nr_pages,
				    int dst_mm_id, int src_mm_id, int src_has_pinned)
{
	return RUN_ON_FOLIO(frames, head,
		folio_try_dup_anon_rmap_ptes(folio, folio_page_of(frames, head, page), nr_pages,
					     vma_of(0, dst_mm_id, 0), vma_of(1, src_mm_id, src_has_pinned)));
}

int rmapfuzz_try_dup_anon_rmap_pmd(struct frames *frames, long head, int dst_mm_id, int src_mm_id,
				   int src_has_pinned)
{
	return RUN_ON_FOLIO(frames, head,
		folio_try_dup_anon_rmap_pmd(folio, folio_page_of(frames, head, head),
					    vma_of(0, dst_mm_id, 0), vma_of(1, src_mm_id, src_has_pinned)));
}

#ifdef RMAPFUZZ_HAVE_folio_try_share_anon_rmap_ptes
int rmapfuzz_has_share_ptes = 1;
#define share_ptes(folio, page, nr_pages) folio_try_share_anon_rmap_ptes(folio, page, nr_pages)
#else
int rmapfuzz_has_share_ptes = 0;
/* Before the series: try_to_unmap_one shares one page at a time. */
static int share_ptes(struct folio *folio, struct page *page, int nr_pages)
{
	for (int i = 0; i < nr_pages; i++) {
		int ret = folio_try_share_anon_rmap_pte(folio, page + i);

		if (ret)
			return ret;
	}
	return 0;
}
#endif

int rmapfuzz_try_share_anon_rmap_ptes(struct frames *frames, long head, long page, int nr_pages)
{
	return RUN_ON_FOLIO(frames, head, share_ptes(folio, folio_page_of(frames, head, page), nr_pages));
}

int rmapfuzz_try_share_anon_rmap_pmd(struct frames *frames, long head)
{
	return RUN_ON_FOLIO(frames, head, folio_try_share_anon_rmap_pmd(folio, folio_page_of(frames, head, head)));
}

int rmapfuzz_set_large_mapcount(struct frames *frames, long head, int mapcount, int mm_id)
{
	return RUN_ON_FOLIO(frames, head, (folio_set_large_mapcount(folio, mapcount, vma_of(0, mm_id, 0)), 0));
}

int rmapfuzz_add_return_large_mapcount(struct frames *frames, long head, int diff, int mm_id)
{
	return RUN_ON_FOLIO(frames, head, folio_add_return_large_mapcount(folio, diff, vma_of(0, mm_id, 0)));
}

int rmapfuzz_sub_return_large_mapcount(struct frames *frames, long head, int diff, int mm_id)
{
	return RUN_ON_FOLIO(frames, head, folio_sub_return_large_mapcount(folio, diff, vma_of(0, mm_id, 0)));
}

int rmapfuzz_add_anon_rmap_ptes(struct frames *frames, long head, long page, int nr_pages, int mm_id,
				int exclusive)
{
	return RUN_ON_FOLIO(frames, head,
		(folio_add_anon_rmap_ptes(folio, folio_page_of(frames, head, page), nr_pages, vma_of(0, mm_id, 0),
					  0, exclusive ? RMAP_EXCLUSIVE : RMAP_NONE), 0));
}

int rmapfuzz_remove_rmap_ptes(struct frames *frames, long head, long page, int nr_pages, int mm_id)
{
	return RUN_ON_FOLIO(frames, head,
		(folio_remove_rmap_ptes(folio, folio_page_of(frames, head, page), nr_pages, vma_of(0, mm_id, 0)), 0));
}

int rmapfuzz_remove_rmap_pmd(struct frames *frames, long head, int mm_id)
{
	return RUN_ON_FOLIO(frames, head,
		(folio_remove_rmap_pmd(folio, folio_page_of(frames, head, head), vma_of(0, mm_id, 0)), 0));
}

/*
 * PTE batching. The folio a batch starts in is put in the window as far as the batch
 * needs it: its head (PG_head, _nr_pages) and every page's compound_head.
 */
static struct folio *folio_memmap_in(const struct frames *frames, long head)
{
	long nr_pages = 1L << frames->folio_order[head];
	struct folio *folio = (struct folio *)folio_window;

	rmapfuzz_window_pfn = head - (folio_window - window);
	window_nr_pages = nr_pages;
	for (long i = 1; i < nr_pages; i++)
		folio_window[i].compound_head = (unsigned long)folio_window | 1;
	set_bit(PG_head, &folio->flags.f);
	folio->_nr_pages = nr_pages;
	return folio;
}

static void folio_memmap_out(void)
{
	__builtin_memset(folio_window, 0, (window_nr_pages > 1 ? window_nr_pages : 2) * sizeof(struct page));
}

/* The machine's folio_pte_batch flags (batched/internal.py) as the kernel's. */
#define RMAPFUZZ_RESPECT_DIRTY 1
#define RMAPFUZZ_RESPECT_WRITE 4
#define RMAPFUZZ_MERGE_WRITE 8

static fpb_t fpb_flags(int flags)
{
	return (flags & RMAPFUZZ_RESPECT_DIRTY ? FPB_RESPECT_DIRTY : 0) |
	       (flags & RMAPFUZZ_RESPECT_WRITE ? FPB_RESPECT_WRITE : 0) |
	       (flags & RMAPFUZZ_MERGE_WRITE ? FPB_MERGE_WRITE : 0);
}

/* How many entries from index on may one batch take: up to the first non-candidate. */
static unsigned int candidate_run(const uint8_t *candidate, int index, int end)
{
	int last = index;

	while (last < end && (!candidate || candidate[last]))
		last++;
	return last - index;
}

/*
 * Every batch of the entries [first, first + nr_ptes) of a page table (one VMA), as the
 * kernel's zap, fork and unmap loops find them: ptep_get() each present entry, and for a
 * page of a large folio folio_pte_batch_flags() from there, the rest of the range (or of
 * the candidate run) as max_nr. Each batch's first index, nr_pages and template (merged
 * as flags ask) go to the out arrays; the number of batches is returned, or an error.
 */
int rmapfuzz_folio_pte_batches(struct frames *frames, pte_t *table, int first, int nr_ptes,
			       const uint8_t *candidate, int flags, int64_t *batch_index,
			       int64_t *batch_nr_pages, uint64_t *batch_pte)
{
	int nr_batches = 0;

	rmapfuzz_nr_warnings = 0;
	rmapfuzz_batch_table = table;
	for (int i = 0; i < nr_ptes;) {
		pte_t *ptep = table + first + i;
		unsigned int nr_pages = 1, max_nr;
		pte_t pte;
		long head;

		if (candidate && !candidate[i]) {
			i++;
			continue;
		}
		pte = ptep_get(ptep);
		if (!pte_present(pte)) {
			i++;
			continue;
		}
		head = frames->page_folio[pte_pfn(pte)];
		if (head < 0) {
			rmapfuzz_warn(true, __FILE__, __func__, __LINE__, "a present PTE maps a free frame");
			return RMAPFUZZ_INCONSISTENT;
		}
		max_nr = candidate_run(candidate, i, nr_ptes);
		if (frames->folio_order[head] > 0) {
			struct folio *folio = folio_memmap_in(frames, head);

			if (setjmp(rmapfuzz_escape)) {
				__builtin_memset(window, 0, sizeof(window));
				return RMAPFUZZ_ESCAPED;
			}
			nr_pages = folio_pte_batch_flags(folio, &vmas[0], ptep, &pte, max_nr, fpb_flags(flags));
			folio_memmap_out();
		}
		if (nr_pages < 1 || nr_pages > max_nr) {
			rmapfuzz_warn(true, __FILE__, __func__, __LINE__, "folio_pte_batch_flags() outside 1..max_nr");
			return RMAPFUZZ_INCONSISTENT;
		}
		batch_index[nr_batches] = first + i;
		batch_nr_pages[nr_batches] = nr_pages;
		batch_pte[nr_batches] = pte_val(pte);
		nr_batches++;
		i += nr_pages;
	}
	rmapfuzz_batch_table = NULL;
	return nr_batches;
}

/* The kernel's values of the descriptor bits the machine encodes (machine/pgtable.py). */
int rmapfuzz_pte_bits(uint64_t *bits)
{
	bits[0] = PTE_VALID;
	bits[1] = PTE_RDONLY;
	bits[2] = PTE_AF;
	bits[3] = PTE_WRITE;
	bits[4] = PTE_CONT;
	bits[5] = PTE_DIRTY;
	bits[6] = PTE_ADDR_LOW;
	bits[7] = CONT_PTES;
	return 8;
}
