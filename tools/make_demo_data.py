"""Writes the demo data sets shipped in core/assets/ (seeded, so the files are reproducible).

Every row is generated here from small word lists, with answers computed, so the
project ships data it made itself. Run: python tools/make_demo_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "core" / "assets"
WORDS = ["river", "garden", "window", "pencil", "rocket", "planet", "forest", "candle", "bridge", "winter",
         "summer", "island", "silver", "orange", "market", "dragon", "button", "basket", "mirror", "ladder"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "brown"]
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "open": "closed", "early": "late",
             "light": "dark", "high": "low", "full": "empty", "young": "old", "hard": "soft", "up": "down"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def sft_rows(rng: random.Random, per_task: int = 40) -> list[dict[str, str]]:
    rows = []
    for _ in range(per_task):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"instruction": "Add the two numbers.", "input": f"{a} and {b}",
                     "output": f"{a} plus {b} is {a + b}."})
        words = rng.sample(COLOURS, 3)
        rows.append({"instruction": "Reverse the order of the words.", "input": " ".join(words),
                     "output": " ".join(reversed(words))})
        word = rng.choice(WORDS)
        rows.append({"instruction": "Write the word in capital letters.", "input": word, "output": word.upper()})
        word, opposite = rng.choice(sorted(OPPOSITES.items()))
        rows.append({"instruction": "What is the opposite of the word?", "input": word,
                     "output": f"The opposite of {word} is {opposite}."})
        i = rng.randrange(7)
        rows.append({"instruction": "Name the day that comes after the given day.", "input": DAYS[i],
                     "output": f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."})
        word = rng.choice(WORDS)
        rows.append({"instruction": "Count the letters in the word.", "input": word,
                     "output": f"{word} has {len(word)} letters."})
        nums = rng.sample(range(1, 30), 3)
        rows.append({"instruction": "Sort the numbers from smallest to largest.", "input": ", ".join(map(str, nums)),
                     "output": ", ".join(map(str, sorted(nums)))})
        n = rng.randint(1, 99)
        rows.append({"instruction": "Is the number even or odd?", "input": str(n),
                     "output": f"{n} is {'even' if n % 2 == 0 else 'odd'}."})
    rng.shuffle(rows)
    return rows


def preference_rows(rng: random.Random, per_task: int = 30) -> list[dict[str, str]]:
    """A right answer (chosen) against a plausible wrong one (rejected), same wording."""
    rows = []
    for _ in range(per_task):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"Add the two numbers.\n\n{a} and {b}", "chosen": f"{a} plus {b} is {a + b}.",
                     "rejected": f"{a} plus {b} is {wrong}."})
        word, opposite = rng.choice(sorted(OPPOSITES.items()))
        other = rng.choice([w for w in OPPOSITES.values() if w != opposite])
        rows.append({"prompt": f"What is the opposite of the word?\n\n{word}",
                     "chosen": f"The opposite of {word} is {opposite}.",
                     "rejected": f"The opposite of {word} is {other}."})
        i = rng.randrange(7)
        rows.append({"prompt": f"Name the day that comes after the given day.\n\n{DAYS[i]}",
                     "chosen": f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}.",
                     "rejected": f"{DAYS[(i + rng.choice([2, 3, 4])) % 7]} comes after {DAYS[i]}."})
        n = rng.randint(1, 99)
        right, wrong_parity = ("even", "odd") if n % 2 == 0 else ("odd", "even")
        rows.append({"prompt": f"Is the number even or odd?\n\n{n}", "chosen": f"{n} is {right}.",
                     "rejected": f"{n} is {wrong_parity}."})
    rng.shuffle(rows)
    return rows


def kto_rows(rng: random.Random) -> list[dict[str, object]]:
    """Unpaired rows: each preference pair gives either its good answer (label true) or its bad one."""
    rows: list[dict[str, object]] = []
    for pair in preference_rows(rng, per_task=30):
        good = rng.random() < 0.5
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen" if good else "rejected"], "label": good})
    return rows


def task_answers(rng: random.Random) -> list[tuple[str, str, str]]:
    """One row of each task: (prompt, complete answer, terse answer), both right."""
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    words = rng.sample(COLOURS, 3)
    capital, counted = rng.choice(WORDS), rng.choice(WORDS)
    word, opposite = rng.choice(sorted(OPPOSITES.items()))
    i = rng.randrange(7)
    nums = rng.sample(range(1, 30), 3)
    n = rng.randint(1, 99)
    parity = "even" if n % 2 == 0 else "odd"
    reverse, ordered = " ".join(reversed(words)), ", ".join(map(str, sorted(nums)))
    return [
        (f"Add the two numbers.\n\n{a} and {b}", f"{a} plus {b} is {a + b}.", str(a + b)),
        (f"Reverse the order of the words.\n\n{' '.join(words)}", f"In reverse order the words are {reverse}.",
         reverse),
        (f"Write the word in capital letters.\n\n{capital}", f"In capital letters {capital} is {capital.upper()}.",
         capital.upper()),
        (f"What is the opposite of the word?\n\n{word}", f"The opposite of {word} is {opposite}.", opposite),
        (f"Name the day that comes after the given day.\n\n{DAYS[i]}", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}.",
         DAYS[(i + 1) % 7]),
        (f"Count the letters in the word.\n\n{counted}", f"{counted} has {len(counted)} letters.",
         str(len(counted))),
        (f"Sort the numbers from smallest to largest.\n\n{', '.join(map(str, nums))}",
         f"From smallest to largest they are {ordered}.", ordered),
        (f"Is the number even or odd?\n\n{n}", f"{n} is {parity}.", parity),
    ]


def mixed_style_rows(rng: random.Random, per_task: int = 40) -> list[dict[str, str]]:
    """Instructions answered half the time in a complete sentence, half the time with the bare answer: what an SFT
    policy learns from demonstrations written by different people."""
    rows = []
    for _ in range(per_task):
        for prompt, complete, terse in task_answers(rng):
            instruction, given = prompt.split("\n\n")
            answer = complete if rng.random() < 0.5 else terse
            rows.append({"instruction": instruction, "input": given, "output": answer})
    rng.shuffle(rows)
    return rows


def sentence_preference_rows(rng: random.Random, per_task: int = 30) -> list[dict[str, str]]:
    """Feedback on the mixed-style policy: the complete sentence (chosen) over the bare answer, over the sentence
    cut short or trailing off in repeats, or over an answer with nothing in it (rejected). Each judgement is visible
    in the answer itself, so what is learnt carries over to prompts never seen; the long rejects keep "longer is
    better" from being the lesson, and rejects that end in a full stop, or are nothing but one, keep "ends in a
    full stop" from being it (a reward model that learnt that scored a lone "." highest, and RL found it)."""
    rows = []
    for _ in range(per_task):
        for prompt, complete, terse in task_answers(rng):
            kind, words = rng.random(), complete.removesuffix(".").split()
            stop = "." if rng.random() < 0.5 else ""
            if kind < 0.4:
                rejected = terse + stop
            elif kind < 0.6:
                rejected = " ".join(words[:-1]) + stop
            elif kind < 0.85:
                rejected = " ".join(words + words[-1:] * 2) + stop
            else:
                rejected = rng.choice((".", "..", "...", "?", "!"))
            rows.append({"prompt": prompt, "chosen": complete, "rejected": rejected})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    write_jsonl(ASSETS / "demo-instructions.jsonl", sft_rows(random.Random(1234)))
    write_jsonl(ASSETS / "demo-preferences.jsonl", preference_rows(random.Random(5678)))
    write_jsonl(ASSETS / "demo-kto.jsonl", kto_rows(random.Random(91011)))
    write_jsonl(ASSETS / "demo-mixed-instructions.jsonl", mixed_style_rows(random.Random(2468)))
    write_jsonl(ASSETS / "demo-sentence-preferences.jsonl", sentence_preference_rows(random.Random(1357)))


if __name__ == "__main__":
    main()
