"""A tiny WordNet 3.0 in its own file format (data.*, index.*, *.exc), for the builders' tests."""

from __future__ import annotations

from pathlib import Path

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"
DATA = {
    "noun": [
        '02012849 05 n 01 crane 0 000 | large long-necked wading bird of marshes; "cranes waded in the marsh"',
        '03126580 06 n 01 crane 0 000 | lifts and moves heavy objects; "the crane lifted the steel beam"; "no mention here"',
        '01234567 05 n 02 heron 0 egret 0 000 | grey wading bird; "a heron stood still"',
        '04000001 06 n 01 ice_cream 0 000 | frozen dessert; "she ate Ice Cream"',
    ],
    "verb": ['01854132 38 v 01 crane 0 000 01 + 02 00 | stretch the neck; "the child craned to see the parade"'],
    "adj": [],
    "adv": [],
}
INDEX = {
    "noun": ["crane n 2 1 @ 2 0 03126580 02012849", "egret n 1 1 @ 1 0 01234567", "heron n 1 1 @ 1 0 01234567",
             "ice_cream n 1 1 @ 1 0 04000001"],
    "verb": ["crane v 1 1 @ 1 0 01854132"],
    "adj": [],
    "adv": [],
}


def write_wordnet(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in DATA:
        (directory / f"data.{name}").write_text(HEADER + "".join(f"{line}  \n" for line in DATA[name]), encoding="latin-1")
        (directory / f"index.{name}").write_text(HEADER + "".join(f"{line}  \n" for line in INDEX[name]), encoding="latin-1")
    (directory / "noun.exc").write_text("")
    (directory / "verb.exc").write_text("")
    return directory
