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
