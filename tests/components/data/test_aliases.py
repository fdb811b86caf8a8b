"""Surface forms of a knowledge base (titles and base names) and finding them in text: every
mention of a sentence, and the mention a written text has just ended with."""

from components.data.aliases import Matcher, base_name, continues_word, surface_forms
from components.data.schema import Document

DOCS = [Document(id=t, title=t, text=f"About {t}.") for t in ["Crane (bird)", "Crane (machine)", "Africa", "Austin, Texas", "Go", "South Africa"]]
CRANES = ["Crane (bird)", "Crane (machine)"]


def test_base_names_drop_the_qualifier():
    assert base_name("Crane (bird)") == "Crane"
    assert base_name("Austin, Texas") == "Austin"
    assert base_name("Washington, D.C.") == "Washington"
    assert base_name("Africa") == "Africa"


def test_surface_forms_name_every_article_they_could_mean():
    forms = surface_forms(DOCS)
    assert forms["Crane"] == forms["crane"] == CRANES  # a shared base name is a common noun
    assert forms["Crane (bird)"] == ["Crane (bird)"] and forms["Austin"] == ["Austin, Texas"]
    assert "africa" not in forms  # an unshared name matches only as written
    assert "Go" not in forms  # too short


def test_matching_is_leftmost_longest_on_whole_words():
    found = [(s, e, ids) for s, e, ids in Matcher.of(DOCS)("A crane in South Africa; cranes and crane-like birds.")]
    assert found == [(2, 7, CRANES), (11, 23, ["South Africa"])]


def test_the_ending_is_the_longest_form_the_text_ends_with():
    ending = Matcher.of(DOCS).ending
    assert ending("The crane") == (4, CRANES)
    assert ending("He flew to South Africa") == (11, ["South Africa"])  # not just "Africa"
    assert ending("He flew to Africa") == (11, ["Africa"])
    assert ending("Cranes") is None and ending("a crane ") is None and ending("") is None
    assert ending("the scrane") is None  # a form ends a text only on a word boundary
    assert ending("x" * 300 + " Africa") == (301, ["Africa"])


def test_a_word_goes_on_through_letters_digits_and_hyphens_only():
    assert continues_word("s") and continues_word("-like") and continues_word("9")
    assert not continues_word(" lifted") and not continues_word(",") and not continues_word("'s") and not continues_word("")
