"""WordNet's files → synsets, senses in order, mentions found through WordNet's own morphology, and
a knowledge base sampled by lemma that always holds every candidate of a mention."""

import pytest

from components.datasets.wordnet import read_wordnet, wordnet_texts
from tests.components.datasets.wordnet_sample import write_wordnet


@pytest.fixture
def wordnet(tmp_path):
    return read_wordnet(write_wordnet(tmp_path / "wn"))


def test_synsets_and_senses_are_read_in_wordnet_order(wordnet):
    assert len(wordnet.synsets) == 5
    bird = wordnet.synsets["wordnet:02012849-n"]
    assert bird.lemmas == ("crane",) and bird.examples == ("cranes waded in the marsh",)
    assert bird.definition == "large long-necked wading bird of marshes"  # the examples are not in the document
    assert bird.document().title == "crane (noun)" and "waded" not in bird.document().text
    # Sense order as index.* lists it (machine first), nouns before verbs.
    assert wordnet.senses["crane"] == ["wordnet:03126580-n", "wordnet:02012849-n", "wordnet:01854132-v"]
    assert wordnet.senses["ice cream"] == ["wordnet:04000001-n"]


def test_mentions_are_found_inflected_and_link_to_their_own_synset(wordnet):
    texts, kb = wordnet_texts(wordnet, lemma_sample=None, seed=0)
    found = {t.id: (t.target, t.surface(t.mentions[0]), t.mentions[0].entity_id, t.mentions[0].ambiguous) for t in texts}
    assert found == {
        "wn-02012849-n-0": ("cranes", "cranes", "wordnet:02012849-n", True),
        "wn-03126580-n-0": ("crane", "crane", "wordnet:03126580-n", True),
        "wn-01234567-n-0": ("heron", "heron", "wordnet:01234567-n", False),
        "wn-04000001-n-0": ("Ice Cream", "Ice Cream", "wordnet:04000001-n", False),
        "wn-01854132-v-0": ("craned", "craned", "wordnet:01854132-v", True),
    }
    assert {d.id for d in kb} == set(wordnet.synsets)


def test_an_entity_is_named_by_its_lemmas_inflections(wordnet):
    """What link mode may put [EL] after: the lemma inflected by WordNet's rules and exception
    lists, capitalised as at a sentence's start; nothing of another synset's lemmas."""
    machine = wordnet.document(wordnet.synsets["wordnet:03126580-n"])
    assert {"crane", "cranes", "Crane", "Cranes"} <= set(machine.aliases) and "craned" not in machine.aliases
    verb = wordnet.document(wordnet.synsets["wordnet:01854132-v"])
    assert {"craned", "craning", "cranes"} <= set(verb.aliases)
    assert "Ice Cream" in wordnet.document(wordnet.synsets["wordnet:04000001-n"]).aliases
    assert '"aliases"' in machine.model_dump_json()
    assert "aliases" not in wordnet.synsets["wordnet:02012849-n"].document().model_dump_json()  # written only when there are some


def test_a_lemma_sample_brings_all_its_senses(wordnet):
    for seed in range(6):
        texts, kb = wordnet_texts(wordnet, lemma_sample=1, seed=seed)
        ids = {d.id for d in kb}
        assert all(set(m.candidates) <= ids for t in texts for m in t.mentions)
        assert len({t.target.lower()[:4] for t in texts}) == 1  # one lemma's texts only


def test_a_missing_wordnet_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base"):
        read_wordnet(tmp_path / "nowhere")
