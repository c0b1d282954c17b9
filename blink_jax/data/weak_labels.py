"""Weak entity annotation of encyclopedic text by name matching.

Wikipedia writers link an entity where they name it: by its full title, by its
title without the parenthesised qualifier ("Mercury" for "Mercury (planet)"),
by a person's surname once the full name has been given, and, for common
nouns ("Student"), by the title in lower case. `Annotator` finds those names
in a text and returns spans, which become (mention in context, entity) training
pairs and documents for mention detection: BLINK's hyperlink signal, rebuilt
from text whose links were lost.

Rules, each for precision, since a wrong pair teaches the wrong entity:
  * whole words only: a name matches a run of word tokens (a hyphenated word
    is one token, so "French" is not found inside "Anglo-French");
  * case-sensitive, except a common noun's lower-case form;
  * the longest name wins at each position, and spans never overlap
    ("New York City" is one span, not "New York" + "City");
  * a one-word name derived from a qualified title is not used ("Greek" is
    rarely "Greek (TV series)");
  * a full title beats a derived name; a derived name shared by several
    entities (two "Mercury (...)" titles) is ambiguous and not annotated;
  * a pronoun ("he", "his") names the subject of a person's own article, in
    the gender that article mostly uses (other pronouns are left alone);
  * pronouns and function words are never names, whatever the catalogue holds;
  * a surname names a person only after that person's full name (or the
    text's own subject, for an entity's own article) has occurred earlier
    in the same text; it then beats a one-word title ("Jordan" after
    "Michael Jordan" is the person, not the country).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

# A hyphenated or apostrophe-joined word ("Coca-Cola", "O'Brien") is one token,
# but not a possessive ("Kubrick's" is "Kubrick" "'" "s"); any other non-space
# character is a token of its own.
_TOKEN = re.compile(r"\w+(?:-\w+|['’](?!s\b)\w+)*|[^\w\s]")
_QUALIFIER = re.compile(r"\s*\([^()]*\)$")
_NAME_SUFFIXES = frozenset({"Jr.", "Sr.", "II", "III", "IV", "Jr", "Sr"})
_MAX_NAME_TOKENS = 12
# Words that are never a name, though a catalogue may hold an entry titled so
# ("He", a letter): pronouns and function words.
_NEVER_NAMES = frozenset("""
a an the this that these those it its he him his she her hers they them their we us our
i me my you your who whom which what there here in on at of and or but as by for to from with
""".split())
_PRONOUNS = {"male": ("he", "him", "his", "himself"), "female": ("she", "her", "hers", "herself")}


@dataclasses.dataclass(frozen=True)
class Name:
  """A catalogue entry as the annotator sees it."""

  title: str
  label_id: int            # -1: a real entity that is not in the catalogue (NIL).
  is_person: bool = False
  is_common_noun: bool = False


@dataclasses.dataclass(frozen=True)
class Match:
  start: int
  end: int
  title: str
  label_id: int
  # "title", "short" (no qualifier), "lower" (common noun), "surname", "pronoun".
  kind: str


def tokens(text: str) -> list[tuple[str, int, int]]:
  """(token, start, end) of `text`."""
  return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _key(name: str) -> tuple[str, ...]:
  return tuple(t for t, _, _ in tokens(name))


def short_title(title: str) -> str:
  """The title without its parenthesised qualifier: "Mercury (planet)" -> "Mercury"."""
  return _QUALIFIER.sub("", title)


def _name_words(title: str) -> list[str]:
  """A person's name as words, without qualifier or suffix ("Jr.")."""
  words = short_title(title).replace(",", " ").split()
  while words and words[-1] in _NAME_SUFFIXES:
    words = words[:-1]
  return words


def surname(title: str) -> str | None:
  """A person's last name ("Arthur C. Clarke" -> "Clarke"), None for one-word names."""
  words = _name_words(title)
  return words[-1] if len(words) >= 2 else None


# Words that open a person's title but are not a given name ("Pope Francis",
# "Queen Victoria"): such a title yields no given-name form.
_NOT_GIVEN_NAMES = frozenset("""
Pope Saint St. St King Queen Prince Princess Emperor Empress Sir Lord Lady Dame Duke
Tsar Czar Sultan Pharaoh Caliph Shah Mahatma
""".split())


def given_name(title: str) -> str | None:
  """A person's first name ("Stanley Kubrick" -> "Stanley"), None where there is none.

  None for one-word names, a title opened by a rank ("Pope Francis") or an
  initial ("J. R. R. Tolkien").
  """
  words = _name_words(title)
  if len(words) < 2:
    return None
  first = words[0]
  if first in _NOT_GIVEN_NAMES or not first[:1].isupper() or not first.isalpha() or len(first) < 2:
    return None
  return first


def looks_like_common_noun(title: str, text: str) -> bool:
  """Whether an article's own lead writes its (sentence-case) title in lower case.

  "Student: A student is a person enrolled..." names a common noun, which
  texts mention as "student"; "Apple Inc." or "Paris" never appear so.
  """
  title = short_title(title)
  if not title[:1].isupper() or title[1:] != title[1:].lower() or "(" in title:
    return False
  return re.search(rf"(?<![\w-]){re.escape(title.lower())}(?![\w-])", text) is not None


class Annotator:
  """Finds catalogue names in text (see the module docstring for the rules)."""

  def __init__(self, names: Iterable[Name]):
    names = list(names)
    full: dict[tuple[str, ...], Name | None] = {}
    derived: dict[tuple[str, ...], list[tuple[Name, str]]] = {}
    self._surnames: dict[str, list[Name]] = {}
    self._by_title = {n.title: n for n in names}
    for n in names:
      k = _key(n.title)
      if len(k) == 1 and k[0].lower() in _NEVER_NAMES:
        continue
      # Two entries with the same title: keep neither (cannot tell them apart).
      full[k] = None if k in full and full[k] != n else n
      short = short_title(n.title)
      # A qualified title exists because its short name means something else
      # first: one-word short names ("Greek (TV series)", "Study (room)") are
      # mostly that other thing in running text, so only longer ones count.
      if short != n.title and len(_key(short)) > 1:
        derived.setdefault(_key(short), []).append((n, "short"))
      if n.is_common_noun and (short == n.title or len(_key(short)) > 1):
        derived.setdefault(_key(short.lower()), []).append((n, "lower"))
      if n.is_person and (s := surname(n.title)):
        self._surnames.setdefault(s, []).append(n)
    self._names: dict[tuple[str, ...], tuple[Name, str]] = {
        k: (n, "title") for k, n in full.items() if n is not None}
    for k, found in derived.items():
      if len(k) == 1 and k[0].lower() in _NEVER_NAMES:
        continue
      if k not in self._names and len({n.title for n, _ in found}) == 1:
        self._names[k] = found[0]
    self._max_len = min(_MAX_NAME_TOKENS, max((len(k) for k in self._names), default=1))

  def is_person(self, title: str) -> bool:
    name = self._by_title.get(title)
    return name is not None and name.is_person

  def annotate(self, text: str, subject: str | None = None) -> list[Match]:
    """Non-overlapping matches in `text`, in order.

    `subject`: the title of the entity the text is about (its own article),
    whose surname is then known from the start.
    """
    toks = tokens(text)
    words = [t for t, _, _ in toks]
    introduced: set[str] = set()  # Titles of people named in full so far.
    pronouns: dict[str, Name] = {}
    if subject in self._by_title and self._by_title[subject].is_person:
      introduced.add(subject)
      pronouns = {p: self._by_title[subject] for p in _PRONOUNS[_gender(words)]}
    out: list[Match] = []
    i = 0
    while i < len(toks):
      hit = self._longest(words, i)
      person = self._surname_of(words[i], introduced)
      if person is not None and (hit is None or hit[0] == 1):
        # An introduced person's surname beats a one-word title ("Jordan", the
        # country, after "Michael Jordan"): that is how the writer uses it.
        out.append(Match(toks[i][1], toks[i][2], person.title, person.label_id, "surname"))
        i += 1
        continue
      if hit is None and words[i].lower() in pronouns:
        name = pronouns[words[i].lower()]
        out.append(Match(toks[i][1], toks[i][2], name.title, name.label_id, "pronoun"))
        i += 1
        continue
      if hit is not None:
        length, (name, kind) = hit
        out.append(Match(toks[i][1], toks[i + length - 1][2], name.title, name.label_id, kind))
        if name.is_person and kind in ("title", "short"):
          introduced.add(name.title)
        i += length
        continue
      i += 1
    return out

  def _longest(self, words: list[str], i: int):
    for length in range(min(self._max_len, len(words) - i), 0, -1):
      found = self._names.get(tuple(words[i:i + length]))
      if found is not None:
        return length, found
    return None

  def _surname_of(self, word: str, introduced: set[str]) -> Name | None:
    people = [n for n in self._surnames.get(word, ()) if n.title in introduced]
    # Two introduced people with this surname (a family): ambiguous.
    return people[0] if len(people) == 1 else None


def _gender(words: list[str]) -> str:
  """The pronoun set a text uses most (ties: male, the more frequent in the corpus)."""
  lower = [w.lower() for w in words]
  count = {g: sum(lower.count(p) for p in ps) for g, ps in _PRONOUNS.items()}
  return "female" if count["female"] > count["male"] else "male"
