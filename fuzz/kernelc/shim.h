/*
 * The user-space stand-in for the kernel headers the extracted rmap helpers need,
 * in the pattern of tools/testing/vma: kernel types in the kernel's layout, the few
 * macros and accessors the helpers use, and VM_WARN_* recording a warning instead of
 * printing one. No kernel code: each definition here is written for rmapfuzz.
 *
 * One folio at a time lives in a window of struct pages (glue.c); a helper that
 * walks off the window (the 2^32-page loop of nr_pages == 0) escapes the call.
 */
#ifndef RMAPFUZZ_SHIM_H
#define RMAPFUZZ_SHIM_H

#include <limits.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Configuration: arm64, 4 KiB pages, THP, CONFIG_MM_ID and CONFIG_PAGE_MAPCOUNT. */
#define CONFIG_64BIT 1
#define CONFIG_MMU 1
#define CONFIG_MM_ID 1
#define CONFIG_PAGE_MAPCOUNT 1
#define CONFIG_TRANSPARENT_HUGEPAGE 1
#define CONFIG_HAVE_GUP_FAST 1
#define IS_ENABLED(option) (option)

#undef __always_inline
#define __always_inline inline __attribute__((__always_inline__))
#define __bitwise
#define __force
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define BIT(nr) (1UL << (nr))
#define BITS_PER_BYTE 8
#define BITS_PER_LONG 64
#define EBUSY 16

#define HPAGE_PMD_ORDER 9
#define HPAGE_PMD_NR (1 << HPAGE_PMD_ORDER)
#define HPAGE_PUD_NR (1 << 18)

/* Warnings: every VM_WARN_* / VM_BUG_ON that fires is recorded for the bridge. */
struct rmapfuzz_warning {
	const char *file;
	const char *function;
	int line;
	const char *condition;
};

#define RMAPFUZZ_MAX_WARNINGS 16
extern struct rmapfuzz_warning rmapfuzz_warnings[RMAPFUZZ_MAX_WARNINGS];
extern int rmapfuzz_nr_warnings;
extern jmp_buf rmapfuzz_escape;

static inline bool rmapfuzz_warn(bool fired, const char *file, const char *function, int line,
				 const char *condition)
{
	if (fired && rmapfuzz_nr_warnings < RMAPFUZZ_MAX_WARNINGS) {
		struct rmapfuzz_warning *warning = &rmapfuzz_warnings[rmapfuzz_nr_warnings++];

		warning->file = file;
		warning->function = function;
		warning->line = line;
		warning->condition = condition;
	}
	return fired;
}

#define RMAPFUZZ_WARN(cond, what) rmapfuzz_warn(!!(cond), __FILE__, __func__, __LINE__, what "(" #cond ")")
#define VM_WARN_ON_ONCE(cond) ((void)RMAPFUZZ_WARN(cond, "VM_WARN_ON_ONCE"))
#define VM_WARN_ON(cond) ((void)RMAPFUZZ_WARN(cond, "VM_WARN_ON"))
#define VM_WARN_ON_FOLIO(cond, folio) RMAPFUZZ_WARN(cond, "VM_WARN_ON_FOLIO")
#define VM_WARN_ON_ONCE_FOLIO(cond, folio) RMAPFUZZ_WARN(cond, "VM_WARN_ON_ONCE_FOLIO")
#define VM_BUG_ON(cond) ((void)RMAPFUZZ_WARN(cond, "VM_BUG_ON"))
#define VM_BUG_ON_FOLIO(cond, folio) ((void)RMAPFUZZ_WARN(cond, "VM_BUG_ON_FOLIO"))
#define WARN_ON_ONCE(cond) RMAPFUZZ_WARN(cond, "WARN_ON_ONCE")
#define BUILD_BUG() ((void)RMAPFUZZ_WARN(1, "BUILD_BUG"))

/* Atomics and bit operations: one thread, so plain accesses. */
typedef struct { int counter; } atomic_t;

#define atomic_read(v) ((v)->counter)
#define atomic_set(v, i) ((v)->counter = (i))
#define atomic_add(i, v) ((v)->counter += (i))
#define atomic_sub(i, v) ((v)->counter -= (i))
#define atomic_inc(v) ((v)->counter++)
#define atomic_dec(v) ((v)->counter--)
#define atomic_inc_and_test(v) (++(v)->counter == 0)
#define atomic_add_negative(i, v) (((v)->counter += (i)) < 0)
#define atomic_add_return_relaxed(i, v) ((v)->counter += (i))
#define atomic_sub_return_relaxed(i, v) ((v)->counter -= (i))
#define smp_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define smp_mb__after_atomic() __atomic_thread_fence(__ATOMIC_SEQ_CST)

static inline bool test_bit(long nr, const unsigned long *addr)
{
	return (*addr >> nr) & 1;
}

static inline void set_bit(long nr, unsigned long *addr)
{
	*addr |= BIT(nr);
}

static inline void clear_bit(long nr, unsigned long *addr)
{
	*addr &= ~BIT(nr);
}

#define __set_bit set_bit
#define __clear_bit clear_bit

static inline void bit_spin_lock(int nr, unsigned long *addr)
{
	VM_WARN_ON_ONCE(test_bit(nr, addr));	/* nobody else holds it: a leaked lock */
	set_bit(nr, addr);
}

static inline void __bit_spin_unlock(int nr, unsigned long *addr)
{
	VM_WARN_ON_ONCE(!test_bit(nr, addr));
	clear_bit(nr, addr);
}

/* MM_ID (include/linux/mm_types.h, 64-bit). */
typedef int mm_id_mapcount_t;
#define MM_ID_MAPCOUNT_MAX INT_MAX
typedef unsigned int mm_id_t;
#define MM_ID_DUMMY 0
#define MM_ID_MIN (MM_ID_DUMMY + 1)
#define MM_ID_BITS ((sizeof(mm_id_t) * BITS_PER_BYTE) - 1)
#define MM_ID_MASK ((1U << MM_ID_BITS) - 1)
#define MM_ID_MAX MM_ID_MASK
#define FOLIO_MM_IDS_LOCK_BITNUM MM_ID_BITS
#define FOLIO_MM_IDS_LOCK_BIT BIT(FOLIO_MM_IDS_LOCK_BITNUM)
#define FOLIO_MM_IDS_SHARED_BITNUM (2 * MM_ID_BITS + 1)
#define FOLIO_MM_IDS_SHARED_BIT BIT(FOLIO_MM_IDS_SHARED_BITNUM)

/* struct page and struct folio: 64-byte pages, the folio overlaying the first two. */
typedef struct { unsigned long f; } memdesc_flags_t;

enum pageflags { PG_head = 6, PG_anon_exclusive = 20 };

#define FOLIO_MAPPING_ANON 0x1

struct page {
	memdesc_flags_t flags;
	unsigned long compound_head;	/* bit 0: a tail, the rest its head */
	unsigned long _lru_1;
	void *mapping;
	unsigned long index;
	unsigned long private;
	atomic_t _mapcount;
	atomic_t _refcount;
	unsigned long memcg_data;
};

struct folio {
	/* page 0 */
	memdesc_flags_t flags;
	unsigned long _lru[2];
	void *mapping;
	unsigned long index;
	unsigned long private;
	atomic_t _mapcount;
	atomic_t _refcount;
	unsigned long memcg_data;
	/* page 1 */
	unsigned long _flags_1;
	unsigned long _head_1;
	atomic_t _large_mapcount;
	atomic_t _nr_pages_mapped;
	atomic_t _entire_mapcount;
	atomic_t _pincount;
	mm_id_mapcount_t _mm_id_mapcount[2];
	union {
		mm_id_t _mm_id[2];
		unsigned long _mm_ids;
	};
	atomic_t _mapcount_1;
	atomic_t _refcount_1;
	unsigned int _nr_pages;
	unsigned int _pad_1;
};

_Static_assert(sizeof(struct page) == 64, "struct page is 64 bytes");
_Static_assert(sizeof(struct folio) == 2 * sizeof(struct page), "struct folio overlays two pages");
_Static_assert(offsetof(struct folio, _mapcount) == offsetof(struct page, _mapcount), "folio _mapcount");
_Static_assert(offsetof(struct folio, _large_mapcount) == 64 + 16, "folio _large_mapcount");

#define ENTIRELY_MAPPED 0x800000
#define FOLIO_PAGES_MAPPED (ENTIRELY_MAPPED - 1)
#define CONFIG_NO_PAGE_MAPCOUNT 0

struct anon_vma {
	atomic_t refcount;
};

/* The window's bounds: a page outside them ends the call (glue.c). */
extern struct page *rmapfuzz_window_start, *rmapfuzz_window_end;

static inline struct page *rmapfuzz_checked_page(const struct page *page, const char *file,
						 const char *function, int line)
{
	if (page < rmapfuzz_window_start || page >= rmapfuzz_window_end) {
		rmapfuzz_warn(true, file, function, line, "page outside the folio's window");
		longjmp(rmapfuzz_escape, 1);
	}
	return (struct page *)page;
}

/* Macros, so that a page off the window is charged to the kernel function that used it. */
#define PF_ANY(page, enforce) rmapfuzz_checked_page(page, __FILE__, __func__, __LINE__)

static inline struct page *rmapfuzz_compound_head(const struct page *page, struct page *checked)
{
	unsigned long head = checked->compound_head;

	return (struct page *)(head & 1 ? head - 1 : (unsigned long)page);
}

#define compound_head(page) rmapfuzz_compound_head(page, PF_ANY(page, 0))
#define page_folio(page) ((struct folio *)compound_head(page))

static inline bool folio_test_large(const struct folio *folio)
{
	return test_bit(PG_head, &folio->flags.f);
}

static inline long folio_large_nr_pages(const struct folio *folio)
{
	return folio->_nr_pages;
}

static inline long folio_nr_pages(const struct folio *folio)
{
	return folio_test_large(folio) ? folio_large_nr_pages(folio) : 1;
}

static inline unsigned int folio_order(const struct folio *folio)
{
	return folio_test_large(folio) ? __builtin_ctzl(folio_large_nr_pages(folio)) : 0;
}

static inline int folio_ref_count(const struct folio *folio)
{
	return atomic_read(&folio->_refcount);
}

static inline bool folio_mapped(const struct folio *folio)
{
	if (folio_test_large(folio))
		return atomic_read(&folio->_large_mapcount) >= 0;
	return atomic_read(&folio->_mapcount) >= 0;
}

static __always_inline bool folio_test_anon(const struct folio *folio)
{
	return ((unsigned long)folio->mapping & FOLIO_MAPPING_ANON) != 0;
}

static inline int folio_entire_mapcount(const struct folio *folio)
{
	return atomic_read(&folio->_entire_mapcount) + 1;
}

/* What the add and remove paths do beyond the counts: statistics, mlock, deferred split. */
#define __folio_mod_stat(folio, nr, nr_pmdmapped) do { } while (0)
#define mlock_vma_folio(folio, vma) do { } while (0)
#define munlock_vma_folio(folio, vma) do { } while (0)
#define deferred_split_folio(folio, partially_mapped) do { } while (0)
#define folio_test_partially_mapped(folio) false
#define __page_check_anon_rmap(folio, page, vma, address) do { } while (0)

#define folio_test_hugetlb(folio) false
#define folio_test_ksm(folio) false
#define folio_is_device_private(folio) false
#define is_zero_folio(folio) false

#define PageAnonExclusive(page) test_bit(PG_anon_exclusive, &PF_ANY(page, 1)->flags.f)
#define ClearPageAnonExclusive(page) clear_bit(PG_anon_exclusive, &PF_ANY(page, 1)->flags.f)
#define SetPageAnonExclusive(page) set_bit(PG_anon_exclusive, &PF_ANY(page, 1)->flags.f)

#define GUP_PIN_COUNTING_BIAS (1U << 10)

/* mm and vma: the MM_ID, MMF_HAS_PINNED and fork's write_protect_seq. */
#define MMF_HAS_PINNED 27

typedef struct { unsigned int sequence; } seqcount_t;

struct mm_struct {
	mm_id_t mm_id;
	unsigned long flags;
	seqcount_t write_protect_seq;
};

struct vm_area_struct {
	struct mm_struct *vm_mm;
};

#define raw_read_seqcount(s) ((s)->sequence)

static inline bool mm_flags_test(int flag, const struct mm_struct *mm)
{
	return test_bit(flag, &mm->flags);
}

enum pgtable_level {
	PGTABLE_LEVEL_PTE = 0,
	PGTABLE_LEVEL_PMD,
	PGTABLE_LEVEL_PUD,
	PGTABLE_LEVEL_P4D,
	PGTABLE_LEVEL_PGD,
};

/* The macros rmap.h defines beside the functions extracted from it. */
#define folio_add_large_mapcount folio_add_return_large_mapcount
#define folio_sub_large_mapcount folio_sub_return_large_mapcount
#define folio_inc_large_mapcount(folio, vma) folio_add_large_mapcount(folio, 1, vma)
#define folio_dec_large_mapcount(folio, vma) folio_sub_large_mapcount(folio, 1, vma)
#define folio_inc_return_large_mapcount(folio, vma) folio_add_return_large_mapcount(folio, 1, vma)
#define folio_dec_return_large_mapcount(folio, vma) folio_sub_return_large_mapcount(folio, 1, vma)

typedef int __bitwise rmap_t;
#define RMAP_NONE ((__force rmap_t)0)
#define RMAP_EXCLUSIVE ((__force rmap_t)BIT(0))

/*
 * PTE batching: arm64's descriptor types (asm/pgtable-types.h), 48-bit physical
 * addresses and 16-entry contpte blocks; the bits and accessors themselves come from
 * the tree. The page table is the machine's own array, page-aligned as the kernel's,
 * so pte_batch_hint() can read a descriptor's place in its block from its address.
 */
#define CONFIG_ARM64_CONT_PTE_SHIFT 4
#define PAGE_SHIFT 12
#define _AT(type, value) ((type)(value))

typedef uint64_t pteval_t;
typedef uint64_t phys_addr_t;
typedef struct { pteval_t pte; } pte_t;
typedef struct { pteval_t pgprot; } pgprot_t;
#define pte_val(x) ((x).pte)
#define __pte(x) ((pte_t) { (x) })
#define pgprot_val(x) ((x).pgprot)
#define __pgprot(x) ((pgprot_t) { (x) })

typedef int __bitwise fpb_t;

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define PTR_ALIGN_DOWN(p, a) ((__typeof__(p))((unsigned long)(p) & ~((unsigned long)(a) - 1)))
#define min(a, b) ((a) < (b) ? (a) : (b))
#define min_t(type, a, b) min((type)(a), (type)(b))

/* The memmap: the window's first page is pfn rmapfuzz_window_pfn (glue.c). */
extern long rmapfuzz_window_pfn;
#define pfn_to_page(pfn) (rmapfuzz_window_start + ((long)(pfn) - rmapfuzz_window_pfn))
#define page_to_pfn(p) (rmapfuzz_window_pfn + ((const struct page *)(p) - rmapfuzz_window_start))
#define folio_pfn(folio) page_to_pfn((const struct page *)(folio))

/*
 * folio_pte_batch_flags() warns when @ptentp points into a page table instead of at a
 * copy: here a pointer is "a valid kernel address of a page-table page" when it lies in
 * the machine's table being batched.
 */
extern const pte_t *rmapfuzz_batch_table;
#define virt_addr_valid(p) ((const pte_t *)(p) >= rmapfuzz_batch_table && \
			    (const pte_t *)(p) < rmapfuzz_batch_table + 512)
#define virt_to_page(p) ((const void *)(p))
#define PageTable(page) true

#endif /* RMAPFUZZ_SHIM_H */
