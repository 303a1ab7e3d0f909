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
 *
 *   httpload relay OUT_PORT IN_PORT
 *       The cheapest possible sidecar proxy, the floor to compare a real one's CPU cost with: a transparent TCP
 *       relay for connections that the capture rules REDIRECT to 0.0.0.0:OUT_PORT (outbound) or :IN_PORT
 *       (inbound), run as the proxy's uid. Each accepted connection is joined to a new connection to its original
 *       destination (SO_ORIGINAL_DST); inbound ones are made from 127.0.0.6, as Envoy's inbound passthrough does,
 *       so that the rules' "-o lo -s 127.0.0.6/32 -j RETURN" lets them reach the app instead of looping back.
 *       Bytes are copied both ways through a buffer per direction (a full buffer stops reading its side), an EOF
 *       is passed on as shutdown(SHUT_WR) once the buffer behind it has drained, and a pair is freed when both
 *       directions are done; a reset, a refused upstream connect or a connection that was not redirected resets
 *       the other side. One epoll thread, IPv4 only, nothing printed per connection. On SIGTERM or SIGINT it
 *       exits 0 after printing one JSON line to stderr: per port the connections accepted, bytes relayed up (to
 *       the original destination) and down, and errors (pairs that ended in a reset or failure), and the pairs
 *       still open.
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
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
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

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

static _Noreturn void serve(int port) {
    int lfd = listen_on(port);
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

/* ---------------------------------------------------------------- relay */

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* <linux/netfilter_ipv4.h> */
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define RELAY_BUF 16384

enum kind { LISTENER, SIGNALS, DOWN, UP };

struct rstats {
    long connections, bytes_up, bytes_down, errors;
};

struct listener {
    enum kind kind; /* first: what epoll's data.ptr points at is told by it */
    int fd;
    const char *name;
    int inbound;
    struct rstats st;
};

struct pair;

struct side {
    enum kind kind; /* DOWN: the accepted connection; UP: ours to the original destination */
    int fd;
    int readable, writable; /* edge-triggered: set by an event, cleared by EAGAIN or a short read/write */
    int rdhup;              /* its FIN has arrived: read on to the EOF even after a short read */
    struct pair *pair;
};

struct flow { /* bytes read from one side, not yet written to the other */
    size_t start, len;
    int eof;      /* the source side sent its FIN */
    int shut;     /* ... and it was passed on */
    char buf[RELAY_BUF];
};

struct pair {
    struct side down, up;
    struct flow to_up, to_down;
    int connecting;
    int dead; /* closed; freed after the current batch of events */
    struct listener *from;
    struct pair *next_dead;
};

static struct {
    int ep;
    long open;
    struct pair *dead;
} R;


/* Closes a side at once; with reset, an RST instead of a FIN (SO_LINGER 0), which passes a failure on. */
static void close_side(struct side *s, int reset) {
    if (s->fd < 0) return;
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(s->fd); /* also leaves the epoll set: no fd is ever duplicated */
    s->fd = -1;
}

static void end_pair(struct pair *p, int error) {
    if (p->dead) return;
    if (error) p->from->st.errors++;
    close_side(&p->down, error);
    close_side(&p->up, error);
    p->dead = 1;
    p->next_dead = R.dead;
    R.dead = p;
    R.open--;
}

/* Moves what it can from src to dst through f; -1 on an error, else whether anything happened. */
static int pump(struct side *src, struct side *dst, struct flow *f, long *relayed) {
    int progress = 0;
    if (!f->eof && src->readable) {
        if (f->len == 0) f->start = 0;
        if (f->start + f->len == sizeof f->buf && f->start > 0) {
            memmove(f->buf, f->buf + f->start, f->len);
            f->start = 0;
        }
        size_t room = sizeof f->buf - f->start - f->len;
        if (room > 0) {
            ssize_t r = read(src->fd, f->buf + f->start + f->len, room);
            if (r > 0) {
                f->len += (size_t)r;
                progress = 1;
                /* Short: the receive queue is empty, and new data will raise a new edge. That saves the read
                 * that would only return EAGAIN - unless the FIN is already in, whose edge has been seen. */
                if ((size_t)r < room && !src->rdhup) src->readable = 0;
            } else if (r == 0) {
                f->eof = 1;
                progress = 1;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                src->readable = 0;
            } else if (errno != EINTR) {
                return -1;
            }
        }
    }
    if (f->len > 0 && dst->writable) {
        ssize_t w = send(dst->fd, f->buf + f->start, f->len, MSG_NOSIGNAL);
        if (w > 0) {
            f->start += (size_t)w;
            f->len -= (size_t)w;
            *relayed += w;
            progress = 1;
            if (f->len > 0) dst->writable = 0; /* short: the send buffer is full, EPOLLOUT will tell */
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            dst->writable = 0;
        } else if (w < 0 && errno != EINTR) {
            return -1;
        }
    }
    if (f->eof && f->len == 0 && !f->shut && dst->writable) {
        if (shutdown(dst->fd, SHUT_WR) < 0) return -1;
        f->shut = 1;
        progress = 1;
    }
    return progress;
}

static void relay_pair(struct pair *p) {
    if (p->connecting) { /* bytes from downstream wait in to_up until the upstream connection is up */
        if (pump(&p->down, &p->up, &p->to_up, &p->from->st.bytes_up) < 0) end_pair(p, 1);
        return;
    }
    for (;;) {
        int a = pump(&p->down, &p->up, &p->to_up, &p->from->st.bytes_up);
        int b = a < 0 ? 0 : pump(&p->up, &p->down, &p->to_down, &p->from->st.bytes_down);
        if (a < 0 || b < 0) {
            end_pair(p, 1);
            return;
        }
        if (p->to_up.shut && p->to_down.shut) {
            end_pair(p, 0);
            return;
        }
        if (!a && !b) return;
    }
}

static void add_side(struct side *s) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = s};
    if (epoll_ctl(R.ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl");
}

/* A new captured connection: look up where it was going, and start connecting there. */
static void accept_pair(struct listener *l, int fd) {
    l->st.connections++;
    nodelay(fd);
    struct sockaddr_in dst, self;
    socklen_t dlen = sizeof dst, slen = sizeof self;
    int up = -1;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &dlen) < 0 || getsockname(fd, (struct sockaddr *)&self, &slen) < 0 ||
        (dst.sin_addr.s_addr == self.sin_addr.s_addr && dst.sin_port == self.sin_port)) {
        goto refuse; /* not redirected here: nowhere to relay it to (and never to ourselves) */
    }
    up = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (up < 0) goto refuse;
    nodelay(up);
    if (l->inbound) {
        int one = 1; /* the port is picked by connect(), per destination, not by bind() out of one shared pool */
        setsockopt(up, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000006); /* 127.0.0.6 */
        if (bind(up, (struct sockaddr *)&src, sizeof src) < 0) goto refuse;
    }
    if (connect(up, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) goto refuse;
    struct pair *p = calloc(1, sizeof *p);
    if (p == NULL) goto refuse;
    p->from = l;
    p->connecting = 1;
    p->down = (struct side){.kind = DOWN, .fd = fd, .pair = p};
    p->up = (struct side){.kind = UP, .fd = up, .pair = p};
    R.open++;
    add_side(&p->down);
    add_side(&p->up);
    return;
refuse:
    l->st.errors++;
    if (up >= 0) close(up);
    struct side s = {.fd = fd};
    close_side(&s, 1);
}

static void on_event(struct side *s, uint32_t events) {
    struct pair *p = s->pair;
    if (p->dead) return; /* ended by an earlier event of this batch */
    if (events & EPOLLERR) { /* a reset, or the upstream connect refused */
        end_pair(p, 1);
        return;
    }
    if (events & (EPOLLRDHUP | EPOLLHUP)) s->rdhup = 1;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) s->readable = 1;
    if (events & (EPOLLOUT | EPOLLHUP)) s->writable = 1;
    if (p->connecting && s->kind == UP && s->writable) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            end_pair(p, 1);
            return;
        }
        p->connecting = 0;
    }
    relay_pair(p);
}

static void print_stats(const struct listener *ls, int n) {
    fprintf(stderr, "{");
    for (int i = 0; i < n; i++) {
        const struct rstats *st = &ls[i].st;
        fprintf(stderr, "\"%s\": {\"connections\": %ld, \"bytes_up\": %ld, \"bytes_down\": %ld, \"errors\": %ld}, ",
                ls[i].name, st->connections, st->bytes_up, st->bytes_down, st->errors);
    }
    fprintf(stderr, "\"open\": %ld}\n", R.open);
}

static int parse_port(const char *arg) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    return errno == 0 && *arg != '\0' && *end == '\0' && v > 0 && v < 65536 ? (int)v : -1;
}

static int relay(int argc, char **argv) {
    int out_port = argc == 3 ? parse_port(argv[1]) : -1, in_port = argc == 3 ? parse_port(argv[2]) : -1;
    if (out_port < 0 || in_port < 0 || out_port == in_port) {
        fprintf(stderr, "usage: httpload relay OUT_PORT IN_PORT (two different ports, 1-65535)\n");
        return 2;
    }
    struct listener ls[2] = {
        {.kind = LISTENER, .fd = listen_on(out_port), .name = "outbound", .inbound = 0},
        {.kind = LISTENER, .fd = listen_on(in_port), .name = "inbound", .inbound = 1},
    };
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) die("sigprocmask");
    enum kind signals = SIGNALS;
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) die("signalfd");
    R.ep = epoll_create1(EPOLL_CLOEXEC);
    if (R.ep < 0) die("epoll_create1");
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ls[i]};
        if (epoll_ctl(R.ep, EPOLL_CTL_ADD, ls[i].fd, &ev) < 0) die("epoll_ctl");
    }
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &signals};
    if (epoll_ctl(R.ep, EPOLL_CTL_ADD, sfd, &sev) < 0) die("epoll_ctl");
    fprintf(stderr, "httpload: relaying on :%d (outbound) and :%d (inbound)\n", out_port, in_port);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(R.ep, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            enum kind *k = events[i].data.ptr;
            if (*k == SIGNALS) {
                print_stats(ls, 2);
                return 0;
            }
            if (*k == LISTENER) {
                struct listener *l = (struct listener *)k;
                int fd;
                while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) accept_pair(l, fd);
                continue;
            }
            on_event((struct side *)k, events[i].events);
        }
        while (R.dead != NULL) {
            struct pair *p = R.dead;
            R.dead = p->next_dead;
            free(p);
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN); /* a peer that resets mid-write is an error to count, not a reason to die */
    if (argc >= 3 && strcmp(argv[1], "serve") == 0) serve(atoi(argv[2]));
    if (argc >= 2 && strcmp(argv[1], "load") == 0) return load(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "relay") == 0) return relay(argc - 1, argv + 1);
    fprintf(stderr, "usage: httpload serve PORT | httpload load HOST PORT RATE SECONDS CONNECTIONS MODE [WARMUP] | "
                    "httpload relay OUT_PORT IN_PORT\n");
    return 2;
}
