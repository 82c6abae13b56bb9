/* An LD_PRELOAD shim that makes one system call fail, for the I/O fault matrix.
 *
 * It wraps the libc calls that write, sync, rename, link, open and unlink files, and counts
 * those (of one group) that touch a path under FAULT_PREFIX, across every thread. The
 * FAULT_NTH-th such call fails with FAULT_ERRNO; with FAULT_NTH=0 nothing fails and the
 * count is only recorded. FAULT_LOG receives "count N" at exit and "injected" when the
 * fault fired. RocksDB calls libc through the dynamic linker, so its I/O is caught too.
 *
 * Built by tests/crash/test_faults.py with: cc -shared -fPIC -O2 -o shim.so faultshim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *group, *prefix, *logpath;
static long nth = -1;
static int error_number;
static atomic_long seen;
static atomic_int fired;
static size_t prefix_len;

__attribute__((constructor)) static void setup(void) {
    group = getenv("FAULT_CALL");
    prefix = getenv("FAULT_PREFIX");
    logpath = getenv("FAULT_LOG");
    const char *n = getenv("FAULT_NTH"), *e = getenv("FAULT_ERRNO");
    nth = n ? atol(n) : -1;
    error_number = e ? atoi(e) : EIO;
    prefix_len = prefix ? strlen(prefix) : 0;
}

static void note(const char *what, long value) {
    if (!logpath) return;
    int fd = ((int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open"))(
        logpath, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return;
    char line[64];
    int len = snprintf(line, sizeof line, "%s %ld\n", what, value);
    ((ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write"))(fd, line, len);
    close(fd);
}

__attribute__((destructor)) static void finish(void) {
    if (group && nth == 0) note("count", atomic_load(&seen));
}

static int under(const char *path) {
    if (!path || !prefix) return 0;
    if (strncmp(path, prefix, prefix_len) == 0) return 1;
    char real[4096];  /* a read-only open goes through a directory of symlinks */
    return realpath(path, real) && strncmp(real, prefix, prefix_len) == 0;
}

static int fd_under(int fd) {
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) return 0;
    target[len] = 0;
    return under(target);
}

/* Return 1 (and set errno) when this call, of group `kind`, is the one that must fail. */
static int fail(const char *kind, int touches) {
    if (!group || !touches || strcmp(group, kind) != 0 || nth < 0) return 0;
    long count = atomic_fetch_add(&seen, 1) + 1;
    if (nth == 0 || count != nth || atomic_exchange(&fired, 1)) return 0;
    note("injected", count);
    errno = error_number;
    return 1;
}

#define REAL(name, type) ((type)dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *buf, size_t n) {
    if (fail("write", fd_under(fd))) return -1;
    return REAL(write, ssize_t (*)(int, const void *, size_t))(fd, buf, n);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    if (fail("write", fd_under(fd))) return -1;
    return REAL(pwrite, ssize_t (*)(int, const void *, size_t, off_t))(fd, buf, n, at);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t at) {
    if (fail("write", fd_under(fd))) return -1;
    return REAL(pwrite64, ssize_t (*)(int, const void *, size_t, off_t))(fd, buf, n, at);
}
ssize_t writev(int fd, const struct iovec *iov, int count) {
    if (fail("write", fd_under(fd))) return -1;
    return REAL(writev, ssize_t (*)(int, const struct iovec *, int))(fd, iov, count);
}
ssize_t sendfile(int out, int in, off_t *at, size_t n) {
    if (fail("write", fd_under(out))) return -1;
    return REAL(sendfile, ssize_t (*)(int, int, off_t *, size_t))(out, in, at, n);
}
ssize_t copy_file_range(int in, off_t *a, int out, off_t *b, size_t n, unsigned int f) {
    if (fail("write", fd_under(out))) return -1;
    return REAL(copy_file_range, ssize_t (*)(int, off_t *, int, off_t *, size_t, unsigned int))(
        in, a, out, b, n, f);
}
int fsync(int fd) {
    if (fail("fsync", fd_under(fd))) return -1;
    return REAL(fsync, int (*)(int))(fd);
}
int fdatasync(int fd) {
    if (fail("fsync", fd_under(fd))) return -1;
    return REAL(fdatasync, int (*)(int))(fd);
}
int rename(const char *a, const char *b) {
    if (fail("rename", under(a) || under(b))) return -1;
    return REAL(rename, int (*)(const char *, const char *))(a, b);
}
int renameat(int da, const char *a, int db, const char *b) {
    if (fail("rename", under(a) || under(b))) return -1;
    return REAL(renameat, int (*)(int, const char *, int, const char *))(da, a, db, b);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned int flags) {
    if (fail("rename", under(a) || under(b))) return -1;
    return REAL(renameat2, int (*)(int, const char *, int, const char *, unsigned int))(
        da, a, db, b, flags);
}
int link(const char *a, const char *b) {
    if (fail("link", under(a) || under(b))) return -1;
    return REAL(link, int (*)(const char *, const char *))(a, b);
}
int linkat(int da, const char *a, int db, const char *b, int flags) {
    if (fail("link", under(a) || under(b))) return -1;
    return REAL(linkat, int (*)(int, const char *, int, const char *, int))(da, a, db, b, flags);
}
int unlink(const char *path) {
    if (fail("unlink", under(path))) return -1;
    return REAL(unlink, int (*)(const char *))(path);
}
int unlinkat(int dir, const char *path, int flags) {
    if (fail("unlink", under(path))) return -1;
    return REAL(unlinkat, int (*)(int, const char *, int))(dir, path, flags);
}

static int opened(const char *name, const char *path, int dir, int flags, mode_t mode) {
    if (fail("open", under(path))) return -1;
    if (dir == -200) return REAL(open, int (*)(const char *, int, ...))(path, flags, mode);
    return ((int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, name))(dir, path, flags, mode);
}
int open(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(args, mode_t) : 0;
    va_end(args);
    return opened("open", path, -200, flags, mode);
}
int open64(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(args, mode_t) : 0;
    va_end(args);
    return opened("open", path, -200, flags, mode);
}
int openat(int dir, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(args, mode_t) : 0;
    va_end(args);
    return opened("openat", path, dir, flags, mode);
}
int openat64(int dir, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(args, mode_t) : 0;
    va_end(args);
    return opened("openat64", path, dir, flags, mode);
}
