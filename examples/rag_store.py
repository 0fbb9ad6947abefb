#!/usr/bin/env python3
"""A RAG store: documents in a TextVault (BM25), embeddings in a VectorKVault,
hybrid search over both.

Both stores live in one file. The embeddings are deterministic stand-ins
(a hashed bag of words, so the example needs no model): swap ``embed`` for a
real encoder. The two rankings are fused with reciprocal rank fusion
(Cormack, Clarke and Buettcher, SIGIR 2009: score = sum of 1 / (60 + rank)).

    python examples/rag_store.py --query "how do I rank search results"
"""
import argparse
import hashlib
import os
import re
import sys
import tempfile

import numpy as np

from kohakuvault import TextVault, VectorKVault

DIM = 256
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
DOCS = {
    "sqlite": "SQLite is an embedded SQL database engine that stores a whole database in one file.",
    "wal": "Write-ahead logging lets readers continue while a writer appends to the log file.",
    "bm25": "BM25 ranks search results by term frequency, inverse document frequency and length.",
    "fts5": "FTS5 is the SQLite module for full-text search with a built-in BM25 ranking function.",
    "cosine": "Cosine similarity compares the direction of two embedding vectors.",
    "knn": "Exact k nearest neighbour search compares the query vector with every stored vector.",
    "rag": "Retrieval augmented generation feeds retrieved passages to a language model.",
    "bread": "Knead the dough, let it rise for an hour, then bake the bread until golden.",
    "pasta": "Boil the pasta in salted water and toss it with garlic and olive oil.",
    "tea": "Green tea tastes best brewed below boiling water for two minutes.",
}
# Built-in queries and the document each must find first.
CHECKS = {
    "how are search results ranked": "bm25",
    "similar embedding vectors": "cosine",
    "bake bread dough": "bread",
    "one file database engine": "sqlite",
}


def words(text):
    return re.findall(r"\w+", text.lower())


def embed(text):
    """Hashed bag of words, L2-normalised (a deterministic fake embedding)."""
    v = np.zeros(DIM, dtype=np.float32)
    for w in words(text):
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        v[h % DIM] += 1.0 if (h >> 63) else -1.0
    n = np.linalg.norm(v)
    return v / n if n else v


def any_word_query(text):
    """FTS5 query matching any word of ``text``, each quoted (safe for user input)."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words(text))


def _rank(ranking, key):
    """1-based position of ``key`` in ``ranking``, or None."""
    return ranking.index(key) + 1 if key in ranking else None


class RagStore:
    def __init__(self, path):
        self.text = TextVault(path, table="passages")
        self.vectors = VectorKVault(path, table="passage_vectors", dimensions=DIM, metric="cosine")

    def add_many(self, docs):
        keys = list(docs)
        for key in keys:
            self.text.insert(docs[key], {"key": key})
        self.vectors.insert_many(np.stack([embed(docs[k]) for k in keys]), keys)

    def search(self, query, k=3, depth=10):
        """``[(key, fused score, bm25 rank, vector rank)]``, best first."""
        lexical = [v["key"] for _, _, v in self.text.search(any_word_query(query), k=depth,
                                                            escape=False)] if words(query) else []
        semantic = [v for _, _, v in self.vectors.search(embed(query), k=depth)]
        fused = {}
        for ranking in (lexical, semantic):
            for rank, key in enumerate(ranking, 1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
        best = sorted(fused.items(), key=lambda item: -item[1])[:k]
        return [(key, s, _rank(lexical, key), _rank(semantic, key)) for key, s in best]

    def close(self):
        self.text.close()
        self.vectors.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="vault file (default: a new temporary file)")
    ap.add_argument("--query", action="append",
                    help="query to run (repeatable); default: built-in queries with known answers")
    ap.add_argument("-k", type=int, default=3, help="results per query (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = RagStore(args.db or os.path.join(tmp, "rag.db"))
        if len(store.text) == 0:
            store.add_many(DOCS)
        print(f"{len(store.text)} passages indexed, {len(store.vectors)} embeddings of {DIM} dims")
        failures = 0
        for query in args.query or list(CHECKS):
            results = store.search(query, k=args.k)
            print(f"\nquery: {query!r}")
            for key, score, lex, sem in results:
                print(f"  {key:8s} fused={score:.4f} bm25_rank={lex} vector_rank={sem}")
            want = None if args.query else CHECKS[query]
            if want is not None and (not results or results[0][0] != want):
                print(f"  expected {want!r} first")
                failures += 1
        store.close()
    print("\nhybrid search check passed" if not failures else f"\n{failures} queries FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
