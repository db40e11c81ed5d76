/* The cheapest output of a byte string through a weighted transducer, found exactly as
 * pynini's `shortestpath(escape(text) @ fst, nshortest=1, unique=True).string()` finds it.
 *
 * The text normalisers (WeTextProcessing) run that expression twice per text; OpenFst builds
 * the whole composition, ~900 states per input byte for the English tagger, of which ~30
 * survive the final trim. This module builds only states that can still read the next byte,
 * then does what the reference does on what survives:
 *
 *   1. Composition of a string with `fst`: state (i, q) = input position i, fst state q. Arcs of
 *      q with input label 0 stay at i, arcs labelled b[i] go to i + 1, in the fst's arc order
 *      (the fst is input-label sorted, so epsilons come first). A state (i, q) is made only if
 *      q can read b[i] after input epsilons (or reach a final state, at i = n): the others can
 *      never reach the end, so the trim would remove them anyway.
 *   2. Trim (Connect): keep the states that reach a final state at i = n; arcs keep their order.
 *   3. Queue (AutoQueue on a lattice whose acyclicity is not yet known): an SCC search by
 *      depth-first visit from the start, arcs in order. When every arc weighs 0 the queue is
 *      LIFO. Otherwise, on an acyclic lattice, every SCC is trivial and states are taken in
 *      reverse DFS post-order (a topological order). A cyclic lattice is not handled here: the
 *      caller asks the reference.
 *   4. Single shortest path in that order: distances are float32 sums (tropical Times), a
 *      distance or the best final is replaced only when strictly smaller, so the first arc to
 *      reach a value keeps it -- which is why the order of step 3 must be the reference's.
 *   5. Backtrack from the best final state; the output labels, epsilons dropped, are the bytes.
 *
 * Every float operation is the reference's (float32 additions and comparisons); the file must
 * not be built with -ffast-math.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    int32_t nstates, start;
    int64_t *off;          /* [nstates + 1] arcs of q: off[q] .. off[q + 1] */
    int32_t *ilabel, *olabel, *next;
    float *weight, *final; /* final: +inf where not final */
    uint8_t *first;        /* [nstates * 32] bytes readable next, after input epsilons */
    uint8_t *can_end;      /* [nstates] a final state is reachable by input epsilons */
    int lookahead;         /* 0 when some input label is above 255 */
    /* per-call scratch, kept between calls */
    uint64_t *hkey;            /* open addressing: (position << 32 | fst state) + 1, 0 = empty */
    int32_t *hval;
    int64_t hcap;              /* a power of two */
    int64_t hused;             /* states the last call made */
    int32_t *sq, *spos;        /* composed state -> fst state, position */
    int64_t *sout;             /* composed state -> first out arc in the arc buffer */
    int32_t *adest;            /* arc buffer: destination composed state */
    int64_t *aarc;             /* arc buffer: fst arc index */
    int64_t scap, acap;
} FstPath;

/* field = realloc(field, n elements); on failure the old block stays and the caller gets -1 */
#define GROW(field, n)                                                  \
    do {                                                                \
        void *grown_ = realloc((field), (size_t)(n) * sizeof *(field)); \
        if (!grown_) return -1;                                         \
        (field) = grown_;                                               \
    } while (0)

static int64_t capacity_for(int64_t cap, int64_t need) {
    cap = cap ? cap : 4096;
    while (cap < need) cap *= 2;
    return cap;
}

/* room for `need` composed states in the three per-state arrays */
static int reserve_states(FstPath *f, int64_t need) {
    if (need <= f->scap) return 0;
    int64_t cap = capacity_for(f->scap, need);
    GROW(f->sq, cap);
    GROW(f->spos, cap);
    GROW(f->sout, cap + 1);
    f->scap = cap;
    return 0;
}

static int reserve_arcs(FstPath *f, int64_t need) {
    if (need <= f->acap) return 0;
    int64_t cap = capacity_for(f->acap, need);
    GROW(f->adest, cap);
    GROW(f->aarc, cap);
    f->acap = cap;
    return 0;
}

static void FstPath_dealloc(FstPath *self) {
    free(self->off); free(self->ilabel); free(self->olabel); free(self->next);
    free(self->weight); free(self->final); free(self->first); free(self->can_end);
    free(self->hkey); free(self->hval);
    free(self->sq); free(self->spos); free(self->sout); free(self->adest); free(self->aarc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Reading OpenFst's binary VectorFst ("vector" fst type, "standard" arcs: tropical float32). */
typedef struct { const uint8_t *p, *end; } Reader;

static int take(Reader *r, void *out, size_t size) {
    if ((size_t)(r->end - r->p) < size) return -1;
    memcpy(out, r->p, size);
    r->p += size;
    return 0;
}

static int take_string(Reader *r, char *out, size_t cap) {
    int32_t len;
    if (take(r, &len, 4) < 0 || len < 0 || (size_t)len >= cap) return -1;
    if (take(r, out, (size_t)len) < 0) return -1;
    out[len] = 0;
    return 0;
}

#define FST_MAGIC 2125659606
#define HAS_SYMBOLS 0x3

static int read_vector_fst(FstPath *self, const uint8_t *data, size_t size) {
    Reader r = {data, data + size};
    int32_t magic, version, flags;
    uint64_t props;
    int64_t start, ns, na;
    char fst_type[64], arc_type[64];
    if (take(&r, &magic, 4) < 0 || magic != FST_MAGIC || take_string(&r, fst_type, sizeof fst_type) < 0 ||
        take_string(&r, arc_type, sizeof arc_type) < 0 || take(&r, &version, 4) < 0 ||
        take(&r, &flags, 4) < 0 || take(&r, &props, 8) < 0 || take(&r, &start, 8) < 0 ||
        take(&r, &ns, 8) < 0 || take(&r, &na, 8) < 0) {
        PyErr_SetString(PyExc_ValueError, "not an OpenFst binary fst");
        return -1;
    }
    if (strcmp(fst_type, "vector") || strcmp(arc_type, "standard") || (flags & HAS_SYMBOLS)) {
        PyErr_Format(PyExc_ValueError, "need a vector fst of standard arcs without symbol tables, got %s/%s",
                     fst_type, arc_type);
        return -1;
    }
    (void)na;  /* a vector fst's header does not count its arcs: count them first */
    if (ns <= 0 || ns > INT32_MAX - 1 || start < 0 || start >= ns) {
        PyErr_SetString(PyExc_ValueError, "empty fst, or its start state out of range");
        return -1;
    }
    const uint8_t *states = r.p;
    na = 0;
    for (int64_t q = 0; q < ns; q++) {
        float fw;
        int64_t narcs;
        if (take(&r, &fw, 4) < 0 || take(&r, &narcs, 8) < 0 || narcs < 0 ||
            (uint64_t)narcs > (uint64_t)(r.end - r.p) / 16)
            goto truncated;
        r.p += narcs * 16;
        na += narcs;
    }
    r.p = states;
    self->nstates = (int32_t)ns;
    self->start = (int32_t)start;
    self->off = malloc((size_t)(ns + 1) * sizeof(int64_t));
    self->final = malloc((size_t)ns * sizeof(float));
    self->ilabel = malloc((size_t)(na ? na : 1) * sizeof(int32_t));
    self->olabel = malloc((size_t)(na ? na : 1) * sizeof(int32_t));
    self->weight = malloc((size_t)(na ? na : 1) * sizeof(float));
    self->next = malloc((size_t)(na ? na : 1) * sizeof(int32_t));
    if (!self->off || !self->final || !self->ilabel || !self->olabel || !self->weight || !self->next) {
        PyErr_NoMemory();
        return -1;
    }
    int64_t a = 0;
    for (int64_t q = 0; q < ns; q++) {
        int64_t narcs;
        self->off[q] = a;
        if (take(&r, &self->final[q], 4) < 0 || take(&r, &narcs, 8) < 0 || narcs < 0 || narcs > na - a)
            goto truncated;
        for (int64_t k = 0; k < narcs; k++, a++) {
            if (take(&r, &self->ilabel[a], 4) < 0 || take(&r, &self->olabel[a], 4) < 0 ||
                take(&r, &self->weight[a], 4) < 0 || take(&r, &self->next[a], 4) < 0)
                goto truncated;
        }
    }
    self->off[ns] = a;
    if (a != na) goto truncated;
    return 0;
truncated:
    PyErr_SetString(PyExc_ValueError, "truncated or inconsistent OpenFst binary fst");
    return -1;
}

/* first[q] and can_end[q] over input-epsilon paths: a fixed point (any epsilon graph). */
static void close_over_epsilons(FstPath *f) {
    int32_t n = f->nstates;
    for (int32_t q = 0; q < n; q++) {
        uint8_t *m = f->first + (int64_t)q * 32;
        f->can_end[q] = isfinite(f->final[q]) ? 1 : 0;
        for (int64_t a = f->off[q]; a < f->off[q + 1]; a++) {
            int32_t l = f->ilabel[a];
            if (l > 0 && l < 256) m[l >> 3] |= (uint8_t)(1u << (l & 7));
        }
    }
    int changed = 1;
    while (changed) {
        changed = 0;
        for (int32_t q = n - 1; q >= 0; q--) {
            uint8_t *m = f->first + (int64_t)q * 32;
            for (int64_t a = f->off[q]; a < f->off[q + 1] && f->ilabel[a] == 0; a++) {
                int32_t r = f->next[a];
                const uint8_t *mr = f->first + (int64_t)r * 32;
                for (int k = 0; k < 32; k++) {
                    uint8_t v = m[k] | mr[k];
                    if (v != m[k]) { m[k] = v; changed = 1; }
                }
                if (f->can_end[r] && !f->can_end[q]) { f->can_end[q] = 1; changed = 1; }
            }
        }
    }
}

static int FstPath_init(FstPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", NULL};
    Py_buffer data;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &data)) return -1;
    if (self->off) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_RuntimeError, "FstPath is already initialised");
        return -1;
    }
    int rc = read_vector_fst(self, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (rc < 0) return -1;
    int32_t ns = self->nstates;
    self->lookahead = 1;
    for (int32_t q = 0; q < ns; q++) {
        for (int64_t a = self->off[q]; a < self->off[q + 1]; a++) {
            if (self->next[a] < 0 || self->next[a] >= ns || self->ilabel[a] < 0 || self->olabel[a] < 0) {
                PyErr_SetString(PyExc_ValueError, "arc with a bad label or destination");
                return -1;
            }
            if (a > self->off[q] && self->ilabel[a] < self->ilabel[a - 1]) {
                PyErr_SetString(PyExc_ValueError, "arcs must be sorted by input label");
                return -1;
            }
            if (self->ilabel[a] > 255) self->lookahead = 0;
        }
    }
    self->first = calloc((size_t)ns * 32, 1);
    self->can_end = calloc((size_t)ns, 1);
    if (!self->first || !self->can_end) {
        PyErr_NoMemory();
        return -1;
    }
    close_over_epsilons(self);
    return 0;
}

static inline int can_continue(const FstPath *f, const uint8_t *b, int64_t n, int64_t i, int32_t q) {
    if (i == n) return f->can_end[q];
    if (!f->lookahead) return 1;
    return (f->first[(int64_t)q * 32 + (b[i] >> 3)] >> (b[i] & 7)) & 1;
}

static inline uint64_t mix(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL; k ^= k >> 33;
    return k;
}

static int rehash(FstPath *f, int64_t cap) {
    uint64_t *key = calloc((size_t)cap, sizeof(uint64_t));
    int32_t *val = malloc((size_t)cap * sizeof(int32_t));
    if (!key || !val) { free(key); free(val); return -1; }
    for (int64_t j = 0; j < f->hcap; j++) {
        if (!f->hkey[j]) continue;
        uint64_t h = mix(f->hkey[j]) & (uint64_t)(cap - 1);
        while (key[h]) h = (h + 1) & (uint64_t)(cap - 1);
        key[h] = f->hkey[j];
        val[h] = f->hval[j];
    }
    free(f->hkey); free(f->hval);
    f->hkey = key; f->hval = val; f->hcap = cap;
    return 0;
}

/* Returns the composed id of (i, q), making it when new and worth making; -1: pruned; -2: no memory. */
static int32_t state_at(FstPath *f, const uint8_t *b, int64_t n, int64_t i, int32_t q, int64_t *count) {
    if (2 * (*count + 1) > f->hcap && rehash(f, f->hcap ? 2 * f->hcap : 1 << 14) < 0) return -2;
    uint64_t key = (((uint64_t)i << 32) | (uint32_t)q) + 1;
    uint64_t h = mix(key) & (uint64_t)(f->hcap - 1);
    while (f->hkey[h]) {
        if (f->hkey[h] == key) return f->hval[h];
        h = (h + 1) & (uint64_t)(f->hcap - 1);
    }
    if (!can_continue(f, b, n, i, q)) return -1;
    if (*count >= INT32_MAX - 1 || reserve_states(f, *count + 1) < 0) return -2;
    int32_t id = (int32_t)(*count)++;
    f->sq[id] = q;
    f->spos[id] = (int32_t)i;
    f->hkey[h] = key;
    f->hval[h] = id;
    return id;
}

static int add_arc(FstPath *f, int64_t *narcs, int32_t dest, int64_t arc) {
    if (reserve_arcs(f, *narcs + 1) < 0) return -1;
    f->adest[*narcs] = dest;
    f->aarc[*narcs] = arc;
    (*narcs)++;
    return 0;
}

/* Depth first from s0, arcs in order, skipping arcs into states where `keep` is 0 (NULL: none
 * skipped). Writes the post-order into `order` and returns its length; -1 when an arc closes a
 * cycle. */
static int64_t post_order(const FstPath *f, int32_t s0, int64_t count, const uint8_t *keep,
                          uint8_t *color, int32_t *stack, int64_t *arcpos, int32_t *order) {
    memset(color, 0, (size_t)count);
    int64_t top = 0, norder = 0;
    stack[top] = s0; arcpos[top] = f->sout[s0]; top++; color[s0] = 1;
    while (top) {
        int32_t s = stack[top - 1];
        int64_t a = arcpos[top - 1];
        if (a == f->sout[s + 1]) {
            color[s] = 2;
            top--;
            order[norder++] = s;
            continue;
        }
        arcpos[top - 1] = a + 1;
        int32_t d = f->adest[a];
        if (keep && !keep[d]) continue;
        if (color[d] == 1) return -1;
        if (color[d] == 0) {
            color[d] = 1; stack[top] = d; arcpos[top] = f->sout[d]; top++;
        }
    }
    return norder;
}

/* Steps 1-5 above. Returns a bytes object, None when there is no path, or raises
 * NotImplementedError where the reference's queue would be neither of the two followed here. */
static PyObject *FstPath_output(FstPath *f, PyObject *arg) {
    char *text;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &text, &n) < 0) return NULL;
    const uint8_t *b = (const uint8_t *)text;
    if (n >= INT32_MAX - 1) {
        PyErr_SetString(PyExc_ValueError, "input too long");
        return NULL;
    }
    if (f->hcap > (1 << 16) && f->hcap > 8 * f->hused) {
        /* a long text grew the table: clearing it for every short one would cost more */
        free(f->hkey); free(f->hval);
        f->hkey = NULL; f->hval = NULL; f->hcap = 0;
    } else if (f->hkey) {
        memset(f->hkey, 0, (size_t)f->hcap * sizeof(uint64_t));
    }
    int64_t count = 0, narcs = 0;
    PyObject *result = NULL;
    int32_t *stack = NULL, *order = NULL, *parent = NULL;
    int64_t *arcpos = NULL, *parc = NULL;
    uint8_t *color = NULL, *alive = NULL;
    float *dist = NULL;

    /* 1. states in creation order; each state's arcs are contiguous, in the fst's order */
    int32_t s0 = state_at(f, b, n, 0, f->start, &count);
    if (s0 == -2) goto nomem;
    if (s0 < 0) Py_RETURN_NONE;
    for (int32_t s = 0; s < count; s++) {
        int32_t q = f->sq[s];
        int64_t i = f->spos[s];
        f->sout[s] = narcs;
        int64_t a = f->off[q], end = f->off[q + 1];
        for (; a < end && f->ilabel[a] == 0; a++) {
            int32_t d = state_at(f, b, n, i, f->next[a], &count);
            if (d == -2) goto nomem;
            if (d >= 0 && add_arc(f, &narcs, d, a) < 0) goto nomem;
        }
        if (i < n) {
            int32_t want = b[i];
            int64_t lo = a, hi = end;  /* first arc with ilabel >= want */
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (f->ilabel[mid] < want) lo = mid + 1; else hi = mid;
            }
            for (a = lo; a < end && f->ilabel[a] == want; a++) {
                int32_t d = state_at(f, b, n, i + 1, f->next[a], &count);
                if (d == -2) goto nomem;
                if (d >= 0 && add_arc(f, &narcs, d, a) < 0) goto nomem;
            }
        }
    }
    f->sout[count] = narcs;
    /* creation order is not a topological order (epsilon arcs reach earlier states), but every
     * arc goes to the same or a later position */

    /* 2. alive = reaches a final state at position n; a state's successors come before it in
     * the post-order of a depth-first visit (an arc back to a state on the stack is a cycle) */
    color = malloc((size_t)count);
    alive = calloc((size_t)count, 1);
    stack = malloc((size_t)count * sizeof(int32_t));
    arcpos = malloc((size_t)count * sizeof(int64_t));
    order = malloc((size_t)count * sizeof(int32_t));
    if (!color || !alive || !stack || !arcpos || !order) goto nomem;
    int64_t norder = post_order(f, s0, count, NULL, color, stack, arcpos, order);
    if (norder < 0) goto unsupported;
    for (int64_t k = 0; k < norder; k++) {
        int32_t s = order[k];
        int ok = f->spos[s] == n && isfinite(f->final[f->sq[s]]);
        for (int64_t e = f->sout[s]; !ok && e < f->sout[s + 1]; e++) ok = alive[f->adest[e]];
        alive[s] = (uint8_t)ok;
    }
    if (!alive[s0]) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }

    /* 3. the post-order of the same visit over the trimmed lattice (arcs to dead states gone) */
    norder = post_order(f, s0, count, alive, color, stack, arcpos, order);
    int weighted = 0;
    for (int64_t k = 0; k < norder && !weighted; k++) {
        int32_t s = order[k];
        for (int64_t e = f->sout[s]; e < f->sout[s + 1]; e++) {
            float w = f->weight[f->aarc[e]];
            if (alive[f->adest[e]] && w != 0.0f && !isinf(w)) weighted = 1;
        }
    }
    /* 4. shortest path: a state's distance or the best final changes only when strictly
     * smaller. Weighted: states in reverse post-order, each taken once. Unweighted (every arc 0):
     * OpenFst's LIFO queue, each state pushed when first reached and taken from the top. */
    dist = malloc((size_t)count * sizeof(float));
    parent = malloc((size_t)count * sizeof(int32_t));
    parc = malloc((size_t)count * sizeof(int64_t));
    if (!dist || !parent || !parc) goto nomem;
    for (int64_t s = 0; s < count; s++) { dist[s] = INFINITY; parent[s] = -1; }
    dist[s0] = 0.0f;
    float best = INFINITY;
    int32_t best_state = -1;
    int64_t k = norder, top = 0;
    if (!weighted) { stack[top++] = s0; memset(color, 0, (size_t)count); color[s0] = 1; }
    for (;;) {
        int32_t s;
        if (weighted) {
            if (k == 0) break;
            s = order[--k];
        } else {
            if (top == 0) break;
            s = stack[--top];
            color[s] = 0;
        }
        float sd = dist[s];
        if (isinf(sd)) continue;  /* never reached: never queued */
        if (f->spos[s] == n) {
            float fw = f->final[f->sq[s]];
            if (!isinf(fw)) {
                float v = sd + fw;
                if (v < best) { best = v; best_state = s; }
            }
        }
        for (int64_t a = f->sout[s]; a < f->sout[s + 1]; a++) {
            int32_t d = f->adest[a];
            if (!alive[d]) continue;
            float w = f->weight[f->aarc[a]];
            float v = isinf(w) ? w : sd + w;
            if (v < dist[d]) {
                dist[d] = v; parent[d] = s; parc[d] = f->aarc[a];
                if (!weighted && !color[d]) { color[d] = 1; stack[top++] = d; }
            }
        }
    }
    if (best_state < 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }

    /* 5. the path's output labels, end to start, then reversed */
    {
        int64_t len = 0;
        for (int32_t s = best_state; s != s0; s = parent[s]) {
            if (parent[s] < 0) goto unsupported;
            if (f->olabel[parc[s]] != 0) len++;
        }
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (!result) goto done;
        char *out = PyBytes_AS_STRING(result);
        int64_t j = len;
        for (int32_t s = best_state; s != s0; s = parent[s]) {
            int32_t l = f->olabel[parc[s]];
            if (l == 0) continue;
            if (l > 255) { Py_DECREF(result); goto unsupported; }
            out[--j] = (char)l;
        }
    }
    goto done;

unsupported:
    PyErr_SetString(PyExc_NotImplementedError,
                    "a lattice this search does not follow (a cycle, or output labels above 255)");
    result = NULL;
    goto done;
nomem:
    PyErr_NoMemory();
    result = NULL;
done:
    f->hused = count;
    free(stack); free(order); free(parent); free(arcpos); free(parc);
    free(color); free(alive); free(dist);
    return result;
}

static PyMethodDef FstPath_methods[] = {
    {"output", (PyCFunction)FstPath_output, METH_O,
     "output(text: bytes) -> bytes | None: the cheapest path's output labels; None: no path. "
     "NotImplementedError: a lattice OpenFst would search in another order (a cycle)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FstPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "preprocess._fstpath.FstPath",
    .tp_basicsize = sizeof(FstPath),
    .tp_dealloc = (destructor)FstPath_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FstPath(data): an input-label-sorted fst, from OpenFst's binary vector format",
    .tp_methods = FstPath_methods,
    .tp_init = (initproc)FstPath_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_fstpath", .m_size = -1};

PyMODINIT_FUNC PyInit__fstpath(void) {
    if (PyType_Ready(&FstPathType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&FstPathType);
    if (PyModule_AddObject(m, "FstPath", (PyObject *)&FstPathType) < 0) {
        Py_DECREF(&FstPathType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
