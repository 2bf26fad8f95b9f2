/*
 * rmapfuzz kernel runtime: runs rmapfuzz op scripts on a real Linux kernel
 * and reports, after every op, what the kernel shows for every page the
 * script has mapped in every live process.
 *
 * One controller process drives one worker process per script process Pn
 * through command pipes; a worker does the op in its own mm (mmap, a user
 * store, fork, io_uring buffer registration, MADV_PAGEOUT, ...). The
 * controller observes from outside, so nothing it reads faults or swaps in:
 * /proc/PID/pagemap for the pfn or swap slot, the page tables through
 * /proc/kcore (from task_struct->mm->pgd), struct page and struct folio
 * through /proc/kcore over the vmemmap, and the frame's first word through
 * /proc/kcore. Every struct offset comes from the kernel's BTF.
 *
 * Output, one line per fact (PFNs are raw: the reader compares relations):
 *   S <name>                       a script starts
 *   R <op> <errno>                 op number op returned (0: success)
 *   N <n> <pid>                    process Pn is worker pid
 *   P <n> <va> n                   none
 *   P <n> <va> s <slot> <excl> <uffd-wp> <type>
 *                                  swap entry: offset, PTE_SWP_EXCLUSIVE, PM_UFFD_WP and the
 *                                  swap type (a PTE marker's is SWP_PTE_MARKER)
 *   P <n> <va> p <pfn> <head> <order> <pmd> <cont> <dirty> <young> <write>
 *                <excl> <mapcount> <ref> <pin> <shared> <zero> <value>
 *                <lazyfree> <folio-dirty> <file> <uffd-wp> <private>
 *                                  (private: PG_private, the reference a filesystem's buffer
 *                                  heads hold: folio_attach_private)
 *   G <n>                          Pn exited
 *   E <op>                         observation after op number op is complete
 *   X <reason>                     the script could not run on this kernel
 *   Z <name> <ms> <observe ms>     the script ends: its time, and the part spent observing
 *   T <seconds>                    the guest's uptime (/init: before the first script and after the last)
 * A page line is printed only when it differs from that page's previous one.
 *
 * Built two ways from this one file: with RF_INIT as the /init of an
 * initramfs that runs every script under /scripts, or (rmapfuzz export) with
 * one script's op table appended, as a standalone reproducer.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_FREE
#define MADV_FREE 8
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
/* The result of a write that userfaultfd trapped (SIGBUS with UFFD_FEATURE_SIGBUS): no errno. */
#define RF_EUFFD 1000
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE_SIZE 4096UL
#define PAGE_SHIFT 12
#define PMD_SIZE (2UL << 20)
#define PTRS_PER_TABLE 512
#define CONT_PTES 16
#define MAX_PROCESSES 64
#define MAX_PINS 256
#define MAX_RANGES 256
#define PMD_ORDER 9

/* arm64 descriptor bits (arch/arm64/include/asm/pgtable-hwdef.h, pgtable-prot.h) */
#define PTE_VALID (1UL << 0)
#define PTE_TABLE_BIT (1UL << 1)
#define PTE_RDONLY (1UL << 7)
#define PTE_AF (1UL << 10)
#define PTE_DBM (1UL << 51)
#define PTE_CONT (1UL << 52)
#define PTE_SW_DIRTY (1UL << 55)
#define PTE_SWP_EXCLUSIVE (1UL << 2)
#define PTE_ADDR_MASK 0x0003fffffffff000UL /* output address bits 49:12 */

/* /proc/pagemap (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PFN_MASK ((1UL << 55) - 1)
#define PM_SWAP (1UL << 62)
#define PM_PRESENT (1UL << 63)
#define PM_UFFD_WP (1UL << 57)
#define KPF_DIRTY 4
#define KPF_ANON 12
#define KPF_SWAPBACKED 14
#define KPF_HEAD 15
#define KPF_TAIL 16
#define KPF_ZERO 24

enum rf_op_kind {
	RF_MMAP, RF_MUNMAP, RF_DONTNEED, RF_MPROTECT, RF_FAULT, RF_WRITE, RF_READ,
	RF_PIN, RF_UNPIN, RF_FORK, RF_EXIT, RF_RECLAIM, RF_SPLIT, RF_FREE, RF_FILE, RF_SYNC, RF_UFFD, RF_WP,
	RF_SPLIT_PMD, RF_NR_KINDS
};

/* One op of a script; which fields an op reads is in rf_do_op(). */
struct rf_op {
	int kind;
	int process;	   /* Pn */
	uint64_t addr;
	uint64_t length;   /* bytes: mmap, munmap, dontneed, free, mprotect, pin */
	uint64_t value;    /* write; a file mmap's offset */
	int arg;	   /* rw flag (mmap, mprotect, pin), order (fault, split), pin id (unpin), child (fork),
			    * file id (file, sync); a file mmap: rw | shared << 1 | (file id + 1) << 2, and the
			    * controller adds its fd << 16; split_pmd: the controller's "a PMD block is there" */
};

/* ------------------------------------------------------------------------- */
/* Output: the controller alone prints, through one buffer flushed per line group. */

static int out_fd = 1;
static char out_buf[1 << 16];
static size_t out_len;

static void out_flush(void)
{
	size_t done = 0;

	while (done < out_len) {
		ssize_t written = write(out_fd, out_buf + done, out_len - done);

		if (written <= 0) {
			if (written < 0 && errno == EINTR)
				continue;
			break;
		}
		done += written;
	}
	out_len = 0;
}

static void out(const char *fmt, ...)
{
	va_list ap;
	int len;

	if (out_len > sizeof(out_buf) - 512)
		out_flush();
	va_start(ap, fmt);
	len = vsnprintf(out_buf + out_len, sizeof(out_buf) - out_len, fmt, ap);
	va_end(ap);
	if (len > 0)
		out_len += (size_t)len < sizeof(out_buf) - out_len ? (size_t)len : 0;
}

static void fatal(const char *what)
{
	out("X %s: %s\n", what, strerror(errno));
	out_flush();
	_exit(3);
}

/* ------------------------------------------------------------------------- */
/* Small file helpers. */

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	ssize_t written;

	if (fd < 0)
		return -errno;
	written = write(fd, text, strlen(text));
	close(fd);
	return written < 0 ? -errno : 0;
}

static char *read_whole_file(const char *path, size_t *size)
{
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	int fd = open(path, O_RDONLY);

	if (fd < 0 || !buf) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	for (;;) {
		ssize_t got;

		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				fatal("realloc");
		}
		got = read(fd, buf + len, cap - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		len += got;
	}
	close(fd);
	*size = len;
	return buf;
}

/* ------------------------------------------------------------------------- */
/* BTF: struct member offsets and enum values, from /sys/kernel/btf/vmlinux. */

struct btf_header_v1 {
	uint16_t magic;
	uint8_t version, flags;
	uint32_t hdr_len, type_off, type_len, str_off, str_len;
};

struct btf_type_v1 {
	uint32_t name_off, info, size_or_type;
};

enum { BTF_INT = 1, BTF_PTR, BTF_ARRAY, BTF_STRUCT, BTF_UNION, BTF_ENUM, BTF_FWD, BTF_TYPEDEF,
       BTF_VOLATILE, BTF_CONST, BTF_RESTRICT, BTF_FUNC, BTF_FUNC_PROTO, BTF_VAR, BTF_DATASEC,
       BTF_FLOAT, BTF_DECL_TAG, BTF_TYPE_TAG, BTF_ENUM64 };

static char *btf_data;
static const char *btf_strings;
static const struct btf_type_v1 **btf_types; /* by type id, 1-based */
static uint32_t btf_nr_types;

static uint32_t btf_kind(const struct btf_type_v1 *type) { return (type->info >> 24) & 0x1f; }
static uint32_t btf_vlen(const struct btf_type_v1 *type) { return type->info & 0xffff; }

static size_t btf_extra_size(const struct btf_type_v1 *type)
{
	switch (btf_kind(type)) {
	case BTF_INT: case BTF_VAR: case BTF_DECL_TAG: return 4;
	case BTF_ARRAY: return 12;
	case BTF_STRUCT: case BTF_UNION: return 12 * btf_vlen(type);
	case BTF_ENUM: case BTF_FUNC_PROTO: return 8 * btf_vlen(type);
	case BTF_DATASEC: case BTF_ENUM64: return 12 * btf_vlen(type);
	default: return 0;
	}
}

static int btf_load(void)
{
	size_t size = 0, offset, cap = 1 << 17;
	const struct btf_header_v1 *header;

	btf_data = read_whole_file("/sys/kernel/btf/vmlinux", &size);
	if (!btf_data || size < sizeof(*header))
		return -1;
	header = (const void *)btf_data;
	if (header->magic != 0xeB9F)
		return -1;
	btf_strings = btf_data + header->hdr_len + header->str_off;
	btf_types = malloc(cap * sizeof(*btf_types));
	btf_nr_types = 0;
	for (offset = header->hdr_len + header->type_off;
	     offset < header->hdr_len + header->type_off + header->type_len;) {
		const struct btf_type_v1 *type = (const void *)(btf_data + offset);

		if (btf_nr_types + 2 >= cap) {
			cap *= 2;
			btf_types = realloc(btf_types, cap * sizeof(*btf_types));
		}
		btf_types[++btf_nr_types] = type;
		offset += sizeof(*type) + btf_extra_size(type);
	}
	return 0;
}

/* Follow typedefs and qualifiers to the type they name. */
static const struct btf_type_v1 *btf_resolve(uint32_t id)
{
	while (id && id <= btf_nr_types) {
		const struct btf_type_v1 *type = btf_types[id];
		uint32_t kind = btf_kind(type);

		if (kind != BTF_TYPEDEF && kind != BTF_VOLATILE && kind != BTF_CONST &&
		    kind != BTF_RESTRICT && kind != BTF_TYPE_TAG)
			return type;
		id = type->size_or_type;
	}
	return NULL;
}

static const struct btf_type_v1 *btf_find(uint32_t kind, const char *name)
{
	for (uint32_t id = 1; id <= btf_nr_types; id++)
		if (btf_kind(btf_types[id]) == kind && !strcmp(btf_strings + btf_types[id]->name_off, name))
			return btf_types[id];
	return NULL;
}

/* Bit offset of member name in a struct or union, looking into anonymous members; -1 if absent. */
static long btf_member_bits(const struct btf_type_v1 *type, const char *name)
{
	const uint32_t *member = (const uint32_t *)(type + 1);

	for (uint32_t i = 0; i < btf_vlen(type); i++, member += 3) {
		uint32_t bits = (type->info >> 31) ? member[2] & 0xffffff : member[2];
		const char *member_name = btf_strings + member[0];

		if (!strcmp(member_name, name))
			return bits;
		if (!*member_name) {
			const struct btf_type_v1 *inner = btf_resolve(member[1]);
			long found;

			if (inner && (btf_kind(inner) == BTF_STRUCT || btf_kind(inner) == BTF_UNION)) {
				found = btf_member_bits(inner, name);
				if (found >= 0)
					return bits + found;
			}
		}
	}
	return -1;
}

static long btf_offset(const char *struct_name, const char *member)
{
	const struct btf_type_v1 *type = btf_find(BTF_STRUCT, struct_name);
	long bits = type ? btf_member_bits(type, member) : -1;

	if (bits < 0 || bits % 8) {
		out("X BTF has no byte member %s.%s\n", struct_name, member);
		out_flush();
		_exit(3);
	}
	return bits / 8;
}

static long btf_struct_size(const char *struct_name)
{
	const struct btf_type_v1 *type = btf_find(BTF_STRUCT, struct_name);

	return type ? (long)type->size_or_type : -1;
}

static long btf_typedef_size(const char *name)
{
	for (uint32_t id = 1; id <= btf_nr_types; id++) {
		const struct btf_type_v1 *type = btf_types[id];

		if (btf_kind(type) == BTF_TYPEDEF && !strcmp(btf_strings + type->name_off, name)) {
			const struct btf_type_v1 *target = btf_resolve(id);

			return target ? (long)target->size_or_type : -1;
		}
	}
	return -1;
}

static long btf_enum_value(const char *name)
{
	for (uint32_t id = 1; id <= btf_nr_types; id++) {
		const struct btf_type_v1 *type = btf_types[id];
		const uint32_t *entry = (const uint32_t *)(type + 1);

		if (btf_kind(type) != BTF_ENUM)
			continue;
		for (uint32_t i = 0; i < btf_vlen(type); i++, entry += 2)
			if (!strcmp(btf_strings + entry[0], name))
				return (int32_t)entry[1];
	}
	return -1;
}

/* The offsets the observer reads, filled by layout_init(). */
static struct {
	long page_size, page_flags, page_mapcount, page_refcount;
	long folio_large_mapcount, folio_entire_mapcount, folio_pincount, folio_mm_ids;
	long pg_anon_exclusive, pg_private, mm_ids_shared_bit;
	long task_tasks, task_pid, task_mm, mm_pgd;
} layout;

static void layout_init(void)
{
	long mm_id_size;

	if (btf_load())
		fatal("cannot read /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)");
	layout.page_size = btf_struct_size("page");
	layout.page_flags = btf_offset("page", "flags");
	layout.page_mapcount = btf_offset("page", "_mapcount");
	layout.page_refcount = btf_offset("page", "_refcount");
	layout.folio_large_mapcount = btf_offset("folio", "_large_mapcount");
	layout.folio_entire_mapcount = btf_offset("folio", "_entire_mapcount");
	layout.folio_pincount = btf_offset("folio", "_pincount");
	layout.folio_mm_ids = btf_offset("folio", "_mm_ids");
	layout.task_tasks = btf_offset("task_struct", "tasks");
	layout.task_pid = btf_offset("task_struct", "pid");
	layout.task_mm = btf_offset("task_struct", "mm");
	layout.mm_pgd = btf_offset("mm_struct", "pgd");
	layout.pg_anon_exclusive = btf_enum_value("PG_anon_exclusive");
	layout.pg_private = btf_enum_value("PG_private");
	mm_id_size = btf_typedef_size("mm_id_t");
	if (layout.page_size <= 0 || layout.pg_anon_exclusive < 0 || layout.pg_private < 0 || mm_id_size <= 0) {
		errno = ENOENT;
		fatal("BTF lacks struct page, PG_anon_exclusive, PG_private or mm_id_t");
	}
	/* FOLIO_MM_IDS_SHARED_BITNUM = 2 * MM_ID_BITS + 1, MM_ID_BITS = bits of mm_id_t - 1 */
	layout.mm_ids_shared_bit = 2 * (mm_id_size * 8 - 1) + 1;
}

/* ------------------------------------------------------------------------- */
/* /proc/kcore: the linear map, the vmemmap, and kernel symbols. */

static int kcore_fd = -1;
static Elf64_Phdr *kcore_segments;
static int kcore_nr_segments;
static uint64_t ram_pa, ram_size, ram_va, vmemmap_va;

static int kread_va(uint64_t va, void *buf, size_t len)
{
	for (int i = 0; i < kcore_nr_segments; i++) {
		const Elf64_Phdr *segment = &kcore_segments[i];

		if (segment->p_type == PT_LOAD && va >= segment->p_vaddr &&
		    va + len <= segment->p_vaddr + segment->p_memsz)
			return pread(kcore_fd, buf, len, segment->p_offset + (va - segment->p_vaddr)) == (ssize_t)len;
	}
	return 0;
}

static int kread_pa(uint64_t pa, void *buf, size_t len)
{
	if (pa < ram_pa || pa + len > ram_pa + ram_size)
		return 0;
	return kread_va(ram_va + (pa - ram_pa), buf, len);
}

static uint64_t kread_u64(uint64_t va)
{
	uint64_t value = 0;

	kread_va(va, &value, sizeof(value));
	return value;
}

static uint64_t page_struct_va(uint64_t pfn)
{
	return vmemmap_va + (pfn - ram_pa / PAGE_SIZE) * layout.page_size;
}

static void kcore_init(void)
{
	Elf64_Ehdr header;

	kcore_fd = open("/proc/kcore", O_RDONLY);
	if (kcore_fd < 0 || pread(kcore_fd, &header, sizeof(header), 0) != sizeof(header))
		fatal("cannot read /proc/kcore (CONFIG_PROC_KCORE, root)");
	kcore_nr_segments = header.e_phnum;
	kcore_segments = calloc(kcore_nr_segments, sizeof(*kcore_segments));
	if (pread(kcore_fd, kcore_segments, kcore_nr_segments * sizeof(*kcore_segments), header.e_phoff) < 0)
		fatal("kcore program headers");
	/* The linear map of RAM is the largest segment with a physical address. */
	for (int i = 0; i < kcore_nr_segments; i++) {
		const Elf64_Phdr *segment = &kcore_segments[i];

		if (segment->p_type == PT_LOAD && segment->p_paddr != (uint64_t)-1 && segment->p_memsz > ram_size) {
			ram_pa = segment->p_paddr;
			ram_size = segment->p_memsz;
			ram_va = segment->p_vaddr;
		}
	}
	/* The vmemmap of that RAM: the segment without a physical address sized ram / PAGE_SIZE struct pages. */
	for (int i = 0; i < kcore_nr_segments; i++) {
		const Elf64_Phdr *segment = &kcore_segments[i];
		uint64_t want = ram_size / PAGE_SIZE * layout.page_size;

		if (segment->p_type == PT_LOAD && segment->p_paddr == (uint64_t)-1 &&
		    segment->p_memsz >= want && segment->p_memsz <= want + 2 * PAGE_SIZE)
			vmemmap_va = segment->p_vaddr;
	}
	if (!ram_size || !vmemmap_va) {
		errno = ENOENT;
		fatal("kcore shows no RAM or vmemmap segment");
	}
}

static uint64_t kallsyms_lookup(const char *name)
{
	size_t size = 0;
	char *text = read_whole_file("/proc/kallsyms", &size), *line, *end;
	size_t name_len = strlen(name);
	uint64_t addr = 0;

	if (!text)
		return 0;
	for (line = text; line < text + size; line = end + 1) {
		end = memchr(line, '\n', text + size - line);
		if (!end)
			end = text + size;
		/* "ffff800081234567 D init_task" */
		if (end - line > 19 && (size_t)(end - line - 19) == name_len && !memcmp(line + 19, name, name_len)) {
			addr = strtoull(line, NULL, 16);
			break;
		}
	}
	free(text);
	return addr;
}

/* ------------------------------------------------------------------------- */
/* Page tables of another process, read from its mm->pgd. */

static uint64_t init_task_va;
static int pgtable_levels; /* 4 or 5, found by walking our own stack */

static uint64_t task_pgd(pid_t pid)
{
	uint64_t head = init_task_va + layout.task_tasks, node = kread_u64(head);

	for (int guard = 0; node && node != head && guard < 100000; guard++) {
		uint64_t task = node - layout.task_tasks;
		int32_t task_pid = 0;

		kread_va(task + layout.task_pid, &task_pid, sizeof(task_pid));
		if (task_pid == pid) {
			uint64_t mm = kread_u64(task + layout.task_mm);

			return mm ? kread_u64(mm + layout.mm_pgd) : 0;
		}
		node = kread_u64(node);
	}
	return 0;
}

static uint64_t table_entry(uint64_t table_pa, unsigned int index)
{
	uint64_t entry = 0;

	kread_pa(table_pa + index * 8, &entry, sizeof(entry));
	return entry;
}

/*
 * The physical address of the PTE table covering va, or of the PMD block
 * (then *pmd_block holds its descriptor); 0 when no table is there.
 */
static uint64_t walk_to_pte_table(uint64_t pgd_va, int levels, uint64_t va, uint64_t *pmd_block)
{
	static const int shifts[] = { 48, 39, 30, 21 };
	uint64_t table_pa = pgd_va - ram_va + ram_pa;

	*pmd_block = 0;
	for (int level = 5 - levels; level < 4; level++) {
		unsigned int index = (va >> shifts[level]) & (level == 0 ? 15 : PTRS_PER_TABLE - 1);
		uint64_t entry = table_entry(table_pa, index);

		if (!(entry & PTE_VALID))
			return 0;
		if (!(entry & PTE_TABLE_BIT)) { /* a block */
			if (level != 3)
				return 0;
			*pmd_block = entry;
			return 0;
		}
		table_pa = entry & PTE_ADDR_MASK;
	}
	return table_pa;
}

static uint64_t pagemap_pfn_of(int pagemap_fd, uint64_t va)
{
	uint64_t entry = 0;

	if (pread(pagemap_fd, &entry, sizeof(entry), va / PAGE_SIZE * 8) != sizeof(entry))
		return 0;
	return entry & PM_PRESENT ? entry & PM_PFN_MASK : 0;
}

/* Which walk reaches our own stack page: that is the number of levels. */
static void pgtable_levels_init(void)
{
	volatile uint64_t probe = 1;
	uint64_t va = (uint64_t)&probe & ~(PAGE_SIZE - 1), pgd = task_pgd(getpid()), block;
	int pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t pfn = pagemap_pfn_of(pagemap_fd, va);

	close(pagemap_fd);
	if (!pgd || !pfn) {
		errno = ENOENT;
		fatal("cannot find our own page tables (init_task, task_struct, pagemap)");
	}
	for (int levels = 5; levels >= 4; levels--) {
		uint64_t table = walk_to_pte_table(pgd, levels, va, &block);

		if (table && ((table_entry(table, (va >> PAGE_SHIFT) & 511) & PTE_ADDR_MASK) >> PAGE_SHIFT) == pfn) {
			pgtable_levels = levels;
			return;
		}
	}
	errno = ENOENT;
	fatal("the page-table walk does not reach our own stack");
}

/* ------------------------------------------------------------------------- */
/* The machine set-up the ops rely on: THP sizes, swap, sysctls. */

#define THP_DIR "/sys/kernel/mm/transparent_hugepage"

/* Each anonymous THP size: PMD at madvise (khugepaged stays idle), the rest never. */
static void thp_sizes_set(int highest_order)
{
	char path[128];

	for (int order = 2; order <= PMD_ORDER; order++) {
		const char *mode = order <= highest_order ? "always" : order == PMD_ORDER ? "madvise" : "never";

		snprintf(path, sizeof(path), THP_DIR "/hugepages-%lukB/enabled", (PAGE_SIZE << order) / 1024);
		write_file(path, mode);
	}
}

/* The PMD size alone: "always" for a read of order 9, back to "madvise" after it. */
static void thp_pmd_set(const char *mode)
{
	char path[128];

	snprintf(path, sizeof(path), THP_DIR "/hugepages-%lukB/enabled", (PAGE_SIZE << PMD_ORDER) / 1024);
	write_file(path, mode);
}

static int swap_is_on(void)
{
	size_t size = 0;
	char *text = read_whole_file("/proc/swaps", &size);
	int on = text && memchr(text, '\n', size) && (char *)memchr(text, '\n', size) + 1 < text + size;

	free(text);
	return on;
}

/* A zram swap device of 256 MiB, with the swap header written by hand (no mkswap in the initramfs). */
static int zram_swap_setup(void)
{
	const uint64_t size = 256UL << 20;
	char header[PAGE_SIZE];
	uint32_t *fields = (uint32_t *)(header + 1024);
	int fd;

	if (swap_is_on())
		return 0;
	if (write_file("/sys/block/zram0/disksize", "268435456") < 0)
		return -1;
	fd = open("/dev/zram0", O_WRONLY);
	if (fd < 0)
		return -1;
	memset(header, 0, sizeof(header));
	fields[0] = 1;				  /* version */
	fields[1] = size / PAGE_SIZE - 1;	  /* last_page */
	memcpy(header + PAGE_SIZE - 10, "SWAPSPACE2", 10);
	if (pwrite(fd, header, sizeof(header), 0) != sizeof(header)) {
		close(fd);
		return -1;
	}
	close(fd);
	return syscall(SYS_swapon, "/dev/zram0", 0);
}

/*
 * Regular files and shmem: nothing is written back but by `sync` and reclaim (no periodic
 * flusher, nothing ever expires or crosses a dirty threshold in a script), and shmem folios
 * are order 0 (a memfd fault may allocate only the PMD size, under the top-level
 * shmem_enabled: shmem_huge_global_enabled; the model's page cache stops at order 8).
 */
static void file_setup(void)
{
	char path[128];

	write_file("/proc/sys/vm/dirty_writeback_centisecs", "0");
	write_file("/proc/sys/vm/dirty_expire_centisecs", "2000000000");
	write_file("/proc/sys/vm/dirty_background_ratio", "90");
	write_file("/proc/sys/vm/dirty_ratio", "95");
	write_file(THP_DIR "/shmem_enabled", "never");
	for (int order = 2; order <= PMD_ORDER; order++) {
		snprintf(path, sizeof(path), THP_DIR "/hugepages-%lukB/shmem_enabled", (PAGE_SIZE << order) / 1024);
		write_file(path, "never");
	}
}

static void machine_setup(void)
{
	write_file("/proc/sys/vm/overcommit_memory", "1");
	write_file("/proc/sys/vm/mmap_min_addr", "0");
	write_file("/proc/sys/kernel/kptr_restrict", "0");
	/*
	 * khugepaged scans an mm as soon as a PMD fault registers it and may collapse a
	 * range a script built: it may collapse only a fully mapped, exclusive, unswapped
	 * range here, and the runtime reports a script during which it collapsed anything.
	 */
	write_file(THP_DIR "/khugepaged/scan_sleep_millisecs", "86400000");
	write_file(THP_DIR "/khugepaged/alloc_sleep_millisecs", "86400000");
	write_file(THP_DIR "/khugepaged/max_ptes_none", "0");
	write_file(THP_DIR "/khugepaged/max_ptes_swap", "0");
	write_file(THP_DIR "/khugepaged/max_ptes_shared", "0");
	/* (model) no fault-around: a read fault of a file maps its page or its whole folio */
	write_file("/sys/kernel/debug/fault_around_bytes", "4096");
	thp_sizes_set(0);
	file_setup();
	if (zram_swap_setup())
		out("X-warning swap: %s\n", strerror(errno));
	layout_init();
	kcore_init();
	init_task_va = kallsyms_lookup("init_task");
	if (!init_task_va) {
		errno = ENOENT;
		fatal("no init_task in /proc/kallsyms");
	}
	pgtable_levels_init();
}

/* ------------------------------------------------------------------------- */
/* Workers: one process per script process, each running ops in its own mm. */

struct worker {
	pid_t pid;		/* 0: not live */
	int command_fd;		/* the controller writes op numbers here */
	int pagemap_fd;		/* the controller's view of its mm */
	uint64_t pgd;
};

static struct worker workers[MAX_PROCESSES];
static int commands[MAX_PROCESSES][2], replies[2];
static int pin_rings[MAX_PINS]; /* io_uring fds holding each pin, -1 once unpinned */
static int nr_pins;
#define MAX_FILES 16
static int file_fds[MAX_FILES] = { [0 ... MAX_FILES - 1] = -1 }; /* the controller's memfd of each shmem file Fn, -1 if not made */
static pid_t controller_pid;    /* a worker reopens a file through /proc/<controller>/fd/N */
static const char *file_dir = "."; /* where regular files are made: the guest's ext4 disk as /init */

static sigjmp_buf fault_jump;
static volatile sig_atomic_t fault_armed;
static volatile sig_atomic_t fault_signo;

static void on_fault(int signo)
{
	fault_signo = signo;
	if (fault_armed)
		siglongjmp(fault_jump, 1);
	signal(signo, SIG_DFL);
	raise(signo);
}

/*
 * A user store of value at addr: EFAULT when the kernel sends SIGSEGV; RF_EUFFD for
 * SIGBUS, which an anonymous mapping gives only for a write userfaultfd trapped
 * (UFFD_FEATURE_SIGBUS: handle_userfault returns VM_FAULT_SIGBUS).
 */
static int user_store(uint64_t addr, uint64_t value)
{
	if (sigsetjmp(fault_jump, 1)) {
		fault_armed = 0;
		return fault_signo == SIGBUS ? RF_EUFFD : EFAULT;
	}
	fault_armed = 1;
	*(volatile uint64_t *)addr = value;
	fault_armed = 0;
	return 0;
}

/*
 * A write fault that keeps the word: MADV_POPULATE_WRITE takes the write fault
 * (handle_mm_fault with FAULT_FLAG_WRITE) without touching the data, then a
 * store of the word read back sets the access and dirty bits as the user
 * access after a fault does. A load first would take a read fault instead
 * (a zero page, a swap-in by read), and an atomic add of 0 is not reliably a
 * write access. No VMA (ENOMEM) or no write permission (EINVAL, EFAULT) is
 * the SIGSEGV a user write would get: EFAULT. A page already present takes
 * the store alone: MADV_POPULATE_WRITE's GUP (FOLL_TOUCH) would also mark a
 * folio dirty behind a clean writable entry (after MADV_FREE), which a user
 * store does not; its word is read from the frame through /proc/kcore, as
 * a load would set the access bit (of a whole contpte block) the user write
 * never asked for, and /proc/self/mem's GUP (FOLL_TOUCH) makes a PMD young.
 * (The pagemap is opened each time: a forked worker must not read its
 * parent's through an inherited descriptor.)
 */
static int user_write_fault(uint64_t addr);

/* Whether this process maps addr present with the uffd-wp bit (its own pagemap). */
static int uffd_wp_present(uint64_t addr)
{
	int self_pagemap = open("/proc/self/pagemap", O_RDONLY);
	uint64_t entry = 0;
	int found = self_pagemap >= 0 &&
		    pread(self_pagemap, &entry, sizeof(entry), addr / PAGE_SIZE * 8) == sizeof(entry) &&
		    (entry & PM_PRESENT) && (entry & PM_UFFD_WP);

	if (self_pagemap >= 0)
		close(self_pagemap);
	return found;
}

/*
 * userfaultfd: each `uffd` op opens its own context (UFFDIO_API with
 * UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_SIGBUS,
 * no UFFD_FEATURE_EVENT_FORK: shmem's uffd-wp needs PTE markers) and
 * registers its range for write-protect; the file stays open so the registration
 * lives. `wp` goes through a context of this process's own mm (mwriteprotect_range
 * acts on ctx->mm and checks only userfaultfd_wp(vma)), opened once per process:
 * a forked worker's inherited files name its parent's mm.
 */
#define MAX_UFFDS 64
static int uffd_fds[MAX_UFFDS];
static int nr_uffds;
static int uffd_wp_fd = -1;
static pid_t uffd_wp_owner;

static int uffd_open(int *fd_out)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
					      UFFD_FEATURE_SIGBUS };
	int fd = syscall(__NR_userfaultfd, O_CLOEXEC);

	if (fd < 0)
		return errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int error = errno;

		close(fd);
		return error;
	}
	*fd_out = fd;
	return 0;
}

static int uffd_register(uint64_t addr, uint64_t length)
{
	struct uffdio_register reg = { .range = { .start = addr, .len = length },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	int fd, error;

	if (nr_uffds == MAX_UFFDS)
		return EMFILE;
	error = uffd_open(&fd);
	if (error)
		return error;
	if (ioctl(fd, UFFDIO_REGISTER, &reg)) {
		error = errno;
		close(fd);
		return error;
	}
	uffd_fds[nr_uffds++] = fd;
	return 0;
}

static int uffd_writeprotect(uint64_t addr, uint64_t length, int on)
{
	struct uffdio_writeprotect wp = { .range = { .start = addr, .len = length },
					  .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };

	if (uffd_wp_owner != getpid()) {
		int error = uffd_open(&uffd_wp_fd);

		if (error)
			return error;
		uffd_wp_owner = getpid();
	}
	return ioctl(uffd_wp_fd, UFFDIO_WRITEPROTECT, &wp) ? errno : 0;
}

static int user_write_fault(uint64_t addr)
{
	int self_pagemap = open("/proc/self/pagemap", O_RDONLY);
	uint64_t entry = 0;
	int present = self_pagemap >= 0 &&
		      pread(self_pagemap, &entry, sizeof(entry), addr / PAGE_SIZE * 8) == sizeof(entry) &&
		      (entry & PM_PRESENT);

	if (self_pagemap >= 0)
		close(self_pagemap);
	if (present) {
		uint64_t word = 0;

		if (kread_pa((entry & PM_PFN_MASK) * PAGE_SIZE, &word, sizeof(word)))
			return user_store(addr, word);
	}
	if (madvise((void *)addr, PAGE_SIZE, MADV_POPULATE_WRITE)) {
		int error = errno;

		/* The fault's SIGBUS is EFAULT to MADV_POPULATE_WRITE: a write userfaultfd trapped
		 * after the fault mapped the page (a uffd-wp marker's or swap entry's) with the bit. */
		if (error == EFAULT && uffd_wp_present(addr))
			return RF_EUFFD;
		return error == ENOMEM || error == EFAULT || error == EINVAL ? EFAULT : error;
	}
	return user_store(addr, *(volatile uint64_t *)addr);
}

static int user_load(uint64_t addr)
{
	if (sigsetjmp(fault_jump, 1)) {
		fault_armed = 0;
		return EFAULT;
	}
	fault_armed = 1;
	(void)*(volatile uint64_t *)addr;
	fault_armed = 0;
	return 0;
}

static int pending_ring = -1; /* a pin's ring, open until the controller has its own copy */

/*
 * A long-term read-write pin of nr_pages pages: one io_uring buffer per page
 * (one page per buffer keeps io_uring from coalescing a large folio's pins),
 * each pinned by pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM). The
 * controller takes a copy of the ring's fd (pidfd_getfd: io_uring fds cannot
 * pass through SCM_RIGHTS), so the pin outlives this process as the spec's does.
 */
static int pin_pages(uint64_t addr, uint64_t nr_pages, int *ring_fd)
{
	struct io_uring_params params;
	struct iovec *iovecs = calloc(nr_pages ? nr_pages : 1, sizeof(*iovecs));
	int ring, result = 0;

	memset(&params, 0, sizeof(params));
	ring = syscall(__NR_io_uring_setup, 1, &params);
	if (ring < 0 || !iovecs) {
		free(iovecs);
		return errno;
	}
	for (uint64_t i = 0; i < nr_pages; i++) {
		iovecs[i].iov_base = (void *)(addr + i * PAGE_SIZE);
		iovecs[i].iov_len = PAGE_SIZE;
	}
	if (syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS, iovecs, (unsigned int)nr_pages) < 0)
		result = errno;
	free(iovecs);
	if (result) {
		close(ring);
		return result;
	}
	pending_ring = ring;
	*ring_fd = ring;
	return 0;
}

static int worker_loop(int self);

/*
 * split_pmd P va: split the PMD mapping at va and nothing else. A VMA split inside the PMD's
 * range splits the mapping (__split_vma: vma_adjust_trans_huge, split_huge_pmd_address, no
 * freeze), so MADV_DONTFORK of the PMD's first page and MADV_DOFORK of it again (its flags
 * back as they were, the pieces merge again) leave the split mapping and the VMA as before.
 * EFAULT without a VMA at va (MADV_NORMAL changes nothing where there is one), ENOENT
 * without a PMD block there (the controller read the page table: pmd_block).
 */
static int split_pmd_mapping(uint64_t va, int pmd_block)
{
	void *haddr = (void *)(va & ~(PMD_SIZE - 1));

	if (madvise((void *)(va & ~(PAGE_SIZE - 1)), PAGE_SIZE, MADV_NORMAL))
		return EFAULT;
	if (!pmd_block)
		return ENOENT;
	if (madvise(haddr, PAGE_SIZE, MADV_DONTFORK) || madvise(haddr, PAGE_SIZE, MADV_DOFORK))
		return errno;
	return 0;
}

/* fork: the child becomes worker `child`, the parent reports the child's pid. */
static int worker_fork(int child, pid_t *child_pid)
{
	pid_t pid = fork();

	if (pid < 0)
		return errno;
	if (pid == 0)
		_exit(worker_loop(child));
	*child_pid = pid;
	return 0;
}

struct reply {
	int result;
	pid_t child_pid; /* fork */
	int ring_fd;	 /* pin */
};

/* Do one op in this worker's mm; returns 0 or an errno. */
static int rf_do_op(const struct rf_op *op, struct reply *reply)
{
	int prot = op->arg & 1 ? PROT_READ | PROT_WRITE : PROT_READ; /* mmap, mprotect: the rw bit */
	void *addr = (void *)op->addr;
	void *mapped;

	switch (op->kind) {
	case RF_MMAP:
		if (op->arg >> 2 & 0x3fff) { /* a file: reopen the controller's memfd */
			char path[64];
			int fd;

			snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)controller_pid, op->arg >> 16);
			fd = open(path, O_RDWR);
			if (fd < 0)
				return errno;
			mapped = mmap(addr, op->length, prot, (op->arg & 2 ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED_NOREPLACE,
				      fd, (off_t)op->value);
			close(fd);
		} else
			mapped = mmap(addr, op->length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (mapped == MAP_FAILED)
			return errno;
		if (mapped != addr) { /* a kernel without MAP_FIXED_NOREPLACE */
			munmap(mapped, op->length);
			return EEXIST;
		}
		return 0;
	case RF_MUNMAP:
		return munmap(addr, op->length) ? errno : 0;
	case RF_DONTNEED:
		return madvise(addr, op->length, MADV_DONTNEED) ? errno : 0;
	case RF_FREE:
		return madvise(addr, op->length, MADV_FREE) ? errno : 0;
	case RF_MPROTECT:
		return mprotect(addr, op->length, prot) ? errno : 0;
	case RF_FAULT: {
		int result;

		if (op->arg < 0 || op->arg > PMD_ORDER)
			return EINVAL;
		thp_sizes_set(op->arg);
		result = user_write_fault(op->addr);
		thp_sizes_set(0);
		return result;
	}
	case RF_WRITE:
		return user_store(op->addr, op->value);
	case RF_READ: {
		int result;

		/* order=9: the PMD size alone, so a read fault may map the huge zero folio
		 * (do_huge_pmd_anonymous_page); a read fault takes no mTHP size, and the
		 * model's swap-in by read is order 0, so the other sizes stay never. */
		if (op->arg < 0 || op->arg > PMD_ORDER)
			return EINVAL;
		if (op->arg == PMD_ORDER)
			thp_pmd_set("always");
		result = user_load(op->addr);
		if (op->arg == PMD_ORDER)
			thp_pmd_set("madvise");
		return result;
	}
	case RF_PIN:
		return pin_pages(op->addr, op->length / PAGE_SIZE, &reply->ring_fd);
	case RF_FORK:
		return worker_fork(op->arg, &reply->child_pid);
	case RF_RECLAIM:
		return madvise(addr, op->length, MADV_PAGEOUT) ? errno : 0;
	case RF_SPLIT_PMD:
		return split_pmd_mapping(op->addr, op->arg);
	case RF_UFFD:
		return uffd_register(op->addr, op->length);
	case RF_WP:
		return uffd_writeprotect(op->addr, op->length, op->arg);
	default:
		return EINVAL;
	}
}


static int worker_loop(int self)
{
	struct sigaction action;

	memset(&action, 0, sizeof(action));
	action.sa_handler = on_fault;
	sigaction(SIGSEGV, &action, NULL);
	sigaction(SIGBUS, &action, NULL);
	for (;;) {
		struct rf_op op;
		struct reply reply = { 0, 0, -1 };

		if (read(commands[self][0], &op, sizeof(op)) != sizeof(op))
			return 1;
		if (pending_ring >= 0) {
			close(pending_ring);
			pending_ring = -1;
		}
		if (op.kind == RF_EXIT)
			return 0;
		reply.result = rf_do_op(&op, &reply);
		if (write(replies[1], &reply, sizeof(reply)) != sizeof(reply))
			return 1;
	}
}

/* ------------------------------------------------------------------------- */
/* The controller: start workers, send ops, observe. */

struct range {
	uint64_t start, end;
};

static struct range ranges[MAX_RANGES]; /* every page any mmap of the script named */
static int nr_ranges;
static uint64_t *last_line_hash[MAX_PROCESSES]; /* per observed page, FNV-1a of its last line */
static uint64_t nr_observed_pages;

static void ranges_add(uint64_t start, uint64_t end)
{
	for (int i = 0; i < nr_ranges; i++)
		if (ranges[i].start == start && ranges[i].end == end)
			return;
	if (nr_ranges < MAX_RANGES)
		ranges[nr_ranges++] = (struct range){ start, end };
}

static uint64_t fnv1a(const char *text)
{
	uint64_t hash = 1469598103934665603UL;

	while (*text)
		hash = (hash ^ (unsigned char)*text++) * 1099511628211UL;
	return hash;
}

static void lru_drain(void)
{
	static void *dummy;

	/* MADV_COLD calls lru_add_drain(): every per-CPU folio batch of this (only) CPU is emptied. */
	if (!dummy)
		dummy = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(dummy, PAGE_SIZE, MADV_COLD);
}

/*
 * One folio as the observer reads it: its struct pages and /proc/kpageflags
 * words in one read each, so a page costs one read more (its data word).
 */
struct folio_facts {
	uint64_t head;
	int order;
	int32_t refcount, pincount, entire_mapcount;
	int shared;
	unsigned char *pages;	/* the folio's struct pages (at least 4: struct folio spans them) */
	uint64_t *kpageflags;	/* one word per page */
};

#define FOLIO_CACHE_SIZE 8
static int kpageflags_fd = -1;
static struct folio_facts folio_cache[FOLIO_CACHE_SIZE]; /* the folios read in this observation */
static int folio_cache_next;

static void kpageflags_read(uint64_t first_pfn, uint64_t *flags, size_t nr_pages)
{
	memset(flags, 0, nr_pages * sizeof(*flags));
	if (kpageflags_fd < 0)
		kpageflags_fd = open("/proc/kpageflags", O_RDONLY);
	pread(kpageflags_fd, flags, nr_pages * sizeof(*flags), first_pfn * 8);
}

static void folio_cache_clear(void)
{
	for (int i = 0; i < FOLIO_CACHE_SIZE; i++)
		folio_cache[i].head = 0;
}

static uint32_t read_u32(const unsigned char *bytes)
{
	uint32_t value;

	memcpy(&value, bytes, sizeof(value));
	return value;
}

/*
 * The folio of pfn: its head and order from /proc/kpageflags (HEAD, TAIL),
 * its refcount, _entire_mapcount, _pincount and MM_ID shared bit from struct folio.
 */
static const struct folio_facts *read_folio(uint64_t pfn)
{
	static uint64_t window[1 << PMD_ORDER];
	uint64_t first = pfn >= (1 << PMD_ORDER) - 1 ? pfn - ((1 << PMD_ORDER) - 1) : 0, head = pfn, mm_ids;
	struct folio_facts *facts;
	uint64_t nr_pages, nr_structs;
	int order = 0;

	for (int i = 0; i < FOLIO_CACHE_SIZE; i++) {
		facts = &folio_cache[i];
		if (facts->head && pfn >= facts->head && pfn < facts->head + (1UL << facts->order))
			return facts;
	}
	kpageflags_read(first, window, pfn - first + 1);
	while (head > first && ((window[head - first] >> KPF_TAIL) & 1))
		head--;
	if ((window[head - first] >> KPF_HEAD) & 1) {
		uint64_t nr_tails = 0;

		kpageflags_read(head + 1, window, (1 << PMD_ORDER) - 1);
		while (nr_tails < (1 << PMD_ORDER) - 1 && ((window[nr_tails] >> KPF_TAIL) & 1))
			nr_tails++;
		while ((2UL << order) <= nr_tails + 1)
			order++;
	} else {
		head = pfn;
	}
	facts = &folio_cache[folio_cache_next];
	folio_cache_next = (folio_cache_next + 1) % FOLIO_CACHE_SIZE;
	nr_pages = 1UL << order;
	nr_structs = nr_pages < 4 ? 4 : nr_pages;
	free(facts->pages);
	free(facts->kpageflags);
	facts->pages = calloc(nr_structs, layout.page_size);
	facts->kpageflags = calloc(nr_pages, sizeof(uint64_t));
	if (!facts->pages || !facts->kpageflags)
		fatal("folio buffers");
	kread_va(page_struct_va(head), facts->pages, (order ? nr_structs : 1) * layout.page_size);
	kpageflags_read(head, facts->kpageflags, nr_pages);
	facts->head = head;
	facts->order = order;
	facts->refcount = read_u32(facts->pages + layout.page_refcount);
	facts->pincount = order ? read_u32(facts->pages + layout.folio_pincount) : 0;
	facts->entire_mapcount = order ? (int32_t)read_u32(facts->pages + layout.folio_entire_mapcount) + 1 : 0;
	memcpy(&mm_ids, facts->pages + layout.folio_mm_ids, sizeof(mm_ids));
	facts->shared = order ? (mm_ids >> layout.mm_ids_shared_bit) & 1 : 0;
	return facts;
}

/* pte_dirty/pte_young as ptep_get() shows them: a contpte block gathers its 16 entries' A/D. */
static uint64_t contpte_gather(const uint64_t *table, unsigned int index)
{
	uint64_t entry = table[index];

	if (!(entry & PTE_CONT))
		return entry;
	for (unsigned int i = index & ~(CONT_PTES - 1); i < (index & ~(CONT_PTES - 1)) + CONT_PTES; i++) {
		if (table[i] & PTE_AF)
			entry |= PTE_AF;
		if ((table[i] & PTE_SW_DIRTY) || ((table[i] & PTE_DBM) && !(table[i] & PTE_RDONLY)))
			entry |= PTE_SW_DIRTY;
	}
	return entry;
}

static void format_present(char *line, size_t size, uint64_t pfn, uint64_t entry, int pmd, int uffd_wp)
{
	const struct folio_facts *folio = read_folio(pfn);
	uint64_t index = pfn - folio->head, exclusive_index = pmd ? 0 : index, flags, head_page_flags, value = 0;
	uint64_t head_flags = folio->kpageflags[0];
	/* lazyfree: anon without PG_swapbacked (folio_test_lazyfree); PG_dirty of the folio. */
	int lazyfree = ((head_flags >> KPF_ANON) & 1) && !((head_flags >> KPF_SWAPBACKED) & 1);
	const unsigned char *page = folio->pages + index * layout.page_size;
	int32_t mapcount = (int32_t)read_u32(page + layout.page_mapcount) + 1;
	int dirty = (entry & PTE_SW_DIRTY) || ((entry & PTE_DBM) && !(entry & PTE_RDONLY));

	/*
	 * PageAnonExclusive of the page; of the head for a PMD mapping (SPEC §4's `exclusive`).
	 * Only of an anon folio: on a page-cache page the bit is PG_mappedtodisk.
	 */
	memcpy(&flags, folio->pages + exclusive_index * layout.page_size + layout.page_flags, sizeof(flags));
	memcpy(&head_page_flags, folio->pages + layout.page_flags, sizeof(head_page_flags));
	kread_pa(pfn * PAGE_SIZE, &value, sizeof(value));
	snprintf(line, size, "p %lx %lx %d %d %d %d %d %d %d %d %d %d %d %d %lx %d %d %d %d %d",
		 (unsigned long)pfn, (unsigned long)folio->head, folio->order, pmd,
		 !pmd && (entry & PTE_CONT) ? 1 : 0, dirty, entry & PTE_AF ? 1 : 0, entry & PTE_DBM ? 1 : 0,
		 (int)((head_flags >> KPF_ANON) & (flags >> layout.pg_anon_exclusive) & 1),
		 mapcount + folio->entire_mapcount,
		 folio->refcount, folio->pincount, folio->shared, (int)((folio->kpageflags[index] >> KPF_ZERO) & 1),
		 (unsigned long)value, lazyfree, (int)((head_flags >> KPF_DIRTY) & 1),
		 !((head_flags >> KPF_ANON) & 1), /* a page-cache folio: folio->mapping not anon */
		 uffd_wp, (int)((head_page_flags >> layout.pg_private) & 1));
}

/* The line describing page va, from its pagemap entry and the page tables. */
static void observe_page(uint64_t va, uint64_t pagemap_entry, uint64_t *table, uint64_t table_pa,
			 uint64_t pmd_block, char *line, size_t size)
{
	if (pagemap_entry & PM_PRESENT) {
		uint64_t pfn = pagemap_entry & PM_PFN_MASK;

		if (pmd_block) {
			format_present(line, size, pfn, pmd_block, 1, !!(pagemap_entry & PM_UFFD_WP));
		} else if (table_pa) {
			format_present(line, size, pfn, contpte_gather(table, (va >> PAGE_SHIFT) & 511), 0,
				       !!(pagemap_entry & PM_UFFD_WP));
		} else {
			snprintf(line, size, "? present without a table");
		}
	} else if (pagemap_entry & PM_SWAP) {
		uint64_t entry = table_pa ? table[(va >> PAGE_SHIFT) & 511] : 0;

		snprintf(line, size, "s %lx %d %d %d", (unsigned long)((pagemap_entry & PM_PFN_MASK) >> 5),
			 entry & PTE_SWP_EXCLUSIVE ? 1 : 0, !!(pagemap_entry & PM_UFFD_WP),
			 (int)(pagemap_entry & 0x1f));
	} else {
		snprintf(line, size, "n");
	}
}

static uint64_t none_hash; /* fnv1a("n"): the line of a page with nothing mapped */

static void observe_worker(int n)
{
	static uint64_t pagemap_entries[PTRS_PER_TABLE];
	static uint64_t table[PTRS_PER_TABLE];
	struct worker *worker = &workers[n];
	uint64_t index = 0;
	char line[256];

	for (int r = 0; r < nr_ranges; r++) {
		for (uint64_t chunk = ranges[r].start; chunk < ranges[r].end;) {
			uint64_t chunk_end = (chunk | (PMD_SIZE - 1)) + 1, pmd_block = 0, table_pa;
			uint64_t nr_pages;
			int any = 0;

			if (chunk_end > ranges[r].end)
				chunk_end = ranges[r].end;
			nr_pages = (chunk_end - chunk) / PAGE_SIZE;

			memset(pagemap_entries, 0, sizeof(pagemap_entries));
			pread(worker->pagemap_fd, pagemap_entries, nr_pages * 8, chunk / PAGE_SIZE * 8);
			for (uint64_t i = 0; i < nr_pages && !any; i++)
				any = pagemap_entries[i] != 0;
			table_pa = any ? walk_to_pte_table(worker->pgd, pgtable_levels, chunk, &pmd_block) : 0;
			if (table_pa)
				kread_pa(table_pa, table, sizeof(table));
			for (uint64_t i = 0; i < nr_pages; i++, index++) {
				uint64_t va = chunk + i * PAGE_SIZE, hash;

				if (!pagemap_entries[i] && last_line_hash[n][index] == none_hash)
					continue; /* still none: the common case of a large mapping */
				observe_page(va, pagemap_entries[i], table, table_pa, pmd_block, line, sizeof(line));
				hash = fnv1a(line);
				if (last_line_hash[n][index] != hash) {
					last_line_hash[n][index] = hash;
					out("P %d %lx %s\n", n, (unsigned long)va, line);
				}
			}
			chunk = chunk_end;
		}
	}
}

static double observe_ms;

static double now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec * 1e3 + now.tv_nsec / 1e6;
}

static void observe(int op_index)
{
	double started = now_ms();

	lru_drain();
	folio_cache_clear();
	for (int n = 0; n < MAX_PROCESSES; n++)
		if (workers[n].pid)
			observe_worker(n);
	out("E %d\n", op_index);
	out_flush();
	observe_ms += now_ms() - started;
}

static void worker_started(int n, pid_t pid)
{
	char path[64];

	workers[n].pid = pid;
	workers[n].command_fd = commands[n][1];
	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	workers[n].pagemap_fd = open(path, O_RDONLY);
	workers[n].pgd = task_pgd(pid);
	last_line_hash[n] = malloc((nr_observed_pages ? nr_observed_pages : 1) * sizeof(uint64_t));
	if (workers[n].pagemap_fd < 0 || !workers[n].pgd || !last_line_hash[n])
		fatal("cannot observe a new worker");
	for (uint64_t i = 0; i < nr_observed_pages; i++) /* a new process's pages start as none */
		last_line_hash[n][i] = none_hash;
	out("N %d %d\n", n, pid);
}

/* Wait until worker n has exited (its mm torn down): a pidfd works for grandchildren too. */
static void worker_reap(int n)
{
	int pidfd = syscall(SYS_pidfd_open, workers[n].pid, 0);

	close(workers[n].pagemap_fd);
	if (pidfd >= 0) {
		struct pollfd poll_fd = { .fd = pidfd, .events = POLLIN };

		while (poll(&poll_fd, 1, -1) < 0 && errno == EINTR)
			;
		close(pidfd);
	}
	waitpid(workers[n].pid, NULL, WNOHANG);
	while (waitpid(-1, NULL, WNOHANG) > 0) /* orphans reparented to us */
		;
	free(last_line_hash[n]);
	last_line_hash[n] = NULL;
	workers[n].pid = 0;
	out("G %d\n", n);
}

#define REPLY_TIMEOUT_MS 60000

/* Send op to its worker and wait for the reply; -1 if the worker died or hung instead. */
static int send_op(const struct rf_op *op, struct reply *reply)
{
	int pidfd = syscall(SYS_pidfd_open, workers[op->process].pid, 0), ready;
	struct pollfd poll_fds[2] = { { .fd = replies[0], .events = POLLIN }, { .fd = pidfd, .events = POLLIN } };

	if (pidfd < 0 || write(workers[op->process].command_fd, op, sizeof(*op)) != sizeof(*op))
		return -1;
	do
		ready = poll(poll_fds, 2, REPLY_TIMEOUT_MS);
	while (ready < 0 && errno == EINTR);
	close(pidfd);
	if (ready <= 0 || !(poll_fds[0].revents & POLLIN))
		return -1;
	return read(replies[0], reply, sizeof(*reply)) == sizeof(*reply) ? 0 : -1;
}

/*
 * The virtual ranges where the folio mapped at va in worker n is mapped in n:
 * MADV_PAGEOUT of exactly those reclaims that folio and no neighbour.
 */
static int reclaim_ranges(int n, uint64_t va, struct range *out_ranges, int max_ranges)
{
	const struct folio_facts *folio;
	uint64_t entry = 0, pfn, start, nr_pages, head;
	int count = 0;

	pread(workers[n].pagemap_fd, &entry, sizeof(entry), va / PAGE_SIZE * 8);
	if (!(entry & PM_PRESENT))
		return 0;
	pfn = entry & PM_PFN_MASK;
	folio_cache_clear();
	folio = read_folio(pfn);
	head = folio->head;
	nr_pages = 1UL << folio->order;
	start = va - (pfn - head) * PAGE_SIZE;
	for (uint64_t i = 0; i < nr_pages && count < max_ranges; i++) {
		uint64_t page_va = start + i * PAGE_SIZE, page_entry = 0;
		int mine;

		pread(workers[n].pagemap_fd, &page_entry, sizeof(page_entry), page_va / PAGE_SIZE * 8);
		mine = (page_entry & PM_PRESENT) && (page_entry & PM_PFN_MASK) == head + i;
		if (!mine)
			continue;
		if (count && out_ranges[count - 1].end == page_va)
			out_ranges[count - 1].end += PAGE_SIZE;
		else
			out_ranges[count++] = (struct range){ page_va, page_va + PAGE_SIZE };
	}
	return count;
}

/* split P va order=K through debugfs split_huge_pages: "pid,0xstart,0xend,order". */
static int split_folio_at(int n, uint64_t va, int order)
{
	char command[128];

	snprintf(command, sizeof(command), "%d,0x%lx,0x%lx,%d", workers[n].pid, (unsigned long)va,
		 (unsigned long)(va + PAGE_SIZE), order);
	return -write_file("/sys/kernel/debug/split_huge_pages", command);
}

/*
 * A regular file Fn in file_dir, unlinked at once: the controller's descriptor keeps it (the
 * workers reopen it through /proc/<controller>/fd/N), and its page cache goes, unwritten,
 * when the script's end closes it.
 */
static int regular_file_create(int id)
{
	char path[512];
	int fd;

	if (!file_dir) {
		errno = ENODEV;
		return -1;
	}
	snprintf(path, sizeof(path), "%s/rmapfuzz-F%d", file_dir, id);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd >= 0)
		unlink(path);
	return fd;
}

static int run_op(const struct rf_op *op)
{
	struct reply reply = { 0, 0, -1 };
	struct rf_op sent = *op;

	switch (op->kind) {
	case RF_FILE: /* value 0: a shmem file, 1: a regular one (O_CREAT | O_EXCL: EEXIST if made) */
		if (op->arg < 0 || op->arg >= MAX_FILES)
			return EINVAL;
		if (file_fds[op->arg] >= 0)
			return EEXIST;
		file_fds[op->arg] = op->value ? regular_file_create(op->arg) : syscall(SYS_memfd_create, "rmapfuzz", 0);
		if (file_fds[op->arg] < 0)
			return errno;
		return ftruncate(file_fds[op->arg], (off_t)op->length) ? errno : 0;
	case RF_SYNC:
		if (op->arg < 0 || op->arg >= MAX_FILES || file_fds[op->arg] < 0)
			return EBADF;
		return fsync(file_fds[op->arg]) ? errno : 0;
	case RF_MMAP: {
		int file = (op->arg >> 2 & 0x3fff) - 1;

		if (file < 0)
			break;
		if (file >= MAX_FILES || file_fds[file] < 0)
			return EBADF;
		sent.arg = (op->arg & 0xffff) | file_fds[file] << 16;
		break;
	}
	case RF_UNPIN:
		if (op->arg < 0 || op->arg >= nr_pins || pin_rings[op->arg] < 0)
			return EINVAL;
		reply.result = syscall(__NR_io_uring_register, pin_rings[op->arg], IORING_UNREGISTER_BUFFERS, NULL, 0)
				       ? errno : 0;
		close(pin_rings[op->arg]);
		pin_rings[op->arg] = -1;
		return reply.result;
	case RF_EXIT:
		if (write(workers[op->process].command_fd, op, sizeof(*op)) != sizeof(*op))
			fatal("exit command");
		worker_reap(op->process);
		return 0;
	case RF_SPLIT:
		lru_drain(); /* a folio in a per-CPU batch holds a reference the split refuses */
		return split_folio_at(op->process, op->addr, op->arg);
	case RF_SPLIT_PMD: {
		uint64_t pmd_block = 0;

		walk_to_pte_table(workers[op->process].pgd, pgtable_levels, op->addr, &pmd_block);
		sent.arg = pmd_block != 0;
		break;
	}
	case RF_RECLAIM: {
		struct range folio_ranges[64];
		int count = reclaim_ranges(op->process, op->addr, folio_ranges, 64), result = 0;

		if (!count)
			return ENOENT;
		for (int i = 0; i < count; i++) {
			sent.addr = folio_ranges[i].start;
			sent.length = folio_ranges[i].end - folio_ranges[i].start;
			if (send_op(&sent, &reply))
				return -1;
			if (reply.result && !result)
				result = reply.result;
		}
		return result;
	}
	default:
		break;
	}
	if (send_op(&sent, &reply))
		return -1;
	if (op->kind == RF_FORK && !reply.result)
		worker_started(op->arg, reply.child_pid);
	if (op->kind == RF_PIN && !reply.result) {
		int pidfd = syscall(SYS_pidfd_open, workers[op->process].pid, 0);
		int ring = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, reply.ring_fd, 0);

		if (ring < 0 || nr_pins >= MAX_PINS)
			fatal("pin ring (pidfd_getfd)");
		close(pidfd);
		pin_rings[nr_pins++] = ring;
	}
	return reply.result;
}

static long khugepaged_pages_collapsed(void)
{
	size_t size = 0;
	char *text = read_whole_file(THP_DIR "/khugepaged/pages_collapsed", &size);
	long pages = text ? strtol(text, NULL, 10) : -1;

	free(text);
	return pages;
}

static void run_script(const char *name, const struct rf_op *ops, int nr_ops)
{
	double started = now_ms();
	long collapsed;
	pid_t pid;

	out("S %s\n", name);
	nr_ranges = 0;
	nr_pins = 0;
	for (int i = 0; i < MAX_FILES; i++) {
		if (file_fds[i] >= 0)
			close(file_fds[i]);
		file_fds[i] = -1;
	}
	controller_pid = getpid();
	observe_ms = 0;
	none_hash = fnv1a("n");
	for (int i = 0; i < nr_ops; i++)
		if (ops[i].kind == RF_MMAP)
			ranges_add(ops[i].addr, ops[i].addr + ops[i].length);
	nr_observed_pages = 0;
	for (int r = 0; r < nr_ranges; r++)
		nr_observed_pages += (ranges[r].end - ranges[r].start) / PAGE_SIZE;
	for (int n = 0; n < MAX_PROCESSES; n++)
		if (pipe(commands[n]))
			fatal("pipe");
	if (pipe(replies))
		fatal("pipe");
	out_flush();
	pid = fork();
	if (pid < 0)
		fatal("fork");
	if (pid == 0)
		_exit(worker_loop(0));
	worker_started(0, pid);
	collapsed = khugepaged_pages_collapsed();
	for (int i = 0; i < nr_ops; i++) {
		int result = run_op(&ops[i]);

		if (result < 0) {
			out("X op %d: worker P%d died or hung\n", i, ops[i].process);
			kill(workers[ops[i].process].pid, SIGKILL);
			break;
		}
		if (khugepaged_pages_collapsed() != collapsed) {
			out("X op %d: khugepaged collapsed a range behind the script's back\n", i);
			break;
		}
		out("R %d %d\n", i, result);
		observe(i);
	}
	for (int n = 0; n < MAX_PROCESSES; n++) {
		if (workers[n].pid) {
			struct rf_op exit_op = { .kind = RF_EXIT, .process = n };

			if (write(workers[n].command_fd, &exit_op, sizeof(exit_op)) != sizeof(exit_op))
				kill(workers[n].pid, SIGKILL);
			worker_reap(n);
		}
	}
	for (int i = 0; i < nr_pins; i++) {
		if (pin_rings[i] >= 0) {
			syscall(__NR_io_uring_register, pin_rings[i], IORING_UNREGISTER_BUFFERS, NULL, 0);
			close(pin_rings[i]);
		}
	}
	for (int n = 0; n < MAX_PROCESSES; n++) {
		close(commands[n][0]);
		close(commands[n][1]);
	}
	close(replies[0]);
	close(replies[1]);
	out("Z %s %.1f %.1f\n", name, now_ms() - started, observe_ms);
	out_flush();
}

/* The virtio-serial port named rmapfuzz (no tty layer: fast), else the console. */
static int open_observation_port(void)
{
	DIR *ports = opendir("/sys/class/virtio-ports");
	struct dirent *port;
	int fd = -1;

	while (ports && fd < 0 && (port = readdir(ports))) {
		char path[512];
		size_t size = 0;
		char *name;

		if (port->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", port->d_name);
		name = read_whole_file(path, &size);
		if (name && size >= 8 && !memcmp(name, "rmapfuzz", 8)) {
			snprintf(path, sizeof(path), "/dev/%s", port->d_name);
			fd = open(path, O_WRONLY);
		}
		free(name);
	}
	if (ports)
		closedir(ports);
	return fd < 0 ? 1 : fd;
}

static int compare_names(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static void load_module(const char *path)
{
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return;
	if (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST)
		out("X-warning module %s: %s\n", path, strerror(errno));
	close(fd);
}

/* Every module under /lib/modules, in name order (the initramfs names them in load order). */
static void load_modules(void)
{
	struct dirent **entries;
	char path[512];
	int nr_entries = scandir("/lib/modules", &entries, NULL, compare_names);

	for (int i = 0; i < nr_entries; i++) {
		if (entries[i]->d_name[0] != '.') {
			snprintf(path, sizeof(path), "/lib/modules/%s", entries[i]->d_name);
			load_module(path);
		}
	}
}

/*
 * The guest's disk for regular files: ext4 on /dev/vda, mounted at /rmapfuzz, readahead off
 * (read_ahead_kb 0 before any file is opened: file_ra_state_init copies it), so a file fault
 * makes an order-0 folio of the faulting page alone (filemap_fault, do_sync_mmap_readahead).
 */
static void disk_mount(void)
{
	write_file("/sys/block/vda/queue/read_ahead_kb", "0");
	mkdir("/rmapfuzz", 0755);
	if (mount("/dev/vda", "/rmapfuzz", "ext4", 0, NULL)) {
		out("X-warning disk: %s\n", strerror(errno));
		file_dir = NULL; /* not the initramfs: a regular file there would be shmem */
	} else {
		file_dir = "/rmapfuzz";
	}
}

/* Booted as /init: mount what a system has, take the observation port, load the modules. */
static void system_start(void)
{
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	out_fd = open_observation_port();
	load_modules();
	disk_mount();
}

static void print_kernel_release(void)
{
	size_t size = 0;
	char *release = read_whole_file("/proc/sys/kernel/osrelease", &size);

	out("K %.*s\n", release ? (int)size - 1 : 0, release ? release : "");
	free(release);
}

#ifdef RF_INIT
/* ------------------------------------------------------------------------- */
/* /init: mount, load modules, run every script under /scripts, power off. */

static double uptime_seconds(void)
{
	size_t size = 0;
	char *text = read_whole_file("/proc/uptime", &size);
	double seconds = text ? strtod(text, NULL) : 0;

	free(text);
	return seconds;
}

/* A script file: one op a line, "kind process addr length value arg" in decimal. */
static int read_script(const char *path, struct rf_op **ops)
{
	size_t size = 0;
	char *text = read_whole_file(path, &size), *line, *end;
	int nr_ops = 0, cap = 64;

	*ops = malloc(cap * sizeof(**ops));
	if (!text)
		return -1;
	for (line = text; line < text + size; line = end + 1) {
		struct rf_op *op;
		unsigned long long addr, length, value;

		end = memchr(line, '\n', text + size - line);
		if (!end)
			end = text + size;
		*end = 0;
		if (nr_ops == cap)
			*ops = realloc(*ops, (cap *= 2) * sizeof(**ops));
		op = &(*ops)[nr_ops];
		if (sscanf(line, "%d %d %llu %llu %llu %d", &op->kind, &op->process, &addr, &length, &value,
			   &op->arg) == 6) {
			op->addr = addr;
			op->length = length;
			op->value = value;
			nr_ops++;
		}
	}
	free(text);
	return nr_ops;
}

int main(void)
{
	struct dirent **entries;
	char path[512];
	int nr_entries;

	system_start();
	print_kernel_release();
	machine_setup();
	out("L levels=%d ram=%lx vmemmap=%lx\n", pgtable_levels, (unsigned long)ram_pa, (unsigned long)vmemmap_va);
	out("T %.3f\n", uptime_seconds());
	out_flush();
	nr_entries = scandir("/scripts", &entries, NULL, compare_names);
	for (int i = 0; i < nr_entries; i++) {
		struct rf_op *ops;
		int nr_ops;

		if (entries[i]->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/scripts/%s", entries[i]->d_name);
		nr_ops = read_script(path, &ops);
		if (nr_ops >= 0)
			run_script(entries[i]->d_name, ops, nr_ops);
		free(ops);
	}
	out("T %.3f\n", uptime_seconds());
	out("D\n");
	out_flush();
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
#endif /* RF_INIT */
