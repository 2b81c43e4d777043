"""A KeywordIndex holds the words of a bounded prefix of the text (semantic.keyword_index).

PostgreSQL refuses a ``tsvector`` over 1 MB, and a text of many distinct words (a log
dump, a data table, base64, a long document in several scripts) reaches that in about
170,000 characters: without the bound, saving such a row, or adding the index to a table
that holds one, fails.
"""

import random
import string

import pytest
from django.db import connection, migrations
from django.db.migrations.state import ProjectState

from semantic import embed_pending, hybrid
from semantic.keyword import keyword_search
from tests.docsapp.models import Doc, Page

pytestmark = pytest.mark.django_db(transaction=True)


def distinct_words(count: int) -> str:
    """``count`` distinct eight-letter words, 9 characters each: 1.8 MB of ``tsvector``."""
    rng = random.Random(1)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(count))


@pytest.fixture(scope="module")
def long_text():
    return "The zyxquartz module was renamed. " + distinct_words(150_000)


@pytest.mark.parametrize("model", [Doc, Page], ids=["stored column", "expression"])
def test_a_row_of_150000_distinct_words_saves_and_is_found_by_a_word_near_its_start(model, long_text):
    row = model.objects.create(title="Big log", text=long_text)
    model.objects.create(title="Gardening", text="Tomatoes need sun, water and a stake to climb.")
    assert list(keyword_search(model.objects.all(), "zyxquartz").values_list("pk", flat=True)) == [row.pk]
    embed_pending()
    assert next(iter(hybrid(model.objects.all(), "zyxquartz module"))).pk == row.pk


def test_adding_the_index_to_a_table_that_holds_such_a_row_works(long_text):
    (index,) = [index for index in Page._meta.indexes if index.name == "page_keywords"]
    state = ProjectState.from_apps(Page._meta.apps)
    with connection.schema_editor() as editor:
        editor.remove_index(Page, index)
    row = Page.objects.create(title="Big log", text=long_text)
    add = migrations.AddIndex("page", index)
    after = state.clone()
    add.state_forwards("docsapp", after)
    with connection.schema_editor() as editor:
        add.database_forwards("docsapp", editor, state, after)
    assert list(keyword_search(Page.objects.all(), "zyxquartz").values_list("pk", flat=True)) == [row.pk]
