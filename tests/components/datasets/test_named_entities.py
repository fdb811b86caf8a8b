"""Named-entity linking texts from article extracts: titles and base names as surface forms,
self-mentions as the certain gold of an ambiguous name, sentences without a certain gold left out."""

from components.datasets.named_entities import NamedEntityReport, base_name, named_entity_texts, surface_forms
from components.datasets.vital_articles import vital_articles

ARTICLES = {
    "Crane (bird)": {"title": "Crane (bird)", "extract": "The crane is a wading bird of Africa. Cranes eat fish.",
                     "description": "bird", "topic": "Biology"},
    "Crane (machine)": {"title": "Crane (machine)", "extract": "A crane lifts heavy loads. It was used in Africa.",
                        "description": "machine", "topic": "Technology"},
    "Africa": {"title": "Africa", "extract": "Africa is a continent. A crane was seen in Africa.",
               "description": "continent", "topic": "Geography"},
    "Austin, Texas": {"title": "Austin, Texas", "extract": "Austin is a city.", "description": "city", "topic": "Geography"},
    "Go": {"title": "Go", "extract": "Go is a game.", "description": "game", "topic": "Games"},  # too short to match
}


def test_base_names_drop_the_qualifier():
    assert base_name("Crane (bird)") == "Crane"
    assert base_name("Austin, Texas") == "Austin"
    assert base_name("Washington, D.C.") == "Washington"
    assert base_name("Africa") == "Africa"


def test_surface_forms_name_every_article_they_could_mean():
    forms = surface_forms(vital_articles(ARTICLES))
    assert forms["Crane"] == forms["crane"] == ["Crane (bird)", "Crane (machine)"]  # a shared base name is a common noun
    assert forms["Crane (bird)"] == ["Crane (bird)"] and forms["Austin"] == ["Austin, Texas"]
    assert "africa" not in forms  # an unshared name matches only as written
    assert "Go" not in forms


def test_texts_link_self_mentions_and_leave_out_uncertain_sentences():
    report = NamedEntityReport()
    texts = named_entity_texts(vital_articles(ARTICLES), report)
    linked = {t.id: [(t.surface(m), m.entity_id, m.ambiguous) for m in t.mentions] for t in texts}
    assert linked == {
        "el-Crane (bird)-0": [("crane", "Crane (bird)", True), ("Africa", "Africa", False)],
        "el-Crane (machine)-0": [("crane", "Crane (machine)", True)],
        "el-Crane (machine)-1": [("Africa", "Africa", False)],
        "el-Africa-0": [("Africa", "Africa", False)],
        "el-Austin, Texas-0": [("Austin", "Austin, Texas", False)],
    }
    # "A crane was seen in Africa." (in Africa's article) cannot say which crane: left out, counted.
    assert report.uncertain == 1 and report.texts == 5 and report.sentences == 8
    assert report.mentions == {"ambiguous": 2, "unambiguous": 4}
    assert {t.source for t in texts} == {"Crane (bird)", "Crane (machine)", "Africa", "Austin, Texas"}
