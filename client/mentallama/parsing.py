"""Read the label and the explanation out of a MentaLLaMA answer.

MentaLLaMA was trained on answers of the form ``<verdict sentence> Reasoning: <explanation>``
(``Yes, the poster suffers from depression. Reasoning: ...``; ``This post shows the stress cause
related to work. Reasoning: ...``), but real generations drift: an ``Answer:`` prefix, leading
blank lines, ``Reasoning:`` first with the verdict somewhere in the explanation, the label only
in a later sentence, negations, several labels, text cut by ``max_tokens``. The rules, in order:

1. **Verdict region.** The text before ``Reasoning:`` (or, without that marker, its first
   sentence), minus an ``Answer:``/``Label:``/``Response:`` prefix. Binary tasks: a leading
   ``Yes``/``No``, else a clause naming the task's topic (depression, stress, risk, wellness
   dimension...) with a verdict verb (suffers, shows, exhibits, exists...), negated when a
   negation (``not``, ``no``, ``n't``, ``without``...) precedes it in the clause (an even count
   cancels). Multi-class tasks: the labels the region names (synonyms allowed: ``emotion
   turmoil``, ``no causes of depression``, ``PTSD``...), dropping negated ones (``..., not
   school``); if several remain, **the first stated wins** (IMHI is single-label and the model
   states its choice first).
2. **Explanation.** Only if the verdict region decides nothing: each sentence that makes a
   verdict-like statement (binary: as above; multi-class: a label named after a cue such as
   ``cause``, ``related to``, ``label``, ``shows``, ``indicates``) votes. One distinct vote wins;
   conflicting votes are settled by the **last** sentence that opens with a concluding marker
   (``Therefore``, ``Overall``, ``In conclusion``, ``Based on ...,``); without one: ``None``
   (ambiguous). In a sentence, a clause opened by ``while``/``although``/... only decides when
   no main clause does ("While X is not stated, the poster suffers from Y" is "yes").
3. Otherwise ``label=None``. Parsing never raises on a ``str``.
4. **Label model** (:mod:`mentallama.label_model`; tasks with IMHI training answers: DR, dreaddit,
   SAD, Irf, MultiWD). :func:`read_rules` also says *how* the label is stated (``answer``,
   ``verdict``, ``first_sentence``, ``hedged``, ``options``, ``conclusion``, ``explanation``,
   ``none``); the model reads the explanation (without a plain verdict, an option list, the
   ``Reasoning:`` marker or a hedged verdict's while/although clause), and its label replaces the
   rules' when its probability reaches the threshold of that kind of reading. The thresholds are
   derived from the training answers by ``mentallama-build label-model`` and stored with the
   model; in the shipped file a plainly stated verdict (``answer``, ``verdict``, ``conclusion``)
   always wins, and hedged verdicts, option lists and answers without a verdict go to the model
   (``label_source="inferred"``). Tasks without training data (CLP, loneliness, CAMS, T-SID,
   SWMH) keep rules 1-3 alone: ``confidence`` is ``None`` there.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from ._subjects import ABOUT, PHRASES, TASK_SUBJECTS, off_task_subject, subjects_in
from .label_model import LabelModel, TaskLabelModel, default_model
from .tasks import TASKS, TaskInfo, get_task
from .types import Analysis

__all__ = ["parse_response", "read_rules", "LABEL_PATTERNS", "OVERRIDE_THRESHOLDS", "RuleReading"]

_F = re.IGNORECASE

# One-to-one character replacements only, so offsets in the normalized text are offsets in the raw text.
_NORMALIZE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})

_PREFIX_RE = re.compile(
    r"^\s*(?:\[/INST\]\s*)?(?:(?:final\s+)?(?:answer|response|output|label|prediction|result)\s*:\s*)?", _F
)
_MARKER_RE = re.compile(r"\b(?:reasoning|explanation)\s*:", _F)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*")
# Not "yet": "has not yet shown signs" is one clause.
_CLAUSE_SPLIT_RE = re.compile(
    r"[,;:()]|\s[-\u2013\u2014]\s|\b(?:but|however|except"
    r"|(?P<concessive>although|though|while|whereas|despite))\b",
    _F,
)
# Phrases that contain a negation word but do not negate the verdict.
_NOT_NEGATION_RE = re.compile(r"\b(?:no doubt|not only|nothing but|no matter)\b", _F)
_NEGATION_RE = re.compile(
    r"\b(?:not|no|never|without|lacks?|lacking|absence|absent|neither|nor|none|cannot|unlikely|unclear"
    r"|rather than|instead of|(?:difficult|hard) to (?:conclude|determine|say|tell|infer|establish))\b"
    r"|n't\b|\b(?:does|do|did|is|are|was|were|has|have)nt\b",
    _F,
)
# A sentence that opens with one of these states the conclusion ("overall" mid-sentence is an adjective).
_CONCLUSION_RE = re.compile(
    r"^[\W_]*(?:reasoning\s*:\s*)?(?:therefore|thus|hence|overall|in conclusion|in summary|to conclude"
    r"|to sum up|consequently|as a result|all in all|ultimately|in short|so|based on\b[^,.]*,)",
    _F,
)
_LIST_GLUE_RE = re.compile(r"\s*,?\s*(?:(?:and|or|nor|as well as)\s+)?", _F)
_LIST_INTRO_RE = re.compile(r"\s*(?:(?:such as|like|including|for example|for instance|namely)\b|e\.g\.)", _F)
_YES_NO_START_RE = re.compile(r"^[\W_]*(yes|no)\b(?!\s+(?:one|doubt|matter|longer)\b)", _F)
_YES_NO_NEXT_RE = re.compile(r"[\W_]*(yes|no)\b(?!\s+(?:one|doubt|matter|longer)\b)", _F)  # at a given pos
_YES_NO_ANSWER_RE = re.compile(r"\b(?:answer|label|verdict)\s+(?:is|would be|of)\s*:?\s*[\"']?(yes|no)\b", _F)

_BINARY_PREDICATE = (
    r"suffer\w*|show\w*|exhibit\w*|display\w*|exist\w*|present\w*|experienc\w*|indicat\w*|demonstrat\w*"
    r"|struggl\w*|reflect\w*|express\w*|reveal\w*|suggest\w*|has|have|having|had|there (?:is|are|was|were)"
    r"|at risk|evident|evidence|signs?|symptoms?|affected|deal\w* with|battl\w*|go(?:es|ing)? through"
)
# Topic of each binary task (the adjectives double as predicates: "the poster is not depressed").
_BINARY_TOPIC: dict[str, tuple[str, str]] = {
    "DR": (r"depress\w*", r"depressed"),
    "CLP": (r"depress\w*", r"depressed"),
    "dreaddit": (r"stress\w*", r"stressed"),
    "loneliness": (r"lonel\w*|lonesome", r"lonely|lonesome"),
    # Not bare "belongingness": "no lack of belongingness" is the opposite of the risk.
    "Irf": (r"risk|thwarted belongingness|perceived burdensomeness|burdensomeness", r"(?!)"),
    "MultiWD": (r"wellness|dimension", r"(?!)"),
}

_NONE_CAUSE = (
    r"no (?:specific |particular |clear |obvious |identifiable |apparent |direct |evident )?causes?"
    r"(?: of depression)?|none"
    r"|(?:does not|doesn't|do not|cannot|can't) (?:show|indicate|suggest|reveal|identify|exhibit|display)"
    r" any (?:specific |particular |clear |obvious |identifiable |apparent )?causes?"
)
_NO_DISORDER = (
    r"no mental (?:disorders?|illness(?:es)?|health (?:disorders?|conditions?|issues?))(?: symptoms)?"
    r"|no (?:signs|symptoms|indications?) of (?:any )?mental (?:disorders?|illness(?:es)?)"
    r"|(?:does not|doesn't) (?:show|indicate|suggest|exhibit|display) (?:any )?(?:signs of |symptoms of )?"
    r"(?:a |any )?mental (?:disorders?|illness(?:es)?)(?: symptoms)?"
)

LABEL_PATTERNS: dict[str, dict[str, str]] = {
    "SAD": {
        "school": r"school\w*|academics?|academic (?:pressure|stress|work|performance)|studies|exams?"
        r"|homework|college|university|classes",
        "financial problem": r"financial (?:problems?|issues?|difficult(?:y|ies)|stress|troubles?|strain"
        r"|concerns?|hardship)|financ\w*|money|debts?|economic\w*",
        "family issues": r"family (?:issues?|problems?|conflicts?|matters?)|family|families",
        "social relationships": r"social relationships?|relationships?|friendships?|social (?:life|issues?)",
        "work": r"work|work-related|jobs?|careers?|workplace|employment|occupation\w*",
        "health issues": r"health (?:issues?|problems?|concerns?)|(?<!mental )(?<!emotional )health|illness",
        "emotional turmoil": r"emotion(?:al)? turmoil|emotional (?:distress|issues?|struggles?)",
        "everyday decision making": r"everyday decision[- ]making|decision[- ]making"
        r"|(?:everyday|daily) decisions?",
        "other causes": r"other (?:stress |kinds of |types of )?causes?(?: of stress)?|other stressors?",
    },
    "CAMS": {
        "none": _NONE_CAUSE,
        "bias or abuse": r"bias or abuse|bias(?:es|ed)?|abuse|abused|abusive|bullying|bullied|discrimination",
        "jobs and career": r"jobs? and careers?|jobs?|careers?|unemploy\w*|employment",
        "medication": r"medications?|medicines?|drugs?|prescriptions?",
        "relationship": r"relationships?|break-?ups?",
        "alienation": r"alienation|alienated|alienating",
    },
    "T-SID": {
        "no mental disorders": _NO_DISORDER,
        "suicide or self-harm tendency": r"suicide or self-harm tendenc(?:y|ies)|suicide or self-harm"
        r"|suicid\w*|self-harm\w*|self harm\w*",
        "depression": r"depression|depressive|depressed",
        "ptsd": r"ptsd|post-?\s?traumatic stress(?: disorder)?",
    },
    "SWMH": {
        "no mental disorders": _NO_DISORDER,
        "suicide": r"suicid\w*|self-harm\w*|self harm\w*",
        "depression": r"depression|depressive|depressed",
        "anxiety": r"anxiety|anxious",
        "bipolar disorder": r"bipolar(?: disorder)?",
    },
}
"""Regex (case-insensitive, whole words) for each multi-class label; the first alternative is the
reference phrasing, the others are synonyms MentaLLaMA uses."""

# A whole verdict region that is only one of these words names the label.
_BARE_LABELS: dict[str, dict[str, str]] = {
    "SAD": {"other": "other causes", "emotional": "emotional turmoil", "financial": "financial problem"},
    "CAMS": {"bias": "bias or abuse", "abuse": "bias or abuse", "jobs": "jobs and career"},
    "T-SID": {
        "none": "no mental disorders",
        "control": "no mental disorders",
        "suicide": "suicide or self-harm tendency",
    },
    "SWMH": {"none": "no mental disorders", "control": "no mental disorders", "bipolar": "bipolar disorder"},
}

# Cues that make a sentence in the explanation a statement of the label, not just a mention.
_GENERIC_CUE = (
    r"label\w*|categor\w*|classif\w*|falls? (?:under|into)|this post shows|the post shows|answer is|would be"
    r"|most likely|primary|main"
)
_CUES: dict[str, str] = {
    "SAD": r"cause\w*|source|stressors?|triggers?|related to|due to|attributed to|stem\w* from|caused by",
    "CAMS": r"cause\w*|reasons?|related to|due to|attributed to|stem\w* from|caused by|triggers?",
    "T-SID": r"shows?|indicat\w*|suggest\w*|exhibit\w*|display\w*|signs? of|symptoms? of|suffer\w* from"
    r"|tendenc\w*|diagnos\w*",
    "SWMH": r"shows?|indicat\w*|suggest\w*|exhibit\w*|display\w*|signs? of|symptoms? of|suffer\w* from"
    r"|diagnos\w*",
}


def _words(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w)(?:{pattern})(?!\w)", _F)


@dataclass(frozen=True)
class _Spec:
    """Compiled matching rules of one task."""

    task: TaskInfo
    topic: re.Pattern[str] | None = None
    predicate: re.Pattern[str] | None = None
    labels: tuple[tuple[str, re.Pattern[str]], ...] = ()
    none_labels: frozenset[str] = frozenset()
    bare: dict[str, str] | None = None
    cue: re.Pattern[str] | None = None
    gate: re.Pattern[str] | None = None
    """Binary tasks: a sentence without a match can state no verdict (topic or "answer is")."""


def _build_specs() -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {}
    for name, task in TASKS.items():
        if task.is_binary:
            topic, adjective = _BINARY_TOPIC[name]
            specs[name] = _Spec(
                task, topic=_words(topic), predicate=_words(f"{_BINARY_PREDICATE}|{adjective}"),
                gate=re.compile(rf"(?<!\w)(?:{topic})(?!\w)|{_YES_NO_ANSWER_RE.pattern}", _F),
            )
            continue
        patterns = LABEL_PATTERNS[name]
        if set(patterns) != set(task.labels):  # the catalog and this table must not drift apart
            raise RuntimeError(f"label patterns of {name} do not match the catalog")
        specs[name] = _Spec(
            task,
            labels=tuple((label, _words(patterns[label])) for label in task.labels),
            none_labels=frozenset(label for label in task.labels if label in ("none", "no mental disorders")),
            bare={label: label for label in task.labels} | _BARE_LABELS.get(name, {}),
            cue=_words(f"{_CUES[name]}|{_GENERIC_CUE}"),
        )
    return specs


_SPECS = _build_specs()


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    label: str


def _negated(scope: str) -> bool:
    """Odd number of negations in ``scope`` (an even count cancels: "not without signs of")."""
    scope = _NOT_NEGATION_RE.sub(" ", scope)
    return len(_NEGATION_RE.findall(scope)) % 2 == 1


def _clauses(sentence: str) -> list[tuple[str, bool]]:
    """``(clause, opened by although/while/...)`` pairs of ``sentence``."""
    out: list[tuple[str, bool]] = []
    start, concessive = 0, False
    for m in _CLAUSE_SPLIT_RE.finditer(sentence):
        out.append((sentence[start : m.start()], concessive))
        start, concessive = m.end(), m.group("concessive") is not None
    out.append((sentence[start:], concessive))
    return out


def _sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END_RE.split(text)) if s]


# ---------------------------------------------------------------- binary tasks


def _binary_sentence(spec: _Spec, sentence: str) -> str | None:
    """``"yes"``/``"no"`` when ``sentence`` states the verdict, else ``None``."""
    return _binary_verdict(spec, sentence)[0]


def _binary_verdict(spec: _Spec, sentence: str) -> tuple[str | None, str]:
    """``(verdict, how)``: how is ``"answer"`` (a leading Yes/No, "the answer is no"), ``"clause"``
    (a main clause), ``"concessive"`` (only a while/although clause decides) or ``""`` (nothing)."""
    assert spec.topic is not None and spec.predicate is not None
    m = _YES_NO_START_RE.match(sentence)
    if m:
        return m.group(1).lower(), "answer"
    if spec.gate is not None and spec.gate.search(sentence) is None:  # most sentences: nothing can decide
        return None, ""
    m = _YES_NO_ANSWER_RE.search(sentence)
    if m:
        return m.group(1).lower(), "answer"
    concessive_verdict = None
    for clause, concessive in _clauses(sentence):
        topic = spec.topic.search(clause)
        predicate = spec.predicate.search(clause)
        if topic and predicate:
            # Negation counts up to the topic or the verb, whichever comes later:
            # "does not exhibit signs of depression" and "depression is not evident" are both "no".
            scope_end = max(topic.start(), predicate.start())
            verdict = "no" if _negated(clause[:scope_end]) else "yes"
            if not concessive:
                return verdict, "clause"
            # "While X is not stated, the poster suffers from Y": the main clause has the verdict.
            concessive_verdict = concessive_verdict or verdict
    return concessive_verdict, "concessive" if concessive_verdict else ""


# ---------------------------------------------------------------- multi-class tasks


def _mentions(spec: _Spec, text: str) -> list[_Mention]:
    """Non-overlapping label mentions in ``text``, left to right, longest first on overlap."""
    found = [
        _Mention(m.start(), m.end(), label) for label, pattern in spec.labels for m in pattern.finditer(text)
    ]
    found.sort(key=lambda x: (x.start, -(x.end - x.start)))
    kept: list[_Mention] = []
    for mention in found:
        if not kept or mention.start >= kept[-1].end:
            kept.append(mention)
    return kept


def _first_affirmed(spec: _Spec, text: str, mentions: list[_Mention]) -> str | None:
    """Label of the first mention not negated in its clause; the none-labels are negative phrases
    by themselves and are never dropped.

    Negation reaches over an example list: in "does not mention causes such as work, school or
    family issues" every label is negated, and so is "..., not school".
    """
    clause_starts = [0] + [m.end() for m in _CLAUSE_SPLIT_RE.finditer(text)]
    prev_end, prev_negated = -1, False
    for m in mentions:
        if m.label in spec.none_labels:
            return m.label
        if prev_end >= 0 and _LIST_GLUE_RE.fullmatch(text, prev_end, m.start):
            negated = prev_negated
        else:
            i = bisect.bisect_right(clause_starts, m.start) - 1
            while i > 0 and _LIST_INTRO_RE.match(text, clause_starts[i]):
                i -= 1
            negated = _negated(text[clause_starts[i] : m.start])
        if not negated:
            return m.label
        prev_end, prev_negated = m.end, negated
    return None


def _multiclass_sentence(spec: _Spec, sentence: str) -> str | None:
    """Label stated by an explanation sentence: the first affirmed mention after a cue."""
    assert spec.cue is not None
    cue = spec.cue.search(sentence)
    if cue is None:
        return None
    after_cue = [m for m in _mentions(spec, sentence) if m.start >= cue.start()]
    return _first_affirmed(spec, sentence, after_cue)


def _explanation_verdict(spec: _Spec, text: str) -> tuple[str | None, str]:
    """``(label, how)``: how is ``"answer"`` when a concluding sentence gives it as a Yes/No
    (``Therefore, no, ...``), ``"conclusion"`` when a concluding sentence (``Therefore, ...``)
    states it, ``"explanation"`` when only other sentences do, ``"none"`` without a label."""
    votes: list[tuple[str, bool]] = []
    answered: set[str] = set()  # labels a concluding "Therefore, no, ..." gives as plainly as a verdict
    for sentence in _sentences(text):
        label = _binary_sentence(spec, sentence) if spec.task.is_binary else _multiclass_sentence(spec, sentence)
        if label is not None:
            conclusion = _CONCLUSION_RE.search(sentence)
            votes.append((label, conclusion is not None))
            if conclusion is not None and spec.task.is_binary and _YES_NO_NEXT_RE.match(sentence, conclusion.end()):
                answered.add(label)
    concluding = [label for label, final in votes if final]
    distinct = {label for label, _ in votes}
    if len(distinct) == 1:
        label = distinct.pop()
    elif concluding:
        label = concluding[-1]
    else:
        return None, "none"
    return label, "answer" if label in answered else "conclusion" if concluding else "explanation"


# ---------------------------------------------------------------- how plainly the verdict is stated

# A verdict sentence with one of these is hedged: the label goes to the label model.
_HEDGE_RE = _words(
    r"may|might|could|possibl[ey]|perhaps|probably|likely|unlikely|potential(?:ly)?|seems?|seemingly|appears?"
    r"|unclear|uncertain|not clear|not necessarily|not explicitly|to some (?:extent|degree)"
    r"|some (?:signs|degree|level|extent|indications?)|(?:difficult|hard) to"
)
# One option of a list ("A. Family issues", "2) Work", "- No"): short, on a line of its own.
_OPTION_LINE_RE = re.compile(
    r"[ \t]*(?:\(?(?P<letter>[A-Ia-i1-9])[.):]|[-*\u2022])[ \t]+(?P<item>[^\n]{1,60}?)[ \t]*(?:\n|$)"
)
# After a list, a choice by its letter: "Answer: B", "The answer is (B).", "B".
_CHOICE_RE = re.compile(
    r"[\W_]*(?:(?:the )?(?:correct |best |final )?(?:answer|option|choice)(?: is)?\s*:?\s*)?"
    r"\(?(?P<letter>[A-Ia-i1-9])\b\)?[.):]?(?P<rest>.*)",
    _F | re.DOTALL,
)
_OPTION_LINES_MIN = 2


def _option_block(spec: _Spec, norm: str, start: int) -> tuple[int, int] | None:
    """Span of a list of the task's options at the top of the answer (within its first three
    lines), e.g. ``"A. Family issues\nB. Financial problem\n..."`` or ``"A. Yes\nB. No"``."""
    lines = 0
    pos = start
    while lines < 3 and pos < len(norm):
        first = pos
        count, end = 0, pos
        while True:
            m = _OPTION_LINE_RE.match(norm, end)
            if m is None or not _names_option(spec, m.group("item")):
                break
            count, end = count + 1, m.end()
            while end < len(norm) and norm[end] in " \t\n":  # blank lines between options
                end += 1
        if count >= _OPTION_LINES_MIN:
            return first, end
        newline = norm.find("\n", pos)
        if newline < 0:
            return None
        pos, lines = newline + 1, lines + 1
    return None


def _option_choices(spec: _Spec, norm: str, span: tuple[int, int]) -> dict[str, str]:
    """Letter (upper case) or number -> label of each lettered option in the list at ``span``."""
    choices: dict[str, str] = {}
    for m in _OPTION_LINE_RE.finditer(norm, span[0], span[1]):
        letter, item = m.group("letter"), m.group("item")
        if letter is None:
            continue
        if spec.task.is_binary:
            choices[letter.upper()] = re.match(r"\W*(yes|no)\b", item, _F).group(1).lower()  # type: ignore[union-attr]
        else:
            mentions = _mentions(spec, item)
            if mentions:
                choices[letter.upper()] = mentions[0].label
    return choices


def _chosen_option(choices: dict[str, str], region: str) -> str | None:
    """The label a verdict region picks by its letter alone ("Answer: B"), given the listed ``choices``."""
    m = _CHOICE_RE.fullmatch(region.strip())
    if m is None or m.group("letter").upper() not in choices:
        return None
    # "B. Work" names its label too, and the rules read that; a letter and nothing else is read here.
    return choices[m.group("letter").upper()] if not re.search(r"\w", m.group("rest")) else None


def _names_option(spec: _Spec, item: str) -> bool:
    if spec.task.is_binary:
        return re.fullmatch(r"\W*(?:yes|no)\b.*", item, _F) is not None
    return bool(_mentions(spec, item))


def _region_verdict(spec: _Spec, region: str) -> tuple[str | None, str]:
    """``(label, how)`` of a verdict region; how is ``"answer"`` (a bare Yes/No or label),
    ``"verdict"`` (a plain verdict sentence) or ``"hedged"`` (hedged, concessive, several labels)."""
    if spec.task.is_binary:
        for sentence in _sentences(region):
            label, how = _binary_verdict(spec, sentence)
            if label is None:
                continue
            if how == "answer":
                return label, "answer"
            return label, "hedged" if how == "concessive" or _HEDGE_RE.search(sentence) else "verdict"
        return None, ""
    assert spec.bare is not None
    bare = re.sub(r"[\W_]+", " ", region).strip().lower()
    if bare in spec.bare:
        return spec.bare[bare], "answer"
    mentions = _mentions(spec, region)
    label = _first_affirmed(spec, region, mentions)
    if label is None:
        return None, ""
    several = len({m.label for m in mentions}) > 1
    return label, "hedged" if several or _HEDGE_RE.search(region) else "verdict"


_CONCESSIVE_CLAUSE_RE = re.compile(r"\b(?:while|although|though|whereas|despite|even if)\b[^,;.]*[,;]?", _F)


def _drop_concessive(sentence: str) -> str:
    """``sentence`` without its while/although clauses: in "While the post does not exhibit the
    hopelessness of severe depression, it does indicate distress" the model reads the main clause."""
    return _CONCESSIVE_CLAUSE_RE.sub(" ", sentence)


@dataclass(frozen=True)
class RuleReading:
    """What the rules read from an answer, before the label model is asked."""

    label: str | None
    """The label the rules found (``None``: none)."""

    reasoning: str
    """The explanation (:attr:`Analysis.reasoning`)."""

    matched_by: str | None
    """``"verdict"``, ``"explanation"`` or ``None`` (:attr:`Analysis.matched_by`)."""

    how: str
    """How plainly the label is stated: ``"answer"`` (a leading Yes/No, a bare label), ``"verdict"``
    (a verdict sentence before ``Reasoning:``), ``"first_sentence"`` (a verdict-like first sentence,
    no ``Reasoning:`` marker), ``"hedged"``, ``"options"`` (the answer opens with a list of the
    options), ``"conclusion"`` (a concluding sentence of the explanation states it: ``Therefore, ...``),
    ``"explanation"`` (other sentences of the explanation state it) or ``"none"``."""

    model_text: str
    """The text the label model reads: the answer without a plainly stated verdict, option list
    or ``Reasoning:`` marker."""

    off_task: str | None = None
    """The subject of another task the answer's verdict is about (``"stress"`` when asked about
    loneliness); the label then comes from the explanation alone (:mod:`mentallama._subjects`)."""


def read_rules(task: str | TaskInfo, text: str) -> RuleReading:
    """The rules' reading of ``text`` (module docstring, rules 1-3) and how plainly it is stated."""
    info = get_task(task)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    spec = _SPECS[info.name]
    norm = text.translate(_NORMALIZE)
    prefix = _PREFIX_RE.match(norm)
    body_start = prefix.end() if prefix else 0
    options = _option_block(spec, norm, body_start)
    choices: dict[str, str] = {}
    if options is not None:  # blanked, so that offsets into the text stay valid
        choices = _option_choices(spec, norm, options)
        norm = norm[: options[0]] + " " * (options[1] - options[0]) + norm[options[1] :]
    marker = _MARKER_RE.search(norm, body_start)

    if marker is not None and norm[body_start : marker.start()].strip():
        region = norm[body_start : marker.start()]
        reasoning = text[marker.end() :].strip()
        model_text = norm[marker.end() :]
        chosen = _chosen_option(choices, region)
        label, how = (chosen, "answer") if chosen is not None else _region_verdict(spec, region)
        off_task = _off_task(spec, region)
        if off_task is not None:  # a verdict about another question: the explanation alone may answer this one
            label, how = _explanation_verdict(spec, model_text)
            return _reading(label, reasoning, "explanation" if label else None, how, model_text, options, off_task)
        if label is not None:
            if how == "hedged":
                model_text = _drop_concessive(norm[body_start : marker.start()]) + " " + model_text
            return _reading(label, reasoning, "verdict", how, model_text, options)
        label, how = _explanation_verdict(spec, norm[body_start:])
        model_text = norm[body_start : marker.start()] + " " + model_text
    elif marker is not None:
        reasoning = text[marker.end() :].strip()
        model_text = norm[marker.end() :]
        label, how = _explanation_verdict(spec, model_text)
    else:
        body = norm[body_start:].lstrip()
        offset = len(norm) - len(body)
        split = _SENTENCE_END_RE.search(body)
        first_end = split.start() if split else len(body)
        chosen = _chosen_option(choices, body[:first_end])
        label, how = (chosen, "answer") if chosen is not None else _region_verdict(spec, body[:first_end])
        off_task = _off_task(spec, body[:first_end]) if label is not None or _VERDICT_OPENING_RE.match(body) else None
        if off_task is not None:
            after = norm[offset + (split.end() if split else len(body)) :]
            rest = text[offset + (split.end() if split else len(body)) :].strip()
            label, how = _explanation_verdict(spec, after)
            return _reading(label, rest, "explanation" if label else None, how, after, options, off_task)
        if label is not None:
            rest = text[offset + (split.end() if split else len(body)) :]
            if how == "verdict":
                how = "first_sentence"
            after = norm[offset + (split.end() if split else len(body)) :]
            if how == "answer":
                model_text = after
            elif how == "hedged":
                model_text = _drop_concessive(body[:first_end]) + " " + after
            else:
                model_text = body
            return _reading(label, rest.strip(), "verdict", how, model_text, options)
        reasoning = text[offset:].strip()
        model_text = body
        label, how = _explanation_verdict(spec, body)
    return _reading(label, reasoning, "explanation" if label else None, how, model_text, options)


_PLAIN = ("answer", "verdict", "first_sentence")


def _reading(label: str | None, reasoning: str, matched_by: str | None, how: str, model_text: str,
             options: tuple[int, int] | None, off_task: str | None = None) -> RuleReading:  # fmt: skip
    # An option list followed by a plain verdict ("A. School\nB. Work\nAnswer: B") is that verdict; without
    # one, the answer has only listed the options and the label model reads the explanation.
    kind = "options" if options is not None and how not in _PLAIN else how
    return RuleReading(label, reasoning, matched_by, kind, model_text, off_task)


# A first sentence that opens like a verdict ("Yes, ...", "This post shows ...") even when it names no label.
_VERDICT_OPENING_RE = re.compile(r"[\W_]*(?:(?:yes|no)\b|(?:this|the) post (?:shows|does not show|doesn't show)\b)", _F)


def _off_task(spec: _Spec, region: str) -> str | None:
    """The other task's subject the verdict ``region`` is about (:func:`mentallama._subjects.off_task_subject`)."""
    return off_task_subject(spec.task, region, label_mentioned=bool(spec.labels) and bool(_mentions(spec, region)))


def _about_task(spec: _Spec, text: str) -> bool:
    """``text`` names the asked task's subject or one of its labels: an explanation the model may read."""
    if TASK_SUBJECTS[spec.task.name].intersection(subjects_in(text)):
        return True
    return bool(spec.labels) and bool(_mentions(spec, text))


# ---------------------------------------------------------------- combining rules and the label model

OVERRIDE_THRESHOLDS: dict[str, float] = {
    "answer": 2.0,
    "verdict": 2.0,
    "first_sentence": 2.0,
    "conclusion": 2.0,
    "explanation": 2.0,
    "hedged": 0.0,
    "options": 0.0,
    "none": 0.0,
}
"""Default of the combination rule, used where a model file does not carry its own (its
``meta["override"]``, derived from data by ``mentallama-build label-model``): the label model's
label replaces the rules' label when its probability is at least this (2.0: never; 0.0: always)."""

MIN_FEATURES = 2
"""The label model answers only when the text has at least this many of its n-grams."""

_DEFAULT = "default"


def _task_model(task: str, label_model: object) -> TaskLabelModel | None:
    if label_model is None:
        return None
    if isinstance(label_model, str):
        if label_model != _DEFAULT:
            raise ValueError(f"label_model must be a LabelModel, None or 'default', not {label_model!r}")
        label_model = default_model()
        if label_model is None:
            return None
    if isinstance(label_model, TaskLabelModel):
        return label_model if label_model.task == task else None
    if isinstance(label_model, LabelModel):
        return label_model.get(task)
    raise TypeError(f"label_model must be a LabelModel, None or 'default', not {type(label_model).__name__}")


CONFLICT_BELOW = 0.2
"""A stated label conflicts with its explanation (:attr:`Analysis.conflict`) when the label model
reads another label from the explanation and gives the stated one a probability below this."""


def parse_response(task: str | TaskInfo, text: str, *, label_model: object = _DEFAULT) -> Analysis:
    """Parse MentaLLaMA's answer ``text`` for ``task`` into an :class:`Analysis`.

    ``label`` is one of the task's canonical labels or ``None`` when the text does not say.
    The rules (module docstring) read the stated label; for the tasks with a label model
    (:mod:`mentallama.label_model`: DR, dreaddit, SAD, Irf, MultiWD) a plainly stated verdict
    wins, and hedged verdicts, option lists and answers without a verdict get the label the
    model infers from the explanation (``label_source="inferred"``); the thresholds come with
    the model file (see :data:`OVERRIDE_THRESHOLDS`). Other tasks keep the rules alone.

    A verdict about another task's subject ("Yes, the poster suffers from stress." asked about
    loneliness) states no label for this task: the label comes from the explanation only when it
    is about this task, else it is ``None``; :attr:`Analysis.off_task` names the other subject and
    :attr:`Analysis.note` says why. A stated label that the label model reads otherwise from the
    explanation (probability below :data:`CONFLICT_BELOW`) is kept and flagged
    (:attr:`Analysis.conflict`, with a note).

    ``label_model``: ``"default"`` (the model shipped with the SDK), a
    :class:`~mentallama.label_model.LabelModel` / ``TaskLabelModel``, or ``None`` (rules only).
    Raises ``ValueError`` for an unknown task and ``TypeError`` when ``text`` is not a ``str``;
    never raises for any string.
    """
    info = get_task(task)
    reading = read_rules(info, text)
    model = _task_model(info.name, label_model)
    off_task = reading.off_task
    if off_task is not None and not _about_task(_SPECS[info.name], reading.model_text):
        model = None  # an explanation of another question says nothing about this one
    if model is None:
        source = "stated" if reading.label is not None else None
        return Analysis(info.name, reading.label, reading.reasoning, text, matched_by=reading.matched_by,
                        label_source=source, off_task=off_task,
                        note=_off_task_note(info, off_task, reading.label))  # fmt: skip
    probs, n_features = model.probabilities_and_count(reading.model_text)
    best = int(probs.argmax())
    threshold = model.override_thresholds.get(reading.how, OVERRIDE_THRESHOLDS.get(reading.how, 2.0))
    # Threshold 0: this kind of reading is the model's to decide, even where the rules agree.
    decides = threshold <= 0.0 or model.labels[best] != reading.label
    if n_features >= MIN_FEATURES and probs[best] >= threshold and decides:
        return Analysis(info.name, model.labels[best], reading.reasoning, text, matched_by="model",
                        label_source="inferred", confidence=round(float(probs[best]), 4), off_task=off_task,
                        note=_off_task_note(info, off_task, model.labels[best]))  # fmt: skip
    if reading.label is None:
        return Analysis(info.name, None, reading.reasoning, text, off_task=off_task,
                        note=_off_task_note(info, off_task, None))  # fmt: skip
    stated = float(probs[model.labels.index(reading.label)])
    confidence = round(stated, 4) if n_features else None
    conflict = n_features >= MIN_FEATURES and model.labels[best] != reading.label and stated < CONFLICT_BELOW
    note = _off_task_note(info, off_task, reading.label)
    if conflict:
        note = (f"{note} " if note else "") + (
            f"The explanation argues for {model.labels[best]!r} (label model {float(probs[best]):.2f}), not the "
            f"stated {reading.label!r} ({stated:.2f}).")
    return Analysis(info.name, reading.label, reading.reasoning, text, matched_by=reading.matched_by,
                    label_source="stated", confidence=confidence, off_task=off_task, conflict=conflict,
                    note=note)  # fmt: skip


def _off_task_note(info: TaskInfo, off_task: str | None, label: str | None) -> str | None:
    if off_task is None:
        return None
    question = info.question.replace("{aspect}", "...")
    verdict = f"The answer's verdict is about {PHRASES.get(off_task, off_task)}, not {ABOUT[info.name]} ({question})"
    if label is None:
        return f"{verdict}; its explanation says nothing either way, so there is no label."
    return f"{verdict}; the label is read from its explanation."
