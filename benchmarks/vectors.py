"""A synthetic 100,000 x 768 halfvec table for the nearest-neighbour and duplicate
benchmarks: clustered vectors (1,000 clusters, within-cluster similarity about 0.5),
1% groups for filtered queries (in ``group``, indexed, and again in ``bucket``, not
indexed), and 1,000 planted near-duplicate pairs (similarity
about 0.98). Loaded once into tests.testapp.Passage with COPY, then indexed with
HNSW (m=16, ef_construction=64); later runs reuse it when the seed and size match.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

ROWS = 100_000
DIMENSIONS = 768
CLUSTERS = 1_000
GROUPS = 100
PLANTED = 1_000
SEED = 7


def make(rows: int = ROWS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Unit vectors (rounded to float16, as stored), their groups, and planted pairs (row indexes)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLUSTERS, DIMENSIONS)).astype(np.float32)
    base = rows - PLANTED
    vectors = centers[rng.integers(0, CLUSTERS, size=base)] + rng.normal(size=(base, DIMENSIONS)).astype(np.float32)
    originals = rng.choice(base, size=PLANTED, replace=False)
    copies = vectors[originals] + 0.3 * rng.normal(size=(PLANTED, DIMENSIONS)).astype(np.float32)
    vectors = np.vstack([vectors, copies])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16).astype(np.float32)
    groups = np.arange(rows) % GROUPS
    planted = [(int(a), base + i) for i, a in enumerate(originals)]
    return vectors, groups, planted


def queries(count: int, seed: int = SEED + 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(SEED).normal(size=(CLUSTERS, DIMENSIONS)).astype(np.float32)
    q = centers[rng.integers(0, CLUSTERS, size=count)] + rng.normal(size=(count, DIMENSIONS)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def load(vectors: np.ndarray, groups: np.ndarray, seed: int = SEED) -> list[int]:
    """Fill Passage with the vectors (unless already there); returns the row ids in order."""
    from django.db import connection
    from django.db.models import F
    from pgvector import HalfVector

    from semantic.registry import get_embedding_field
    from tests.testapp.models import Passage

    marker = f"seed {seed} rows {len(vectors)}"
    field = get_embedding_field(Passage)
    loaded = Passage.objects.filter(pk=1, text__startswith=marker).exists() and Passage.objects.count() == len(vectors)
    # A table loaded before ``bucket`` existed holds zeros there: load it again.
    if loaded and not Passage.objects.exclude(bucket=F("group")).exists():
        return list(range(1, len(vectors) + 1))
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE testapp_passage RESTART IDENTITY")
        cursor.execute("DROP INDEX IF EXISTS passage_embedding_hnsw")
        # Hash and spec written in the COPY, not by an UPDATE after it, which left a dead
        # copy of every row and a table twice its size for sequential scans to read.
        columns = 'text, "group", bucket, embedding, embedding_embedded_hash, embedding_spec'
        with cursor.copy(f"COPY testapp_passage ({columns}) FROM STDIN") as copy:
            for i, (vector, group) in enumerate(zip(vectors, groups)):
                text = f"{marker} #{i}"
                digest = hashlib.md5(text.encode()).hexdigest()
                copy.write_row((text, int(group), int(group), HalfVector(vector).to_text(), digest, field.spec()))
        loaded = time.monotonic() - started
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
        cursor.execute(
            "CREATE INDEX passage_embedding_hnsw ON testapp_passage "
            "USING hnsw (((embedding)::halfvec(768)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) "
            "WHERE vector_dims(embedding) = 768"
        )
        cursor.execute("VACUUM ANALYZE testapp_passage")
    print(f"loaded {len(vectors)} rows in {loaded:.0f}s, HNSW built in {time.monotonic() - started - loaded:.0f}s")
    return list(range(1, len(vectors) + 1))
