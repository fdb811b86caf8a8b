"""Hand-written rows shaped like the real sources (vital-article summaries, FanOutQA questions),
shared by the dataset builders' tests, and a negative miner that needs no MiniLM."""

from __future__ import annotations

ARTICLES = {
    "Ada Lovelace": {
        "title": "Ada Lovelace",
        "extract": "Ada Lovelace was a mathematician. She wrote the first published algorithm for the Analytical Engine. "
                   "She died young.",
        "description": "English mathematician", "topic": "People",
    },
    "Charles Babbage": {
        "title": "Charles Babbage",
        "extract": "Charles Babbage was a polymath. He originated the concept of a digital programmable computer.",
        "description": "English mathematician and engineer", "topic": "People",
    },
    "Alan Turing": {
        "title": "Alan Turing", "extract": "Alan Turing was a mathematician and computer scientist.",
        "description": "", "topic": "People",
    },
    "London": {
        "title": "London", "extract": "London is the capital of England. It stands on the River Thames in the south east.",
        "description": "Capital of England", "topic": "Geography",
    },
    "Paris": {"title": "Paris", "extract": "Paris is the capital of France.", "description": "Capital of France", "topic": "Geography"},
    "Washington, D.C.": {
        "title": "Washington, D.C.", "extract": "Washington, D.C. is the capital city of the United States.",
        "description": "Capital of the United States", "topic": "Geography",
    },
    "Analytical Engine": {
        "title": "Analytical Engine", "extract": "The Analytical Engine was a proposed mechanical general-purpose computer.",
        "description": "", "topic": "Technology",
    },
    "Blank": {"title": "Blank", "extract": "   ", "description": "", "topic": "Technology"},  # fails the schema
}


def leaf(qid: str, question: str, answer, title: str) -> dict:
    return {"id": qid, "question": question, "answer": answer, "depends_on": [], "decomposition": [],
            "evidence": {"title": title, "pageid": 1}}


QUESTIONS = [
    {
        "id": "q-nested", "question": "Where did the people behind the Analytical Engine live, and when?",
        "answer": {"Ada Lovelace": "London", "Charles Babbage": "London"},
        "decomposition": [
            leaf("a", "Who wrote the first algorithm?", "Ada Lovelace", "Ada Lovelace"),
            leaf("b", "Which journal published it?", "Taylor's Scientific Memoirs", "Scientific Memoirs"),  # not in corpus
            {
                "id": "c", "question": "Where and when did they live?", "answer": "London", "depends_on": ["a"],
                "evidence": {"title": "London"},
                "decomposition": [
                    leaf("c1", "Which cities were they in?", ["London", "Paris"], "London"),
                    leaf("c2", "When was Babbage alive?", {"born": 1791, "died": [1871, "London"]}, "Charles Babbage"),
                ],
            },
            leaf("d", "How many engines were built?", 0, "Analytical Engine"),
        ],
    },
    {"id": "q-none", "question": "Who won in 1850?", "answer": "Nobody",
     "decomposition": [leaf("e", "Who won?", "Nobody", "Some Missing Page")]},
    {"id": "q-dc", "question": "What is the US capital?", "answer": 1,
     "decomposition": [leaf("f", "What is the capital of the United States?", "Washington, D.C.", "Washington, D.C.")]},
]


class FirstOthers:
    """A fake miner: the first `k` corpus ids that are not the gold page; records what it was asked."""

    def __init__(self, ids: list[str], k: int = 2):
        self.ids, self.k, self.calls = ids, k, []

    def __call__(self, queries, gold):
        self.calls.append((list(queries), list(gold)))
        return [[d for d in self.ids if d != g][: self.k] for g in gold]


def kept_ids() -> list[str]:
    return [t for t in ARTICLES if t != "Blank"]


# --- FanOutQA -------------------------------------------------------------------------------------

def synthetic_articles(n: int) -> dict[str, dict]:
    """`n` articles of three sentences each, in ten topics."""
    return {
        f"Thing {i}": {
            "title": f"Thing {i}",
            "extract": f"Thing {i} is an object with a long history. It was made in the year {1000 + i} by many "
                       f"people. Its weight is {i} kilograms on a good day.",
            "description": "", "topic": f"Topic {i % 10}",
        }
        for i in range(n)
    }
