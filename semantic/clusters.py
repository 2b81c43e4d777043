"""Groups of similar rows ("topics") over any queryset, with sizes, examples and labels.

Vectors are read from the database in batches (:mod:`semantic.streaming`) and
scaled to unit length, so k-means groups by cosine similarity. Up to
``IN_MEMORY_ROWS`` rows, scikit-learn's ``KMeans`` runs on all of them at once (the
rows x dimensions float32 array is then small); above, ``MiniBatchKMeans`` learns
from the stream with ``partial_fit`` over ``EPOCHS`` passes and never holds more
than one batch. A last pass assigns every row to its nearest centre.

Each group gets:

- its size and its most typical rows (nearest its centre);
- a short label: the words that most set its texts apart from the whole queryset,
  counted by PostgreSQL's text search parser (``to_tsvector``; the stop words of a
  text search configuration dropped: ``config``, else the model's KeywordIndex's, else
  ``english``) on the text in Unicode NFC, and in Chinese and Japanese, which put no
  space between words, the pairs of characters (see :func:`distinctive_words`); or
  the most typical row's text when the text is not in columns;
- with ``date_field``, rows per day, week or month and the growth between the last
  two periods that have ended (the current one is still filling: against a whole
  period, a steady stream would look like a fall). Periods are cut in the current
  time zone, as Django's ``TruncDate``/``TruncWeek`` cut them, and run without a gap
  from the first row's to the current one, so a quiet period is a 0 and growth
  always compares the two periods just before the current one.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from django.db import connections, models
from django.utils import timezone

from semantic.fields import EmbeddingField
from semantic.keyword_index import keyword_index
from semantic.streaming import BATCH_SIZE, normalised, sample_order, sample_vectors, vector_batches
from semantic.switch import serving_field

IN_MEMORY_ROWS = 50_000
EPOCHS = 3
#: Rows k is chosen on, and the largest k tried, when k is not given.
SAMPLE_ROWS = 2_000
MAX_AUTO_K = 20
#: k-means runs from different starts, of which the best is kept: one run can merge
#: two topics and split another (mini-batches started from it cannot undo that).
KMEANS_INITS = 10
#: The same, for each candidate k while choosing one. One start made the choice follow
#: the rows' order: on 45 Banking77 messages of three intents, 2 in 60 shuffles chose 4
#: groups, with three starts none; 1.7 times the time of one start (1.91 s for 2,000
#: messages; benchmarks/choose_k.py, docs/benchmarks.md).
CHOOSE_K_INITS = 3
TYPICAL_ROWS = 3
LABEL_WORDS = 3
#: Characters of scripts written without spaces between words, in a PostgreSQL regular
#: expression: kana, and CJK ideographs (extension A, unified, compatibility).
UNSPACED = r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
PERIODS = ("day", "week", "month")


@dataclass
class Cluster:
    """One group of similar rows."""

    number: int
    size: int
    label: str
    words: list[str]
    #: The rows nearest the centre, nearest first.
    typical: list[Any]  # the model's rows (Any: a type checker cannot know the model)
    pks: list[Any]
    #: ``(period start, rows)`` for every period from the queryset's first to the current one,
    #: oldest first, 0 where the group has no row (with ``date_field``).
    trend: list[tuple[date, int]] = dataclass_field(default_factory=list)
    #: The two periods growth compares, ``(start, rows)`` each: the last two that have ended.
    compared: tuple[tuple[date, int], tuple[date, int]] | None = None
    #: Relative change of rows from the first to the second of them; None without a base.
    growth: float | None = None


def cluster(
    queryset: models.QuerySet,
    *,
    field: str | None = None,
    k: int | None = None,
    date_field: str | None = None,
    period: str = "week",
    typical: int = TYPICAL_ROWS,
    batch_size: int = BATCH_SIZE,
    streaming: bool | None = None,
    seed: int = 0,
    today: date | None = None,
    config: str | None = None,
) -> list[Cluster]:
    """The rows of ``queryset`` that have a vector, in ``k`` groups, largest first.

    With ``date_field``, growth compares the last two periods that ended before the
    one holding ``today`` (default: today in the current time zone).

    ``k`` is chosen when not given: the number of groups from 2 to ``MAX_AUTO_K``
    with the best silhouette (cosine) on a sample of ``SAMPLE_ROWS`` rows, or one
    group when none splits the sample (rows that repeat one text).
    ``streaming`` chooses mini-batch k-means over batches of ``batch_size`` rows
    (default: above ``IN_MEMORY_ROWS`` rows). ``config`` is the PostgreSQL text search
    configuration whose stop words labels leave out ("german", "simple" for none); by
    default the model's KeywordIndex's, else "english".
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}.")
    model = queryset.model
    embedding = serving_field(model, field)
    if date_field is not None:
        check_date_field(model, date_field)
    rows = queryset.filter(embedding.searchable())
    total = rows.count()
    if total < 2:
        raise ValueError(f"Clustering needs at least two rows with vectors; the queryset has {total}.")
    if k is None:
        k = choose_k(rows, embedding, seed=seed)
    elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
        raise ValueError(f"k must be an integer from 1 to the number of rows ({total}), not {k!r}.")
    if streaming is None:
        streaming = total > IN_MEMORY_ROWS
    centres = fit(rows, embedding, k, total=total, batch_size=batch_size, streaming=streaming, seed=seed)

    extra = (date_field,) if date_field else ()
    assigned_pks: list[Any] = []
    assigned: list[int] = []
    dates: list[Any] = []
    nearest: list[list[tuple[float, int, Any]]] = [[] for _ in range(k)]
    order = 0
    for batch in vector_batches(rows, embedding, batch_size, extra=extra):
        similarities = normalised(batch.vectors) @ centres.T
        groups = similarities.argmax(axis=1)
        for pk, group, row, values in zip(batch.pks, groups, similarities, batch.extra):
            assigned_pks.append(pk)
            assigned.append(int(group))
            if date_field:
                dates.append(values[0])
            # Keep the ``typical`` most similar per group; ``order`` breaks ties stably.
            entry = (float(row[group]), -order, pk)
            heap = nearest[group]
            if len(heap) < typical:
                heapq.heappush(heap, entry)
            else:
                heapq.heappushpop(heap, entry)
            order += 1

    members: dict[int, list[Any]] = {}
    for pk, group in zip(assigned_pks, assigned):
        members.setdefault(group, []).append(pk)
    if config is None:
        index = keyword_index(model) or keyword_index(embedding.model)
        config = index.config if index is not None else "english"
    words = distinctive_words(rows, embedding, assigned_pks, assigned, config) if text_columns(model, embedding) else {}
    typical_pks = {group: [pk for _, _, pk in sorted(heap, reverse=True)] for group, heap in enumerate(nearest)}
    objects = model._default_manager.using(rows.db).in_bulk([pk for pks in typical_pks.values() for pk in pks])
    current = period_start(today or timezone.now(), period)
    trends = trend_by_group(assigned, dates, period, current) if date_field else {}

    found = []
    for group, pks in members.items():
        examples = [objects[pk] for pk in typical_pks[group] if pk in objects]
        group_words = words.get(group, [])
        label = ", ".join(group_words) if group_words else (str(examples[0]) if examples else "")
        trend = trends.get(group, [])
        pair = compared(trend, current)
        found.append(
            Cluster(
                number=0,
                size=len(pks),
                label=label,
                words=group_words,
                typical=examples,
                pks=pks,
                trend=trend,
                compared=pair,
                growth=growth(pair),
            )
        )
    found.sort(key=lambda c: (-c.size, c.label))
    for number, group_found in enumerate(found, start=1):
        group_found.number = number
    return found


def sample_rows(
    queryset: models.QuerySet, *, field: str | None = None, limit: int, seed: int = 0
) -> tuple[models.QuerySet, int]:
    """At most ``limit`` of the queryset's rows that have a vector, and how many have one.

    The sample is the first ``limit`` rows in :func:`~semantic.streaming.sample_order`,
    so it is the same rows while the rows are unchanged: clustering it again with the
    same ``k`` and seed finds the same groups. Its keys are read once and the rows
    narrowed to them, so every pass of :func:`cluster` reads only the sample.
    """
    embedding = serving_field(queryset.model, field)
    rows = queryset.filter(embedding.searchable())
    total = rows.count()
    if total <= limit:
        return queryset, total
    pks = list(rows.order_by(sample_order(seed)).values_list("pk", flat=True)[:limit])
    return queryset.filter(pk__in=pks), total


def fit(
    rows: models.QuerySet, embedding: EmbeddingField, k: int, *, total: int, batch_size: int, streaming: bool, seed: int
) -> np.ndarray:
    """The ``k`` centres, unit length, as a k x dimensions array."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if not streaming:
        vectors = np.empty((total, embedding.dimensions), dtype=np.float32)
        filled = 0
        for batch in vector_batches(rows, embedding, batch_size):
            size = min(len(batch.pks), total - filled)
            vectors[filled : filled + size] = normalised(batch.vectors[:size])
            filled += size
        estimator = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_INITS).fit(vectors[:filled])
    else:
        # Start from k-means on a sample: partial_fit would otherwise start from the
        # first batch, whose rows (in primary-key order) may all share a topic.
        start = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_INITS).fit(
            sample_vectors(rows, embedding, max(SAMPLE_ROWS, 10 * k), seed=seed)
        )
        # No reassignment: a batch in primary-key order may lack some topics, whose
        # centres would look unused and be moved.
        estimator = MiniBatchKMeans(
            n_clusters=k, init=start.cluster_centers_, n_init=1, reassignment_ratio=0.0, random_state=seed
        )
        for _ in range(EPOCHS):
            for batch in vector_batches(rows, embedding, batch_size):
                estimator.partial_fit(normalised(batch.vectors))
    return normalised(estimator.cluster_centers_.astype(np.float32))


def choose_k(rows: models.QuerySet, embedding: EmbeddingField, *, seed: int) -> int:
    """The k from 2 to ``MAX_AUTO_K`` whose groups have the best silhouette on a sample;
    1 when no k splits the sample, as when its rows repeat one text (their vectors are
    the same, and k-means puts them all in one group whatever k it is asked for)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    vectors = sample_vectors(rows, embedding, SAMPLE_ROWS, seed=seed)
    candidates = range(2, min(MAX_AUTO_K, len(vectors) - 1) + 1)
    scores = {}
    for k in candidates:
        with warnings.catch_warnings():
            # Fewer distinct vectors than k: a trial that finds fewer groups says so, and is skipped below.
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(n_clusters=k, random_state=seed, n_init=CHOOSE_K_INITS).fit_predict(vectors)
        if len(set(labels.tolist())) > 1:  # a silhouette needs two groups at least
            scores[k] = silhouette_score(vectors, labels, metric="cosine")
    if not scores:
        return 1
    return max(scores, key=lambda k: (scores[k], -k))


def text_columns(model: type[models.Model], embedding: EmbeddingField) -> list[str]:
    """The columns the field's text comes from, or none when a method makes it."""
    if embedding.text_from_python():
        return []
    return [model._meta.get_field(name).column for name in embedding.source]


def distinctive_words(
    rows: models.QuerySet, embedding: EmbeddingField, pks: list[Any], groups: list[int], config: str = "english"
) -> dict[int, list[str]]:
    """Each group's ``LABEL_WORDS`` words most over-represented against the whole set.

    PostgreSQL splits the texts into words (``to_tsvector('simple', ...)``: lower
    case, unstemmed, so labels read as written) and counts, per group, the rows
    each word appears in; a word the ``config`` configuration drops is a stop word. A
    word scores its share of the group's rows times how much more often it appears
    there than overall (its contribution to the groups' Kullback-Leibler divergence).

    The text is first put in NFC, so a word stored precomposed and one stored
    decomposed (``brûlée`` from macOS or a PDF) are one word, not two label slots.
    Chinese and Japanese have no spaces: the parser takes a whole clause for one
    "word" that no other row repeats, so runs of their characters count by the pairs
    of characters in them instead (most words there are two characters long, and a
    shared pair is mostly a shared word).
    """
    # The table that declares the field holds the text: a multi-table child's rows are
    # its parent's rows, under the same primary keys.
    model = embedding.model
    connection = connections[rows.db]
    quote = connection.ops.quote_name
    pk = model._meta.pk
    text = "concat_ws(' ', " + ", ".join(f"t.{quote(c)}" for c in text_columns(model, embedding)) + ")"
    # The database is UTF8 (semantic.E013), which normalize() and UNSPACED's escapes need.
    words = f"""
        SELECT word FROM unnest(tsvector_to_array(to_tsvector('simple', b.body))) AS word
        WHERE length(word) > 2 AND word !~ '^[0-9]' AND to_tsvector(%s::regconfig, word) <> ''::tsvector
        AND word !~ '{UNSPACED}'
        UNION ALL
        SELECT substr(m.run[1], i, 2) FROM regexp_matches(b.body, '{UNSPACED}+', 'g') AS m(run),
        generate_series(1, length(m.run[1]) - 1) AS i
    """
    sql = f"""
        SELECT a.grp, w.word, count(*)
        FROM unnest(%s::{pk.rel_db_type(connection)}[], %s::int[]) AS a(pk, grp)
        JOIN {quote(model._meta.db_table)} t ON t.{quote(pk.column)} = a.pk
        CROSS JOIN LATERAL (SELECT normalize({text}, NFC) AS body) b
        CROSS JOIN LATERAL (SELECT DISTINCT word FROM ({words}) words) w
        GROUP BY a.grp, w.word
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [pks, groups, config])
        counts = cursor.fetchall()
    sizes = Counter(groups)
    overall: Counter[str] = Counter()
    for _, word, count in counts:
        overall[word] += count
    total = len(pks)
    scored: dict[int, list[tuple[float, str]]] = {}
    for group, word, count in counts:
        if count < 2 and sizes[group] > 2:
            continue
        inside = count / sizes[group]
        everywhere = overall[word] / total
        scored.setdefault(group, []).append((inside * math.log(inside / everywhere), word))
    return {
        group: [word for _, word in sorted(found, key=lambda s: (-s[0], s[1]))[:LABEL_WORDS]]
        for group, found in scored.items()
    }


def check_date_field(model: type[models.Model], name: str) -> None:
    try:
        found = model._meta.get_field(name)
    except Exception:
        raise ValueError(f"{model._meta.label} has no field {name!r}.") from None
    if not isinstance(found, (models.DateField, models.DateTimeField)):
        raise ValueError(f"{model._meta.label}.{name} is not a date or date-time field.")


def period_start(value: date | datetime, period: str) -> date:
    if isinstance(value, datetime) and timezone.is_aware(value):
        # Aware values (USE_TZ) come back in UTC; the user's day starts at their midnight.
        value = timezone.localtime(value)
    day = value.date() if isinstance(value, datetime) else value
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def next_period(start: date, period: str) -> date:
    if period == "week":
        return start + timedelta(days=7)
    if period == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=1)


def trend_by_group(
    groups: list[int], dates: list[Any], period: str, current: date
) -> dict[int, list[tuple[date, int]]]:
    """Rows per period for each group, over every period from the whole set's first to
    ``current`` (or its last, if later): a period no row falls in is a 0, not missing,
    so the last two entries before ``current`` are the two periods just before it."""
    counts: Counter[tuple[int, date]] = Counter()
    starts: set[date] = set()
    for group, value in zip(groups, dates):
        if value is None:
            continue
        start = period_start(value, period)
        starts.add(start)
        counts[(group, start)] += 1
    ordered: list[date] = []
    if starts:
        start, last = min(starts), max(*starts, current)
        while start <= last:
            ordered.append(start)
            start = next_period(start, period)
    return {group: [(start, counts[(group, start)]) for start in ordered] for group in set(groups)}


def compared(trend: list[tuple[date, int]], current: date) -> tuple[tuple[date, int], tuple[date, int]] | None:
    """The last two periods of ``trend`` that have ended: the one starting ``current`` has not."""
    ended = [entry for entry in trend if entry[0] < current]
    return (ended[-2], ended[-1]) if len(ended) >= 2 else None


def growth(pair: tuple[tuple[date, int], tuple[date, int]] | None) -> float | None:
    if pair is None or not pair[0][1]:
        return None
    (_, before), (_, after) = pair
    return (after - before) / before
