"""Training: learn merges from chunk counts, updating only what each merge touches.

The naive trainer (minbpe) recounts every pair of the whole corpus for every merge:
O(corpus x merges).  Here each distinct chunk is kept once with its frequency, and three
structures are kept up to date instead of recounted:

    pair_counts  # (int, int) -> int    occurrences of each adjacent pair, weighted by chunk frequency
    where        # (int, int) -> set    indices of the chunks that (may) contain the pair
    heap         # [(-count, (int, int))]  max-heap by count, entries go stale lazily

A merge rewrites only the chunks in where[pair]; their old pairs are subtracted and their new
pairs added.  Counts of pairs that do not contain the new token can only go down, and the new
token's pairs only appear now, so a heap entry is never below its pair's true count: popping an
entry whose count is stale means "push the true count back and pop again".

Tie rule (documented, and the reference trainer in the tests must follow it): the pair with the
highest count wins; among equal counts, the smallest pair (a, b) of token ids, compared as a
tuple.  That is exactly the order of the heap key (-count, (a, b)).

Worked example, chunks {"aaab": 1, "ab": 2}, i.e. ids [97,97,97,98] x1 and [97,98] x2:

    pair counts: (97,97): 2, (97,98): 1 + 2 = 3           -> merge (97,98) into 256
    chunks now [97,97,256] x1 and [256] x2
    pair counts: (97,97): 1, (97,256): 1                  -> tie at 1: (97,97) < (97,256)
    merge (97,97) into 257; chunks [257,256] x1, [256] x2 ...
"""
import heapq
import sys
import time


def count_pairs(words, freqs):
    """(int, int) -> int over all chunks, weighted; and (int, int) -> set of chunk indices."""
    pair_counts = {}  # (int, int) -> int
    where = {}  # (int, int) -> set of int
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + f
            s = where.get(p)
            if s is None:
                where[p] = {i}
            else:
                s.add(i)
    return pair_counts, where


def merge_word(w, a, b, idx):
    """Replace every non-overlapping (a, b) in w, left to right, by idx: [1,1,1], (1,1) -> [idx,1]."""
    out = []
    i, n = 0, len(w)
    while i < n:
        if i < n - 1 and w[i] == a and w[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(w[i])
            i += 1
    return out


def train_merges(words, freqs, num_merges, first_id=256, verbose=False, vocab=None, log=sys.stderr):
    """Learn up to num_merges merges from distinct chunks `words` (lists of int) seen `freqs` times.

    Returns [(a, b), ...]; merge i makes token first_id + i.  Stops early (fewer merges) when no
    pair is left, e.g. a corpus too small for the vocabulary asked for.  `words` is rewritten in
    place.  `vocab` (int -> bytes), if given, only serves the progress line.
    """
    pair_counts, where = count_pairs(words, freqs)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges = []  # [(int, int)]
    t0 = last = time.perf_counter()
    while len(merges) < num_merges and heap:
        negc, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if -negc != count:  # stale entry: the count went down since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        idx = first_id + len(merges)
        merges.append(pair)
        new_pairs = set()  # pairs that contain idx; pushed once, with their final counts
        for wi in where.pop(pair):
            w = words[wi]
            if len(w) == 2:  # the common case of a chunk that becomes one token
                if w[0] != a or w[1] != b:
                    continue
                new = [idx]
            else:
                new = merge_word(w, a, b, idx)
                if len(new) == len(w):  # where[] is lazy: the pair left this chunk earlier
                    continue
            f = freqs[wi]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
            for p in zip(new, new[1:]):
                if p[0] == idx or p[1] == idx:
                    pair_counts[p] = pair_counts.get(p, 0) + f
                    new_pairs.add(p)
                    s = where.get(p)
                    if s is None:
                        where[p] = {wi}
                    else:
                        s.add(wi)
                else:  # an old neighbour pair the merge left alone: it was subtracted above
                    pair_counts[p] += f
            words[wi] = new
        del pair_counts[pair]
        for p in new_pairs:
            heapq.heappush(heap, (-pair_counts[p], p))
        if verbose:
            now = time.perf_counter()
            if now - last > 1.0 or len(merges) == num_merges:
                last = now
                shown = f" {vocab[a] + vocab[b]!r}" if vocab is not None else ""
                print(f"merge {len(merges)}/{num_merges}: {pair} -> {idx}{shown} count {count}"
                      f" ({now - t0:.1f} s)", file=log, flush=True)
        if vocab is not None:
            vocab[idx] = vocab[a] + vocab[b]
    return merges
