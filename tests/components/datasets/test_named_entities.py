"""Named-entity linking texts from article extracts:
self-mentions as the certain gold of an ambiguous name, sentences without a certain gold left out."""

from components.datasets.named_entities import NamedEntityReport, named_entity_texts
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
