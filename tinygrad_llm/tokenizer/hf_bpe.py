"""The BPE model of a Hugging Face tokenizer.json: vocab, merges, byte fallback, unknown token.

Unlike BPETokenizer, whose merge i always makes id 256 + i, a tokenizer.json names every id in
its vocab and ranks the merges by their order in the file, so a merge carries both:

    merges  # (int, int) -> (rank, int): ("Ġ", "t") -> (0, id of "Ġt")

A piece becomes one symbol per character (a character missing from the vocab becomes its
<0xNN> byte tokens with byte_fallback, else the unknown token, else nothing, as in the library),
then merges apply lowest rank first, leftmost first among equals.  Each distinct piece is worked
out once and cached, as BPETokenizer does.
"""
import heapq
import itertools

from .errors import TokenizerFileError
from .hf_fields import get, refuse_set
from .trainer import merge_word

_CACHE_LIMIT = 1 << 20  # distinct pieces kept; past that the cache starts over (memory bound)
_CACHE_MAX_CHARS = 256  # longer pieces are worked out each time, never kept
_SHORT = 48  # pieces up to this many symbols: rescan the pairs; longer: a heap, as the library


class HFBPE:
    def __init__(self, node, where, final_map=None):
        refuse_set(node, where, "dropout")
        refuse_set(node, where, "continuing_subword_prefix", (None, ""))
        refuse_set(node, where, "end_of_word_suffix", (None, ""))
        vocab = get(node, where, "vocab", dict)
        for token, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 1 << 31:
                raise TokenizerFileError(f"{where}.vocab[{token!r}] must be an id in 0..2**31-1, got {i!r}")
        self.vocab = vocab  # str -> int
        self.unk_token = get(node, where, "unk_token", str, None)
        if self.unk_token is not None and self.unk_token not in vocab:
            raise TokenizerFileError(f"{where}.unk_token {self.unk_token!r} is not in {where}.vocab")
        self.unk_id = vocab.get(self.unk_token)
        self.fuse_unk = get(node, where, "fuse_unk", bool, False)
        self.byte_fallback = get(node, where, "byte_fallback", bool, False)
        self.ignore_merges = get(node, where, "ignore_merges", bool, False)
        self.merges = self._read_merges(get(node, where, "merges", list, []), f"{where}.merges")
        self.final_map = final_map  # applied to a piece before BPE (the byte-level mapping)
        self._fallback = {b: vocab.get(f"<0x{b:02X}>") for b in range(256)}
        self._heap_only = not self._ranks_are_ordered()
        self._cache = {}  # str -> [int]

    def _read_merges(self, merges, where):
        vocab, out = self.vocab, {}
        for rank, m in enumerate(merges):
            if isinstance(m, str):
                parts = m.split(" ")
            elif isinstance(m, list) and all(isinstance(p, str) for p in m):
                parts = m
            else:
                raise TokenizerFileError(f"{where}[{rank}] must be \"a b\" or [\"a\", \"b\"], got {m!r:.60}")
            if len(parts) != 2:
                raise TokenizerFileError(f"{where}[{rank}] {m!r:.60} is not two tokens")
            a, b = parts
            ids = vocab.get(a), vocab.get(b), vocab.get(a + b)
            if None in ids:
                missing = next(t for t, i in zip((a, b, a + b), ids) if i is None)
                raise TokenizerFileError(f"{where}[{rank}] {m!r:.60}: token {missing!r:.40} is not in the vocab")
            out[(ids[0], ids[1])] = (rank, ids[2])  # as in the library, a repeated pair keeps its last rank
        return out  # (int, int) -> (rank, int)

    def _ranks_are_ordered(self):
        """True when every merge ranks after the merges that make its parts, as trained files do.

        Then a merge never makes a pair that ranks before it, and merging every (a, b) of a piece
        at once (cheap in Python) gives exactly the library's one-at-a-time order."""
        made_at = {}  # id -> latest rank that makes it
        for rank, new in self.merges.values():
            made_at[new] = max(made_at.get(new, -1), rank)
        return all(made_at.get(a, -1) < rank and made_at.get(b, -1) < rank
                   for (a, b), (rank, _) in self.merges.items())

    def encode_pieces(self, pieces):
        """[str] -> [int], through the cache.  A piece longer than _CACHE_MAX_CHARS (a whole
        document, where the file has no pre-tokenizer) is not kept: the cache stays bounded."""
        cache, final_map = self._cache, self.final_map
        missing = set(pieces).difference(cache) if pieces else ()
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                cache.clear()
                missing = set(pieces)
            long = {}
            for p in missing:
                ids = self._encode_piece(final_map(p) if final_map else p)
                (cache if len(p) <= _CACHE_MAX_CHARS else long)[p] = ids
            if long:
                return list(itertools.chain.from_iterable(cache[p] if p in cache else long[p] for p in pieces))
        return list(itertools.chain.from_iterable(map(cache.__getitem__, pieces)))

    def _encode_piece(self, text):
        vocab = self.vocab
        if self.ignore_merges and text in vocab:
            return [vocab[text]]
        ids, unk = [], None
        for c in text:
            i = vocab.get(c)
            if i is not None:
                if unk is not None:
                    ids.append(unk)
                    unk = None
                ids.append(i)
                continue
            if self.byte_fallback:
                fallback = [self._fallback[b] for b in c.encode("utf-8", "surrogatepass")]
                if None not in fallback:
                    ids.extend(fallback)
                    continue
            if self.unk_id is not None:
                if unk is not None and not self.fuse_unk:
                    ids.append(unk)
                unk = self.unk_id
        if unk is not None:
            ids.append(unk)
        if len(ids) < 2 or not self.merges:
            return ids
        if len(ids) <= _SHORT and not self._heap_only:
            return self._merge_rescan(ids)
        return self._merge_heap(ids)

    def _merge_rescan(self, ids):
        merges, none = self.merges, (1 << 62, None)
        while len(ids) >= 2:
            best = min(itertools.pairwise(ids), key=lambda p: merges.get(p, none)[0])
            new = merges.get(best, none)[1]
            if new is None:
                break
            ids = merge_word(ids, best[0], best[1], new)
        return ids

    def _merge_heap(self, ids):
        """The library's Word::merge_all: a heap of (rank, position), symbols as a linked list."""
        merges, n = self.merges, len(ids)
        sym = list(ids)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(merges[p][0], i, merges[p][1]) for i, p in enumerate(itertools.pairwise(ids)) if p in merges]
        heapq.heapify(heap)
        while heap:
            _, i, new = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j < 0 or merges.get((sym[i], sym[j]), (None, None))[1] != new:
                continue
            sym[i] = new
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            for a, b in ((prv[i], i), (i, nxt[i])):
                if a >= 0 and b >= 0 and (sym[a], sym[b]) in merges:
                    r, m = merges[(sym[a], sym[b])]
                    heapq.heappush(heap, (r, a, m))
        return [s for s, keep in zip(sym, alive) if keep]
