"""The weak annotator on hand-written extracts: every rule, and each way it must not fire."""

from blink_jax.data import weak_labels as wl


def _annotator():
  return wl.Annotator([
      wl.Name("Stanley Kubrick", 1, is_person=True),
      wl.Name("Arthur C. Clarke", 2, is_person=True),
      wl.Name("2001: A Space Odyssey (film)", 3),
      wl.Name("New York", 4),
      wl.Name("New York City", 5),
      wl.Name("Mercury (planet)", 6),
      wl.Name("Mercury (element)", 7),
      wl.Name("Jordan", 8),
      wl.Name("Michael Jordan", 9, is_person=True),
      wl.Name("Student", 10, is_common_noun=True),
      wl.Name("France", 11),
      wl.Name("Paris", -1),  # Named but not in the catalogue: NIL.
      wl.Name("Venus", 12),
  ])


def _found(text, subject=None):
  return [(text[m.start:m.end], m.title, m.kind)
          for m in _annotator().annotate(text, subject=subject)]


def test_longest_match_wins_and_spans_never_overlap():
  assert _found("He moved to New York City in 1950.") == [
      ("New York City", "New York City", "title")]
  assert _found("He moved to New York in 1950.") == [("New York", "New York", "title")]


def test_case_and_whole_words():
  # Lower case is not a proper name; "France" inside a hyphenated word is not a mention.
  assert _found("new york and the franco-France border") == []
  assert _found("Jordanian forces") == []


def test_punctuation_inside_and_around_names():
  text = ("Stanley Kubrick's film 2001: A Space Odyssey, written with Arthur C. Clarke, "
          "opened (in New York).")
  assert _found(text) == [
      ("Stanley Kubrick", "Stanley Kubrick", "title"),
      ("2001: A Space Odyssey", "2001: A Space Odyssey (film)", "short"),
      ("Arthur C. Clarke", "Arthur C. Clarke", "title"),
      ("New York", "New York", "title")]


def test_qualifier_dropped_only_when_unambiguous():
  # Two "Mercury (...)" entries: the short name is ambiguous and not annotated.
  assert _found("Mercury is closer to the Sun than Venus.") == [("Venus", "Venus", "title")]


def test_surname_only_after_the_full_name():
  assert _found("Kubrick filmed it. Stanley Kubrick was born in 1928. Later Kubrick moved.") == [
      ("Stanley Kubrick", "Stanley Kubrick", "title"),
      ("Kubrick", "Stanley Kubrick", "surname")]


def test_introduced_surname_beats_a_one_word_title():
  assert _found("Jordan is a country. Michael Jordan played; Jordan scored.") == [
      ("Jordan", "Jordan", "title"),
      ("Michael Jordan", "Michael Jordan", "title"),
      ("Jordan", "Michael Jordan", "surname")]


def test_an_entity_mentioning_itself():
  # Its own article: the subject's surname is known from the start, and the
  # annotator reports the self-mentions (the caller decides what to do with them).
  found = _found("Kubrick was a director. Clarke wrote the novel.", subject="Stanley Kubrick")
  assert found == [("Kubrick", "Stanley Kubrick", "surname")]


def test_common_nouns_in_lower_case_and_nil_names():
  assert _found("A student from Paris.") == [
      ("student", "Student", "lower"), ("Paris", "Paris", "title")]
  assert [m.label_id for m in _annotator().annotate("A student from Paris.")] == [10, -1]


def test_offsets_index_the_text():
  text = "In 1968, Stanley Kubrick released it in New York City."
  for m in _annotator().annotate(text):
    assert text[m.start:m.end] in ("Stanley Kubrick", "New York City")


def test_name_helpers():
  assert wl.short_title("Mercury (planet)") == "Mercury"
  assert wl.surname("Martin Luther King Jr.") == "King"
  assert wl.surname("Plato") is None
  assert wl.looks_like_common_noun("Student", "A student is a learner.")
  assert wl.looks_like_common_noun("Fuel injection", "Using fuel injection, engines...")
  assert not wl.looks_like_common_noun("Paris", "Paris is the capital of France.")
  assert not wl.looks_like_common_noun("Apple Inc.", "apple inc. makes phones")
  assert wl.looks_like_common_noun("Director (business)", "A director is a board member.")


def test_given_name():
  assert wl.given_name("Stanley Kubrick") == "Stanley"
  assert wl.given_name("David Beckham (footballer)") == "David"
  assert wl.given_name("Martin Luther King Jr.") == "Martin"
  assert wl.given_name("Plato") is None              # One word.
  assert wl.given_name("Pope Francis") is None       # A rank, not a name.
  assert wl.given_name("J. R. R. Tolkien") is None   # An initial.


def test_pronouns_name_the_subject_of_a_persons_own_article():
  a = wl.Annotator([wl.Name("Marie Curie", 1, is_person=True),
                    wl.Name("Pierre Curie", 2, is_person=True),
                    wl.Name("He", 3), wl.Name("Paris", 4)])
  text = "Marie Curie was a physicist. She met Pierre Curie in Paris; he was her husband."
  found = [(text[m.start:m.end], m.title, m.kind) for m in a.annotate(text, subject="Marie Curie")]
  # "She"/"her" are hers (the article's gender); "he" is someone else; "He" is never a name.
  assert found == [("Marie Curie", "Marie Curie", "title"), ("She", "Marie Curie", "pronoun"),
                   ("Pierre Curie", "Pierre Curie", "title"), ("Paris", "Paris", "title"),
                   ("her", "Marie Curie", "pronoun")]
  # Not a person's own article: no pronoun is annotated.
  assert [m.kind for m in a.annotate(text, subject="Paris")] == ["title", "title", "title"]


def test_one_word_names_derived_from_qualified_titles_are_not_used():
  a = wl.Annotator([
      wl.Name("Greek (TV series)", 1),
      wl.Name("Director (business)", 2, is_common_noun=True),
      wl.Name("Democratic Party (United States)", 3),
      wl.Name("Primary school (England)", 4, is_common_noun=True)])
  text = "A Greek director of the Democratic Party left primary school."
  assert [(text[m.start:m.end], m.kind) for m in a.annotate(text)] == [
      ("Democratic Party", "short"), ("primary school", "lower")]
