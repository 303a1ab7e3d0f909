/*
 * httpload: the sidecar-tax benchmark's app server and open-loop load generator, in one small C program so that
 * neither side adds Python's jitter to the sub-millisecond figures being measured (bench/sidecar_tax.py).
 *
 *   httpload serve PORT
 *       HTTP/1.1 on 0.0.0.0:PORT, one epoll thread: every GET is answered "200 ok" with a Content-Length,
 *       keep-alive unless the request says "Connection: close".
 *
 *   httpload load HOST PORT RATE SECONDS CONNECTIONS MODE [WARMUP_SECONDS]
 *       MODE keepalive: CONNECTIONS persistent connections, one request in flight on each.
 *       MODE close:     a new connection per request ("Connection: close"), at most CONNECTIONS open at once.
 *       RATE > 0 is open loop: request k is due at start + k/RATE whatever happened before, and its latency is
 *       counted from that due time, so a stall shows up as the queueing it causes (no coordinated omission).
 *       RATE 0 is saturation: each connection sends its next request as soon as the answer arrives.
 *       Requests due in the first WARMUP_SECONDS (default 1) are sent but not recorded.
 *       Prints one JSON object: counts, achieved rate, and latency percentiles in microseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF 4096
#define MAX_EVENTS 256

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---------------------------------------------------------------- server */

struct sconn {
    int fd;
    size_t len;
    char buf[BUF];
};

static void serve_close(int ep, struct sconn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Answers every complete request in the buffer; returns 0 when the connection must be closed. */
static int serve_requests(struct sconn *c) {
    char *end;
    while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4)) != NULL) {
        size_t head = (size_t)(end - c->buf) + 4;
        int close_after = memmem(c->buf, head, "onnection: close", 16) != NULL;
        if (write(c->fd, RESPONSE, sizeof RESPONSE - 1) != (ssize_t)(sizeof RESPONSE - 1)) return 0;
        memmove(c->buf, c->buf + head, c->len - head);
        c->len -= head;
        if (close_after) return 0;
    }
    return c->len < sizeof c->buf;
}

static _Noreturn void serve(int port) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "httpload: serving on :%d\n", port);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            struct sconn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    nodelay(fd);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                serve_close(ep, c);
                continue;
            }
            c->len += (size_t)r;
            if (!serve_requests(c)) serve_close(ep, c);
        }
    }
}

/* ---------------------------------------------------------------- load generator */

struct lconn {
    int fd;
    int busy;        /* a request is in flight */
    int connecting;  /* close mode: connect() not finished */
    int64_t due;     /* due time of the request in flight */
    size_t len;
    char buf[BUF];
};

struct stats {
    int64_t *lat_ns;
    size_t n, cap;
    long sent, ok, errors;
};

static struct {
    struct sockaddr_in addr;
    int close_mode;
    int ep;
    char request[256];
    size_t request_len;
    int64_t record_from; /* requests due before this are warm-up */
    struct stats st;
    int64_t *queue; /* due times of requests waiting for a connection (ring) */
    size_t qhead, qlen, qcap;
    int open_conns, max_conns;
} L;

static void record(int64_t due, int ok) {
    if (due < L.record_from) return;
    if (!ok) {
        L.st.errors++;
        return;
    }
    L.st.ok++;
    if (L.st.n == L.st.cap) {
        L.st.cap = L.st.cap ? L.st.cap * 2 : 65536;
        L.st.lat_ns = realloc(L.st.lat_ns, L.st.cap * sizeof *L.st.lat_ns);
        if (!L.st.lat_ns) die("realloc");
    }
    L.st.lat_ns[L.st.n++] = now_ns() - due;
}

static void enqueue(int64_t due) {
    if (L.qlen == L.qcap) {
        size_t cap = L.qcap ? L.qcap * 2 : 1024;
        int64_t *q = malloc(cap * sizeof *q);
        if (!q) die("malloc");
        for (size_t i = 0; i < L.qlen; i++) q[i] = L.queue[(L.qhead + i) % L.qcap];
        free(L.queue);
        L.queue = q, L.qhead = 0, L.qcap = cap;
    }
    L.queue[(L.qhead + L.qlen++) % L.qcap] = due;
}

static int64_t dequeue(void) {
    int64_t due = L.queue[L.qhead];
    L.qhead = (L.qhead + 1) % L.qcap, L.qlen--;
    return due;
}

static int send_request(struct lconn *c, int64_t due) {
    c->busy = 1, c->due = due, c->len = 0;
    L.st.sent++;
    return write(c->fd, L.request, L.request_len) == (ssize_t)L.request_len;
}

static struct lconn *open_conn(void) {
    struct lconn *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    nodelay(c->fd);
    int r = connect(c->fd, (struct sockaddr *)&L.addr, sizeof L.addr);
    if (r < 0 && errno != EINPROGRESS) die("connect");
    c->connecting = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(L.ep, EPOLL_CTL_ADD, c->fd, &ev);
    L.open_conns++;
    return c;
}

static void drop_conn(struct lconn *c) {
    epoll_ctl(L.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
    L.open_conns--;
}

/* Complete response in c->buf? 1 yes (and *ok says whether it was a 200), 0 not yet. */
static int response_done(struct lconn *c, int *ok) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL) return 0;
    size_t head = (size_t)(end - c->buf) + 4;
    size_t body = 0;
    for (char *p = c->buf; p < end; p++) {
        if (*p == '\n' && strncasecmp(p + 1, "content-length:", 15) == 0) {
            body = strtoul(p + 16, NULL, 10);
            break;
        }
    }
    if (c->len < head + body) return 0;
    *ok = c->len >= 12 && memcmp(c->buf + 9, "200", 3) == 0;
    return 1;
}

/* keep-alive: hand queued requests to idle connections, round robin so that every connection carries load */
static void dispatch(struct lconn **conns, int nconns) {
    static int next;
    for (int tried = 0; tried < nconns && L.qlen > 0; tried++, next = (next + 1) % nconns) {
        struct lconn *c = conns[next];
        if (!c->busy && !c->connecting && !send_request(c, dequeue())) {
            record(c->due, 0);
            c->busy = 0;
        }
    }
}

/* close mode: open a connection per queued request, up to the cap */
static void dispatch_close(void) {
    while (L.qlen > 0 && L.open_conns < L.max_conns) {
        struct lconn *c = open_conn();
        c->due = dequeue();
        c->busy = 1;
    }
}

static int cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int load(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: httpload load HOST PORT RATE SECONDS CONNECTIONS keepalive|close [WARMUP]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int nconns = atoi(argv[5]);
    L.close_mode = strcmp(argv[6], "close") == 0;
    if (!L.close_mode && strcmp(argv[6], "keepalive") != 0) {
        fprintf(stderr, "httpload: mode must be keepalive or close, got %s\n", argv[6]);
        return 2;
    }
    double warmup = argc > 7 ? atof(argv[7]) : 1.0;
    if (port <= 0 || rate < 0 || seconds <= 0 || nconns <= 0 || warmup < 0) {
        fprintf(stderr, "httpload: bad arguments\n");
        return 2;
    }
    L.addr.sin_family = AF_INET;
    L.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &L.addr.sin_addr) != 1) {
        fprintf(stderr, "httpload: HOST must be an IPv4 address, got %s\n", host);
        return 2;
    }
    L.request_len = (size_t)snprintf(L.request, sizeof L.request, "GET / HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", host,
                                     port, L.close_mode ? "Connection: close\r\n" : "");
    L.max_conns = nconns;
    L.ep = epoll_create1(0);

    struct lconn **conns = calloc((size_t)nconns, sizeof *conns);
    if (!L.close_mode) { /* connect everything first: connection set-up is not what keep-alive measures */
        for (int i = 0; i < nconns; i++) conns[i] = open_conn();
        int64_t deadline = now_ns() + 5000000000LL;
        int pending = nconns;
        struct epoll_event events[MAX_EVENTS];
        while (pending > 0 && now_ns() < deadline) {
            int n = epoll_wait(L.ep, events, MAX_EVENTS, 100);
            for (int i = 0; i < n; i++) {
                struct lconn *c = events[i].data.ptr;
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errno = err;
                    die("connect");
                }
                if (c->connecting) {
                    c->connecting = 0, pending--;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(L.ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
        if (pending > 0) {
            fprintf(stderr, "httpload: %d connections not established within 5s\n", pending);
            return 1;
        }
    }

    int tfd = -1;
    int64_t interval = rate > 0 ? (int64_t)(1e9 / rate) : 0;
    int64_t start = now_ns() + 10000000; /* 10 ms from now */
    int64_t stop = start + (int64_t)((warmup + seconds) * 1e9);
    L.record_from = start + (int64_t)(warmup * 1e9);
    long scheduled = 0;
    if (rate > 0) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        struct itimerspec its = {
            .it_value = {start / 1000000000, start % 1000000000},
            .it_interval = {interval / 1000000000, interval % 1000000000},
        };
        if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &tfd};
        epoll_ctl(L.ep, EPOLL_CTL_ADD, tfd, &ev);
    } else {
        if (L.close_mode) {
            fprintf(stderr, "httpload: saturation (RATE 0) is keep-alive only\n");
            return 2;
        }
        struct timespec pause = {0, 10000000};
        nanosleep(&pause, NULL);
        for (int i = 0; i < nconns; i++) send_request(conns[i], now_ns());
    }

    struct epoll_event events[MAX_EVENTS];
    int64_t drain_until = stop + 2000000000LL;
    int in_flight = 0;
    for (;;) {
        int64_t t = now_ns();
        in_flight = 0;
        if (L.close_mode) {
            in_flight = L.open_conns;
        } else {
            for (int i = 0; i < nconns; i++) in_flight += conns[i]->busy;
        }
        if (t >= stop && ((in_flight == 0 && L.qlen == 0) || t >= drain_until)) break;
        int n = epoll_wait(L.ep, events, MAX_EVENTS, 50);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == &tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) != sizeof expirations) continue;
                for (uint64_t k = 0; k < expirations; k++) {
                    int64_t due = start + scheduled * interval;
                    if (due >= stop) break;
                    scheduled++;
                    enqueue(due);
                }
                continue;
            }
            struct lconn *c = events[i].data.ptr;
            if (c->connecting) { /* close mode: the connect finished (or failed) */
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                c->connecting = 0;
                L.st.sent++;
                if (err || write(c->fd, L.request, L.request_len) != (ssize_t)L.request_len) {
                    record(c->due, 0);
                    drop_conn(c);
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(L.ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (r < 0 && errno == EAGAIN) continue;
            int ok = 0;
            if (r > 0) c->len += (size_t)r;
            if (r > 0 && !response_done(c, &ok)) continue;
            if (c->busy) record(c->due, r > 0 && ok);
            c->busy = 0;
            if (L.close_mode) {
                drop_conn(c);
            } else if (r <= 0) {
                fprintf(stderr, "httpload: the server closed a keep-alive connection\n");
                return 1;
            } else if (rate == 0 && now_ns() < stop) {
                send_request(c, now_ns());
            }
        }
        if (L.close_mode) {
            dispatch_close();
        } else {
            dispatch(conns, nconns);
        }
    }
    int64_t elapsed = now_ns() - L.record_from;
    int64_t *lat = L.st.lat_ns;
    size_t n = L.st.n;
    qsort(lat, n, sizeof *lat, cmp);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)lat[i];
#define PCT(p) (n ? (double)lat[(size_t)((double)(n - 1) * (p))] / 1000.0 : 0.0)
    printf("{\"mode\": \"%s\", \"rate\": %g, \"connections\": %d, \"sent\": %ld, \"recorded\": %zu, \"ok\": %ld, \"errors\": %ld, "
           "\"unanswered\": %d, \"elapsed_s\": %.3f, \"achieved_rps\": %.1f, \"mean_us\": %.1f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           L.close_mode ? "close" : "keepalive", rate, nconns, L.st.sent, n, L.st.ok, L.st.errors, in_flight + (int)L.qlen, elapsed / 1e9,
           (double)L.st.ok / (elapsed / 1e9), n ? sum / (double)n / 1000.0 : 0.0, PCT(0.50), PCT(0.90), PCT(0.99),
           PCT(0.999), n ? (double)lat[n - 1] / 1000.0 : 0.0);
    return L.st.errors > 0 || in_flight + L.qlen > 0 ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "serve") == 0) serve(atoi(argv[2]));
    if (argc >= 2 && strcmp(argv[1], "load") == 0) return load(argc - 1, argv + 1);
    fprintf(stderr, "usage: httpload serve PORT | httpload load HOST PORT RATE SECONDS CONNECTIONS MODE [WARMUP]\n");
    return 2;
}
