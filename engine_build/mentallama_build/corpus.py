"""Deterministic synthetic training text for the tiny/bench tokenizers.

Nothing is downloaded and no real posts are used: sentences are assembled from the word lists below with a
seeded `random.Random`, so the same seed always yields the same text (and therefore the same tokenizer).
The mix covers what the server will see in practice: everyday English, mental-health vocabulary, IMHI-style
prompts and answers, punctuation, quotes, digits and a little non-ASCII text (accents, emoji, CJK) so that
byte fallback gets exercised by rare characters.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["DEFAULT_SEED", "generate_corpus"]

DEFAULT_SEED = 20240229

# fmt: off
_SUBJECTS = (
    "I", "You", "We", "They", "My friend", "My sister", "My brother", "My mom", "My dad", "My partner",
    "My roommate", "The teacher", "Our neighbour", "Everyone at work", "Nobody", "The doctor", "My therapist",
    "My boss", "A stranger", "The kids", "Grandma", "My coach", "The nurse", "Some people", "He", "She",
)
_VERBS = (
    "feel", "think", "want", "need", "hate", "love", "remember", "forget", "try", "hope", "worry about",
    "talk about", "avoid", "miss", "notice", "keep thinking about", "can't stop thinking about", "wish for",
    "write about", "dream about", "struggle with", "deal with", "care about", "laugh about",
)
_OBJECTS = (
    "the weekend", "my job", "the exam", "our family", "the future", "money", "the rain", "breakfast",
    "the news", "my grades", "the holidays", "my health", "the past", "school", "the move", "the bills",
    "my body", "the silence", "the party", "the meeting", "sleep", "the diagnosis", "the dog", "the city",
    "my phone", "social media", "the deadline", "our wedding", "the funeral", "the new medication",
)
_TIMES = (
    "today", "every night", "this morning", "lately", "for weeks", "since last year", "all the time", "again",
    "right now", "before bed", "at work", "on weekends", "after the accident", "since the breakup",
    "most days", "in the evening", "during lunch", "when I'm alone", "for no reason", "all winter",
)
_FEELINGS = (
    "anxious", "depressed", "hopeless", "tired", "exhausted", "numb", "lonely", "sad", "angry", "scared",
    "worthless", "overwhelmed", "stressed", "empty", "guilty", "ashamed", "happy", "calm", "grateful",
    "hopeful", "okay", "better", "worse", "restless", "irritable", "panicky", "detached", "burnt out",
    "unmotivated", "paranoid", "confused", "relieved", "proud", "content", "nervous", "jumpy",
)
_CONDITIONS = (
    "depression", "anxiety", "PTSD", "bipolar disorder", "OCD", "ADHD", "insomnia", "panic disorder",
    "an eating disorder", "suicidal ideation", "loneliness", "stress", "burnout", "social anxiety", "grief",
    "self-harm", "schizophrenia", "substance abuse", "postpartum depression", "seasonal depression",
)
_CAUSES = (
    "jobs and careers", "school", "relationships", "family issues", "medication", "alienation", "finances",
    "health", "trauma", "work pressure", "isolation", "loss of a loved one",
)
_THERAPY = (
    "therapy", "counseling", "CBT", "mindfulness", "meditation", "journaling", "a support group",
    "antidepressants", "exercise", "a crisis line", "talking to a friend", "a psychiatrist",
    "breathing exercises", "a sleep routine", "medication", "a walk outside", "yoga", "art therapy",
)
_SYMPTOMS = (
    "can't sleep", "can't eat", "cry all the time", "don't want to get out of bed", "have panic attacks",
    "hear my heart racing", "lost interest in everything", "feel like a burden", "can't concentrate",
    "keep having nightmares", "feel disconnected from everyone", "sleep all day", "have no energy",
    "keep checking the locks", "feel on edge", "snap at people", "overthink every message",
)
_QUOTES = (
    "It gets better.", "You're not alone.", "Just relax!", "Why are you like this?", "Take it easy.",
    "I'm fine.", "Stop overthinking.", "We're proud of you.", "Call me anytime.", "Are you okay?",
    "It's all in your head.", "One day at a time.", "Don't give up.", "I need a break.",
)
_CONNECTORS = (
    "and", "but", "so", "because", "although", "while", "even though", "until", "since", "or",
)
_NAMES = (
    "Alex", "Sam", "Jordan", "Taylor", "Chris", "Maria", "Ahmed", "Priya", "Wei", "Olivia", "Noah", "Fatima",
    "Lucas", "Emma", "Kenji", "Sofia", "Mateo", "Aisha", "Liam", "Chloé", "Zoë", "José",
)
_EVERYDAY = (
    "the", "a", "of", "to", "in", "is", "was", "it", "that", "for", "on", "with", "as", "at", "by", "this",
    "have", "from", "not", "be", "are", "had", "what", "all", "were", "when", "there", "can", "more",
    "people", "time", "day", "year", "way", "thing", "man", "woman", "life", "child", "world", "house", "car",
    "coffee", "water", "music", "book", "movie", "game", "food", "dinner", "walk", "run", "cook", "read",
    "watch", "listen", "play", "work", "study", "clean", "drive", "call", "text", "message", "morning",
    "night", "week", "month", "summer", "winter", "spring", "autumn", "birthday", "weather", "kitchen",
    "bedroom", "office", "train", "bus", "street", "park", "store", "doctor", "hospital", "good", "bad",
    "new", "old", "big", "small", "long", "short", "early", "late", "easy", "hard", "really", "very", "just",
    "still", "never", "always", "sometimes", "maybe", "probably", "actually", "hello", "hi", "thanks",
    "please", "sorry", "friend", "family", "help", "home", "feel", "okay",
)
_NON_ASCII_WORDS = (
    "café", "naïve", "résumé", "jalapeño", "façade", "São Paulo", "Müller", "smörgåsbord", "crème brûlée",
    "déjà vu", "piñata", "Zürich", "garçon", "fiancée", "coöperate", "Ångström", "señora", "Kraków", "über",
    "Straße", "niño", "mañana", "Ελλάδα", "ψυχή", "спасибо", "привет", "שלום", "مرحبا",
    "心", "情绪", "压力", "焦虑", "睡眠", "朋友", "不安", "気持ち", "疲れた", "大丈夫",
    "우울", "행복", "ありがとう", "加油",
    "—", "…", "“quoted”", "‘single’", "€20", "£5", "¥300", "°C", "½", "™",
)
_EMOJI = (
    "😊", "😢", "😔", "💔", "🙏", "❤️", "😭", "🌧️", "✨", "😂", "🥺", "😴", "🫂", "👍", "🔥", "💙",
)
_PUNCT_END = (
    ".", ".", ".", "!", "?", "...", "?!", ".", ".",
)
_SYLLABLES = (
    "ka", "lo", "mi", "ster", "ton", "ber", "ry", "an", "el", "ix", "qu", "ph", "ing", "ed", "ly", "ness",
    "un", "re", "pre", "dis", "ful", "less", "ment", "tion", "ous", "ive", "zz", "ch", "sh", "th", "gr", "bl",
    "st", "tr", "oo", "ee", "ai", "ou", "ck", "nd", "rk", "mp", "wh", "sp", "fl", "cr",
)
# fmt: on


def _number(rng: random.Random) -> str:
    """Digits in the shapes posts use: counts, times, dates, doses, percentages, phone-like strings."""
    shape = rng.randrange(8)
    if shape == 0:
        return str(rng.randrange(0, 100))
    if shape == 1:
        return f"{rng.randrange(1, 13)}:{rng.randrange(0, 60):02d} {rng.choice(('am', 'pm'))}"
    if shape == 2:
        return f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}/{rng.randrange(1990, 2031)}"
    if shape == 3:
        return f"{rng.choice((5, 10, 20, 25, 50, 100, 150, 200))}mg"
    if shape == 4:
        return f"{rng.randrange(0, 101)}%"
    if shape == 5:
        return f"{rng.randrange(1, 10)}.{rng.randrange(0, 10)}"
    if shape == 6:
        return f"{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}"
    return str(rng.randrange(1000, 100000))


def _made_up_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randrange(2, 5)))


def _slang(rng: random.Random) -> str:
    """Usernames, hashtags, links and typo-like words: the long tail that fills out the vocabulary."""
    return (
        f"u/{_made_up_word(rng)}{rng.randrange(0, 100)} said {_made_up_word(rng)} is "
        f"{rng.choice(_FEELINGS)} lol, "
        f"#{_made_up_word(rng)} #{rng.choice(_CONDITIONS).replace(' ', '')} see "
        f"https://www.{_made_up_word(rng)}.com/r/{_made_up_word(rng)} {_made_up_word(rng).capitalize()}!!"
    )


def _everyday(rng: random.Random) -> str:
    words = [rng.choice(_EVERYDAY) for _ in range(rng.randrange(5, 14))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(_PUNCT_END)


def _feeling(rng: random.Random) -> str:
    return (
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)} "
        f"{rng.choice(_CONNECTORS)} I feel {rng.choice(_FEELINGS)}{rng.choice(_PUNCT_END)}"
    )


def _post(rng: random.Random) -> str:
    parts = [
        f"I've been feeling {rng.choice(_FEELINGS)} {rng.choice(_TIMES)}.",
        f"I {rng.choice(_SYMPTOMS)} {rng.choice(_CONNECTORS)} I {rng.choice(_SYMPTOMS)}.",
        f'{rng.choice(_NAMES)} told me "{rng.choice(_QUOTES)}"',
        f"I slept {rng.randrange(0, 12)} hours and it's {_number(rng)} now.",
        f"Has anyone tried {rng.choice(_THERAPY)} for {rng.choice(_CONDITIONS)}?",
        f"It's been {rng.randrange(2, 40)} days since I talked to {rng.choice(_NAMES)}.",
        "I don't know what to do anymore.",
        f"({rng.choice(_FEELINGS)}, {rng.choice(_FEELINGS)}; {rng.choice(_FEELINGS)}) - "
        f"that's me {rng.choice(_TIMES)}.",
    ]
    rng.shuffle(parts)
    return " ".join(parts[: rng.randrange(2, 6)])


def _imhi_prompt(rng: random.Random) -> str:
    """Instruction text shaped like the IMHI tasks (written here, not copied from the data set)."""
    question = rng.choice(
        (
            f"Does the poster suffer from {rng.choice(_CONDITIONS)}?",
            "What mental health condition does this post reflect?",
            f"What cause of stress does the poster have: {', '.join(rng.sample(_CAUSES, 4))}?",
            "Is the poster stressed?",
            "Does the poster show signs of loneliness?",
        )
    )
    return f'Consider this post: "{_post(rng)}" Question: {question}'


def _imhi_answer(rng: random.Random) -> str:
    verdict = rng.choice(("Yes", "No"))
    return (
        f"{verdict}, the poster {'suffers' if verdict == 'Yes' else 'does not suffer'} from "
        f"{rng.choice(_CONDITIONS)}. Reasoning: The post mentions that the poster feels "
        f"{rng.choice(_FEELINGS)} and {rng.choice(_FEELINGS)}, and says they {rng.choice(_SYMPTOMS)}. "
        f"This suggests {rng.choice(_CONDITIONS)}; {rng.choice(_THERAPY)} may help."
    )


def _chat_turn(rng: random.Random) -> str:
    """LLaMA-2 chat markers so `[INST]`, `<<SYS>>` and friends get compact pieces."""
    return (
        "[INST] <<SYS>>\nYou are a helpful mental health assistant.\n<</SYS>>\n\n"
        f"{_imhi_prompt(rng)} [/INST] {_imhi_answer(rng)}"
    )


def _numbers(rng: random.Random) -> str:
    return (
        f"On {_number(rng)} I took {_number(rng)} at {_number(rng)}; my score was {_number(rng)} "
        f"(up from {_number(rng)}) and I owe ${rng.randrange(1, 5000)}.{rng.randrange(0, 100):02d}."
    )


def _multilingual(rng: random.Random) -> str:
    # Few and varied on purpose: rare characters stay out of the vocabulary and go through byte fallback.
    words = [rng.choice(_NON_ASCII_WORDS) for _ in range(rng.randrange(1, 4))]
    emoji = rng.choice(_EMOJI) if rng.random() < 0.5 else ""
    return f"{_feeling(rng)} {' '.join(words)} {emoji}".rstrip()


def _whitespace(rng: random.Random) -> str:
    """Odd spacing and line breaks, as pasted posts have them."""
    return f"  {_everyday(rng)}\n\n{_feeling(rng)}\t{rng.choice(_QUOTES)}   {_everyday(rng)}"


_GENERATORS: tuple[tuple[Callable[[random.Random], str], int], ...] = (
    (_everyday, 6),
    (_feeling, 6),
    (_post, 6),
    (_imhi_prompt, 3),
    (_imhi_answer, 3),
    (_chat_turn, 1),
    (_numbers, 2),
    (_multilingual, 2),
    (_whitespace, 1),
    (_slang, 2),
)


def generate_corpus(num_sentences: int = 20_000, seed: int = DEFAULT_SEED) -> Iterator[str]:
    """Yield `num_sentences` lines of synthetic text; identical for identical arguments."""
    rng = random.Random(seed)
    generators = [gen for gen, _ in _GENERATORS]
    weights = [weight for _, weight in _GENERATORS]
    for _ in range(num_sentences):
        (gen,) = rng.choices(generators, weights=weights)
        yield gen(rng)
