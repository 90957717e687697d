"""Synthetic multi-step arithmetic word problems, each with its computation graph.

    from siked_runtime.synthetic import generate
    records = generate(500, seed=0)                       # all families, round robin
    records = generate(100, seed=1, families=["long_chain"])

Each record is `{"id": "synth-<seed>-<index>", "question", "answer", "meta"}` with
`meta = {"family", "graph", "steps"}`. The graph is a list of nodes

    {"id": "v2", "op": "sub", "args": ["v1", 7], "value": 41,
     "text": "the number of stickers Maya has left", "name": "stickers_left"}

where `args` are earlier node ids or literal numbers from the question, `text`
says what the quantity is and `name` is a Python identifier for it; the last node
is the answer. Every value is a non-negative integer (divisions are exact) and
only nodes the answer depends on are kept. Generation is deterministic: problem
`i` of seed `s` depends only on (s, i), so `generate(10, s)[:5] == generate(5, s)`.

Families differ in which strategy should make them easy, so that a student that
picks its strategy per question (SIKeD) has something to gain. The preferences
below are what each family is built for; the per-family accuracy of each strategy
in a run (`FAVOURED_STRATEGY` names the intended one) is what confirms them.

* `short_story` (favours `cot`) — two or three steps with small numbers (packs
  bought and given away, pages left to read, change after shopping). The
  arithmetic is what a small model does reliably in text, and one sentence per
  step in the question's own words stays closest to the question; exact
  arithmetic, pot's advantage, buys nothing here.
* `equal_groups` (favours `cot`) — three to five steps whose quantities are
  written in words: "three dozen", "half of them", "twice as long", "a quarter",
  "two weeks". Each implicit number has to be read off in the step that uses it,
  which prose does in passing; the arithmetic stays small.
* `long_chain` (favours `l2m`) — one person's collection through four to seven
  events across the days of a week, small numbers, with references back to
  earlier states ("as many as she had at the end of Tuesday"). Each sub-question
  names the state it tracks, which is what a long free-form chain loses.
* `compare` (favours `l2m`) — three or four people whose counts are defined
  relative to each other ("9 fewer than", "three times as many as"), distractor
  facts with numbers, and a question about a difference or a subset. Asking "how
  many does Ben have?" first isolates the quantities that matter.
* `big_arithmetic` (favours `pot`) — three- and four-digit multiplications, long
  sums, exact divisions of five-digit totals (factory output, ticket revenue,
  savings). The reasoning is short; the arithmetic is what text solutions get
  wrong and what Python gets right.
* `unit_rates` (favours `pot`) — rates, unit conversions and percentages (pages
  per minute over hours and minutes, millilitres per second into litres, 35% off,
  overtime at 50% extra, town growth). Chains of ×60, ×1000 and percentages with
  mid-sized numbers.
* `piecewise` (favours `cot`) — small numbers under a rule with two cases: tiered
  prices ("$2 each when you buy more than 10"), pay above a daily threshold, free
  delivery from an order size, parking after the first hours, a bonus for more than
  X goals. About half the problems fall on each side of the threshold. Text checks
  which case applies and computes it; a program has to state the rule for every
  case (`if … else`, `max(h - t, 0)`, `min`), which a small model writes poorly.
* `round_up` (favours `cot`) — sharing into groups of a fixed size with small
  numbers: vans or tables needed (round up), boxes filled completely (round down),
  what is left over. Text says "23 / 6 = 3 with 5 left over, so 4"; a program has
  to pick `math.ceil` or `//` from the wording.

Early families wrote the same steps in every strategy, so `pot` was best on all of
them for a small student; `siked experiment --pilot` measures, per family, which
strategy a trained student actually does best with (FAVOURED_STRATEGY is only the
design intent).
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from typing import Callable

from siked_runtime.answers import format_number

# --- the computation graph -----------------------------------------------------------------------


def _apply(op: str, values: list[Fraction]) -> Fraction:
    if op == "add":
        return sum(values, Fraction(0))
    if op == "sub":
        result = values[0]
        for v in values[1:]:
            result -= v
        return result
    if op == "mul":
        result = Fraction(1)
        for v in values:
            result *= v
        return result
    if op == "div":
        if len(values) != 2 or values[1] == 0:
            raise ValueError(f"div needs two arguments and a non-zero divisor, got {values}")
        return values[0] / values[1]
    if op == "pct":  # pct(a, p): p percent of a
        if len(values) != 2:
            raise ValueError(f"pct needs two arguments, got {values}")
        return values[0] * values[1] / 100
    if op in _RULES:
        arity = 4 if op.startswith("if_") else 2
        if len(values) != arity or (op.endswith("div") and values[1] == 0):
            raise ValueError(f"{op} needs {arity} arguments (and a non-zero divisor), got {values}")
        return Fraction(_RULES[op](*values))
    raise ValueError(f"unknown op {op!r}")


# Rules with a branch or a rounding: text evaluates the one case that applies, a program
# has to state the rule in general (`if`, `max`, `min`, `math.ceil`, `//`).
_RULES: dict[str, Callable[..., Fraction | int]] = {
    "ceildiv": lambda a, b: math.ceil(a / b),       # whole vans needed for a people
    "floordiv": lambda a, b: math.floor(a / b),     # full boxes filled from a items
    "over": lambda a, b: max(a - b, 0),             # hours above a threshold
    "lesser": lambda a, b: min(a, b),               # hours up to a threshold
    "if_gt": lambda a, b, x, y: x if a > b else y,  # x if a is more than b, else y
    "if_ge": lambda a, b, x, y: x if a >= b else y,  # x if a is at least b, else y
}
OPS: tuple[str, ...] = ("add", "sub", "mul", "div", "pct", *_RULES)


def evaluate(graph: list[dict]) -> dict[str, Fraction]:
    """Recompute every node of a graph from its op and args; {node id: exact value}.

    Raises ValueError for a reference to a node not defined before it, an unknown
    op, or a division by zero. It does not compare with the stored values, so a
    caller can check them: `evaluate(g)[g[-1]["id"]] == g[-1]["value"]`.
    """
    values: dict[str, Fraction] = {}
    for node in graph:
        args = []
        for arg in node["args"]:
            if isinstance(arg, str):
                if arg not in values:
                    raise ValueError(f"node {node['id']} refers to {arg!r} before it is defined")
                args.append(values[arg])
            else:
                args.append(Fraction(arg))
        values[node["id"]] = _apply(node["op"], args)
    return values


class _Retry(Exception):
    """The numbers drawn break a constraint (inexact division, negative value); draw again."""


class _Story:
    """A question being written: its sentences and the graph of what it asks."""

    def __init__(self, rng: random.Random, max_value: int = 10**7):
        self.rng = rng
        self.max_value = max_value
        self.sentences: list[str] = []
        self.nodes: list[dict] = []
        self.values: dict[str, int] = {}

    def tell(self, sentence: str) -> None:
        self.sentences.append(sentence)

    def value(self, arg: str | int) -> int:
        return self.values[arg] if isinstance(arg, str) else arg

    def compute(self, op: str, args: list[str | int], text: str, name: str,
                inputs: dict[int, str] | None = None) -> str:
        """Add a node and return its id; rejects values that are not small non-negative integers.

        `inputs` names literal arguments ({position: python name}) for a program that states its
        givens first, as a model teacher's program-of-thought does."""
        exact = _apply(op, [Fraction(self.value(a)) for a in args])
        if exact.denominator != 1 or exact < 0 or exact > self.max_value:
            raise _Retry
        node_id = f"v{len(self.nodes) + 1}"
        node = {"id": node_id, "op": op, "args": list(args), "value": int(exact), "text": text, "name": name}
        if inputs:
            node["inputs"] = {str(k): v for k, v in sorted(inputs.items())}
        self.nodes.append(node)
        self.values[node_id] = int(exact)
        return node_id

    def finish(self, question: str) -> tuple[str, list[dict]]:
        """(question text, graph) keeping only the nodes the last one depends on, renumbered."""
        needed = {self.nodes[-1]["id"]}
        for node in reversed(self.nodes):
            if node["id"] in needed:
                needed.update(a for a in node["args"] if isinstance(a, str))
        kept = [n for n in self.nodes if n["id"] in needed]
        renamed = {n["id"]: f"v{i}" for i, n in enumerate(kept, start=1)}
        graph = [
            {**n, "id": renamed[n["id"]], "args": [renamed.get(a, a) if isinstance(a, str) else a for a in n["args"]]}
            for n in kept
        ]
        return " ".join(self.sentences + [question]), graph


# --- vocabulary ----------------------------------------------------------------------------------

# (name, subject, object, possessive)
PEOPLE: list[tuple[str, str, str, str]] = [
    ("Maya", "she", "her", "her"), ("Liam", "he", "him", "his"), ("Sofia", "she", "her", "her"),
    ("Noah", "he", "him", "his"), ("Aisha", "she", "her", "her"), ("Mateo", "he", "him", "his"),
    ("Chloe", "she", "her", "her"), ("Ravi", "he", "him", "his"), ("Elena", "she", "her", "her"),
    ("Omar", "he", "him", "his"), ("Hana", "she", "her", "her"), ("Lucas", "he", "him", "his"),
    ("Zara", "she", "her", "her"), ("Ethan", "he", "him", "his"), ("Priya", "she", "her", "her"),
    ("Diego", "he", "him", "his"), ("Nora", "she", "her", "her"), ("Kenji", "he", "him", "his"),
    ("Amara", "she", "her", "her"), ("Felix", "he", "him", "his"), ("Ines", "she", "her", "her"),
    ("Tariq", "he", "him", "his"), ("Greta", "she", "her", "her"), ("Jonah", "he", "him", "his"),
    ("Leila", "she", "her", "her"), ("Marco", "he", "him", "his"), ("Yuki", "she", "her", "her"),
    ("Samuel", "he", "him", "his"), ("Bianca", "she", "her", "her"), ("Tomas", "he", "him", "his"),
]

# (plural, singular)
COLLECTIBLES: list[tuple[str, str]] = [
    ("stickers", "sticker"), ("marbles", "marble"), ("stamps", "stamp"), ("seashells", "seashell"),
    ("trading cards", "trading card"), ("beads", "bead"), ("pencils", "pencil"), ("comic books", "comic book"),
    ("toy cars", "toy car"), ("postcards", "postcard"), ("buttons", "button"), ("crayons", "crayon"),
    ("keychains", "keychain"), ("rocks", "rock"), ("coins", "coin"),
]
CONTAINERS: list[tuple[str, str]] = [("packs", "pack"), ("boxes", "box"), ("bags", "bag"), ("jars", "jar"), ("tins", "tin")]
BAKED: list[str] = ["cookies", "muffins", "cupcakes", "bagels", "rolls", "brownies", "scones"]
GOODS: list[tuple[str, str]] = [
    ("notebooks", "notebook"), ("pens", "pen"), ("sandwiches", "sandwich"), ("movie tickets", "movie ticket"),
    ("plants", "plant"), ("mugs", "mug"), ("T-shirts", "T-shirt"), ("puzzles", "puzzle"), ("candles", "candle"),
]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
         10: "ten", 11: "eleven", 12: "twelve"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FRACTIONS = {2: "half", 3: "a third", 4: "a quarter"}


def _ident(*words: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", " ".join(words).lower()).strip("_")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _big(rng: random.Random, n: int) -> str:
    """A large number as GSM8K writes them: sometimes with thousands separators."""
    return f"{n:,}" if n >= 10000 and rng.random() < 0.5 else str(n)


# --- short_story (cot) ---------------------------------------------------------------------------


def _packs_left(s: _Story) -> str:
    rng = s.rng
    (a, subj, _, poss), (friend, *_) = rng.sample(PEOPLE, 2)
    items, _ = rng.choice(COLLECTIBLES)
    packs, pack = rng.choice(CONTAINERS)
    p, m = rng.randint(2, 9), rng.randint(3, 12)
    had = rng.randint(5, 40) if rng.random() < 0.5 else 0
    if had:
        s.tell(f"{a} has {had} {items}.")
    s.tell(rng.choice([
        f"{_cap(subj) if had else a} buys {p} {packs} of {items} with {m} {items} in each {pack}.",
        f"{_cap(subj) if had else a} gets {p} {packs} of {items}. Each {pack} holds {m} {items}.",
    ]))
    bought = s.compute("mul", [p, m], f"the number of {items} in the {packs} {a} buys", _ident(items, "bought"))
    total = s.compute("add", [had, bought], f"the number of {items} {a} has after buying", _ident(items, "total")) if had else bought
    g = rng.randint(2, s.value(total) - 1)
    s.tell(rng.choice([f"{_cap(subj)} gives {g} of them to {friend}.", f"{_cap(subj)} gives {friend} {g} {items}."]))
    s.compute("sub", [total, g], f"the number of {items} {a} has left", _ident(items, "left"))
    return rng.choice([f"How many {items} does {a} have left?", f"How many {items} does {a} have now?"])


def _together(s: _Story) -> str:
    rng = s.rng
    (a, *_), (b, *_) = rng.sample(PEOPLE, 2)
    items, _ = rng.choice(COLLECTIBLES)
    x = rng.randint(6, 40)
    s.tell(f"{a} has {x} {items}.")
    kind = rng.choice(["more", "fewer", "times"])
    if kind == "more":
        k = rng.randint(2, 25)
        s.tell(f"{b} has {k} more {items} than {a}.")
        y = s.compute("add", [x, k], f"the number of {items} {b} has", _ident(b, items))
    elif kind == "fewer":
        k = rng.randint(1, x - 1)
        s.tell(f"{b} has {k} fewer {items} than {a}.")
        y = s.compute("sub", [x, k], f"the number of {items} {b} has", _ident(b, items))
    else:
        k = rng.randint(2, 4)
        s.tell(f"{b} has {k} times as many {items} as {a}.")
        y = s.compute("mul", [x, k], f"the number of {items} {b} has", _ident(b, items))
    s.compute("add", [x, y], f"the number of {items} {a} and {b} have together", _ident(items, "together"))
    return rng.choice([
        f"How many {items} do {a} and {b} have together?",
        f"How many {items} do they have altogether?",
        f"How many {items} do {a} and {b} have in total?",
    ])


def _pages_left(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    whole, units, verb, when = rng.choice([
        ("book", "pages", "reads", "day"), ("puzzle", "pieces", "fits", "evening"),
        ("scarf pattern", "rows", "knits", "day"), ("course", "lessons", "finishes", "week"),
    ])
    p, d = rng.randint(3, 25), rng.randint(2, 9)
    extra = rng.randint(2, 20) if rng.random() < 0.4 else 0
    total = rng.randint(p * d + extra + 5, p * d + extra + 120)
    s.tell(f"A {whole} has {total} {units}. {a} {verb} {p} {units} every {when} for {d} {when}s.")
    done = s.compute("mul", [p, d], f"the number of {units} {a} {verb} in {d} {when}s", _ident(units, "done"))
    if extra:
        s.tell(f"Then {subj} {verb} {extra} more {units}.")
        done = s.compute("add", [done, extra], f"the number of {units} {a} has done in all", _ident(units, "done_total"))
    s.compute("sub", [total, done], f"the number of {units} still left", _ident(units, "left"))
    return f"How many {units} are left?"


def _money_left(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    goods, _ = rng.choice(GOODS)
    k, c = rng.randint(2, 8), rng.randint(2, 15)
    extra = rng.randint(3, 20) if rng.random() < 0.4 else 0
    money = rng.randint(k * c + extra + 1, k * c + extra + 60)
    s.tell(f"{a} has ${money}. {_cap(subj)} buys {k} {goods} that cost ${c} each.")
    spent = s.compute("mul", [k, c], f"the cost of the {goods}", _ident(goods, "cost"))
    if extra:
        s.tell(f"{_cap(subj)} also pays ${extra} for lunch.")
        spent = s.compute("add", [spent, extra], f"the money {a} spends in all", "spent")
    s.compute("sub", [money, spent], f"the money {a} has left", "money_left")
    return rng.choice([f"How much money does {a} have left?", f"How many dollars does {a} have left?"])


def _filled_containers(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    food = rng.choice(BAKED)
    containers, container = rng.choice([("boxes", "box"), ("trays", "tray"), ("bags", "bag"), ("baskets", "basket")])
    m, k, r = rng.randint(4, 12), rng.randint(2, 9), rng.randint(1, 11)
    s.tell(f"Each {container} holds {m} {food}. {a} fills {k} {containers} and has {r} {food} left over.")
    packed = s.compute("mul", [m, k], f"the number of {food} in the full {containers}", _ident(food, "packed"))
    baked = s.compute("add", [packed, r], f"the number of {food} {a} made", _ident(food, "made"))
    if rng.random() < 0.4:
        e = rng.randint(1, s.value(baked) - 1)
        s.tell(f"Later {subj} eats {e} of them.")
        s.compute("sub", [baked, e], f"the number of {food} left after eating some", _ident(food, "left"))
        return f"How many {food} are left?"
    return rng.choice([f"How many {food} did {a} make?", f"How many {food} are there in all?"])


def _shared_equally(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    things = rng.choice(["apples", "strawberries", "plums", "flowers", "mushrooms", "shells"])
    k, each = rng.randint(2, 8), rng.randint(2, 12)
    total = k * each
    x = rng.randint(1, total - 1)
    s.tell(f"{a} picks {x} {things} in the morning and {total - x} {things} in the afternoon.")
    picked = s.compute("add", [x, total - x], f"the number of {things} {a} picks", _ident(things, "picked"))
    s.tell(f"{_cap(subj)} shares them equally among {k} friends.")
    s.compute("div", [picked, k], f"the number of {things} each friend gets", _ident(things, "each"))
    return f"How many {things} does each friend get?"


# --- equal_groups (cot) --------------------------------------------------------------------------


def _dozens_boxes(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    food = rng.choice(BAKED)
    k, f = rng.randint(2, 8), rng.choice([2, 3, 4])
    made = 12 * k
    rest = made - made // f
    boxes = rng.choice([b for b in range(2, 10) if rest % b == 0])
    s.tell(f"{a} bakes {WORDS[k]} dozen {food}. {_cap(subj)} gives {FRACTIONS[f]} of them to the neighbours "
           f"and puts the rest equally into {WORDS[boxes]} boxes.")
    v1 = s.compute("mul", [k, 12], f"the number of {food} {a} bakes", _ident(food, "baked"))
    v2 = s.compute("div", [v1, f], f"the number of {food} given to the neighbours", _ident(food, "given"))
    v3 = s.compute("sub", [v1, v2], f"the number of {food} left for the boxes", _ident(food, "rest"))
    s.compute("div", [v3, boxes], f"the number of {food} in each box", _ident(food, "per_box"))
    return f"How many {food} are in each box?"


def _twice_third(s: _Story) -> str:
    rng = s.rng
    (a, *_), (b, *_), (c, *_) = rng.sample(PEOPLE, 3)
    items, _ = rng.choice(COLLECTIBLES)
    t, f = rng.choice([2, 3]), rng.choice([2, 3, 4])
    x = f * rng.randint(2, 12) if t % f else rng.randint(3, 20)
    times = "twice" if t == 2 else "three times"
    s.tell(f"{a} has {x} {items}. {b} has {times} as many {items} as {a}, and {c} has {FRACTIONS[f]} as many as {b}.")
    vb = s.compute("mul", [x, t], f"the number of {items} {b} has", _ident(b, items))
    vc = s.compute("div", [vb, f], f"the number of {items} {c} has", _ident(c, items))
    s.compute("add", [x, vb, vc], f"the number of {items} the three have together", _ident(items, "total"))
    return rng.choice([f"How many {items} do the three of them have in all?",
                       f"How many {items} do {a}, {b} and {c} have together?"])


def _teams_pairs(s: _Story) -> str:
    rng = s.rng
    k, teams, p = rng.randint(3, 6), rng.randint(3, 8), rng.randint(2, 5)
    gear = rng.choice(["gloves", "socks", "shoes", "skates", "mittens"])
    s.tell(f"A class of {k * teams} students splits into teams of {WORDS[k]}. "
           f"Each team gets {WORDS[p]} pairs of {gear} for practice.")
    v1 = s.compute("div", [k * teams, k], "the number of teams", "teams")
    v2 = s.compute("mul", [p, 2], f"the number of {gear} each team gets", _ident(gear, "per_team"))
    s.compute("mul", [v1, v2], f"the number of {gear} handed out", _ident(gear, "total"))
    return f"How many {gear} are handed out in all, counting each one separately?"


def _week_practice(s: _Story) -> str:
    rng = s.rng
    a, _, _, _ = rng.choice(PEOPLE)
    activity = rng.choice(["piano", "football", "chess", "swimming", "drawing"])
    m, w = rng.randint(10, 45), rng.randint(2, 4)
    s.tell(f"{a} practises {activity} for {m} minutes every weekday and twice as long on each day of the weekend.")
    v1 = s.compute("mul", [m, 5], "the number of minutes of practice on weekdays", "weekday_minutes")
    v2 = s.compute("mul", [m, 2], "the number of minutes of practice on one weekend day", "weekend_day_minutes")
    v3 = s.compute("mul", [v2, 2], "the number of minutes of practice over the weekend", "weekend_minutes")
    v4 = s.compute("add", [v1, v3], "the number of minutes of practice in one week", "week_minutes")
    s.compute("mul", [v4, w], f"the number of minutes of practice in {w} weeks", "total_minutes")
    return f"How many minutes does {a} practise in {WORDS[w]} weeks?"


def _eggs_dozens(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    n, p = 16 * rng.randint(2, 9), rng.randint(2, 6)
    s.tell(f"{a}'s hens laid {n} eggs this week. {_cap(subj)} keeps a quarter of them for the family "
           f"and sells the rest by the dozen for ${p} a dozen.")
    v1 = s.compute("div", [n, 4], "the number of eggs kept", "eggs_kept")
    v2 = s.compute("sub", [n, v1], "the number of eggs sold", "eggs_sold")
    v3 = s.compute("div", [v2, 12], "the number of dozens sold", "dozens_sold")
    s.compute("mul", [v3, p], "the money from the eggs", "money")
    return f"How much money does {a} make from the eggs?"


# --- long_chain (l2m) ----------------------------------------------------------------------------


def _long_chain(s: _Story) -> str:
    rng = s.rng
    (a, subj, obj, poss), (friend, *_) = rng.sample(PEOPLE, 2)
    items, _ = rng.choice(COLLECTIBLES)
    start = rng.randint(5, 30)
    s.tell(rng.choice([f"{a} starts the week with {start} {items}.", f"On Sunday evening {a} has {start} {items}."]))
    current: str | int = start
    # (how the question refers to a state, its value) for "as many as she had …"
    history: list[tuple[str, str | int]] = [("at the start of the week", start)]
    target = rng.randint(5, 7)
    day_index = 0
    while len(s.nodes) < target - 1 and day_index < 6:
        day = DAYS[day_index]
        label = f"after {day}"
        event = rng.choice(["gain", "lose", "packs", "double", "fraction", "back"])
        value = s.value(current)
        after = f"the number of {items} {a} has {label}"
        name = _ident(items, "after", day)
        if event == "gain":
            b = rng.randint(2, 15)
            s.tell(rng.choice([f"On {day}, {subj} buys {b} more {items}.", f"On {day}, {friend} gives {obj} {b} {items}.",
                               f"On {day}, {subj} finds {b} {items}."]))
            current = s.compute("add", [current, b], after, name)
        elif event == "lose" and value > 3:
            c = rng.randint(1, min(15, value - 1))
            s.tell(rng.choice([f"On {day}, {subj} gives {c} {items} to {friend}.", f"On {day}, {subj} loses {c} {items}.",
                               f"On {day}, {subj} trades away {c} {items}."]))
            current = s.compute("sub", [current, c], after, name)
        elif event == "packs":
            k, m = rng.randint(2, 5), rng.randint(2, 8)
            s.tell(f"On {day}, {subj} buys {k} packs of {items} with {m} in each pack.")
            bought = s.compute("mul", [k, m], f"the number of {items} in the packs bought on {day}", _ident(items, "packs", day))
            current = s.compute("add", [current, bought], after, name)
        elif event == "double" and value <= 60:
            s.tell(f"On {day}, {poss} grandmother gives {obj} as many {items} as {subj} already has.")
            current = s.compute("mul", [current, 2], after, name)
        elif event == "fraction" and any(value % f == 0 for f in FRACTIONS) and value >= 6:
            f = rng.choice([f for f in FRACTIONS if value % f == 0])
            s.tell(f"On {day}, {subj} gives {FRACTIONS[f]} of {poss} {items} to {friend}.")
            given = s.compute("div", [current, f], f"the number of {items} given to {friend} on {day}", _ident(items, "given", day))
            current = s.compute("sub", [current, given], after, name)
        elif event == "back" and len(history) >= 2:
            when, earlier = rng.choice(history[:-1])
            s.tell(f"On {day}, {subj} gets as many new {items} as {subj} had {when}.")
            current = s.compute("add", [current, earlier], after, name)
        else:
            continue
        history.append((f"at the end of {day}", current))
        day_index += 1
    if len(s.nodes) < 4:
        raise _Retry
    value = s.value(current)
    ending = rng.choice(["count", "bags", "sell"])
    if ending == "bags" and any(value % k == 0 for k in range(3, 7)):
        k = rng.choice([k for k in range(3, 7) if value % k == 0])
        s.tell(f"Then {subj} puts all of {poss} {items} into {WORDS[k]} bags with the same number in each bag.")
        s.compute("div", [current, k], f"the number of {items} in each bag", _ident(items, "per_bag"))
        return f"How many {items} are in each bag?"
    if ending == "sell":
        p = rng.randint(2, 5)
        s.tell(f"At the end of the week {subj} sells all of them for ${p} each.")
        s.compute("mul", [current, p], f"the money {a} makes selling the {items}", "money")
        return f"How much money does {a} make?"
    if not isinstance(current, str):
        raise _Retry
    return rng.choice([f"How many {items} does {a} have at the end of {DAYS[day_index - 1]}?",
                       f"How many {items} does {a} have now?"])


# --- compare (l2m) -------------------------------------------------------------------------------


def _relation(s: _Story, who: str, base: str, base_arg: str | int, items: str) -> tuple[str, str]:
    """A sentence defining `who`'s count relative to `base`, and its node."""
    rng = s.rng
    value = s.value(base_arg)
    text, name = f"the number of {items} {who} has", _ident(who, items)
    choices = ["more", "times"] + (["fewer"] if value > 4 else []) + [f for f in (2, 3) if value % f == 0 and value > 5]
    kind = rng.choice(choices)
    if kind == "more":
        k = rng.randint(3, 18)
        return f"{who} has {k} more {items} than {base}.", s.compute("add", [base_arg, k], text, name)
    if kind == "fewer":
        k = rng.randint(2, value - 2)
        return f"{who} has {k} fewer {items} than {base}.", s.compute("sub", [base_arg, k], text, name)
    if kind == "times":
        t = rng.randint(2, 4) if value <= 40 else 2
        phrase = "twice" if t == 2 else f"{WORDS[t]} times"
        return f"{who} has {phrase} as many {items} as {base}.", s.compute("mul", [base_arg, t], text, name)
    return f"{who} has {FRACTIONS[kind]} as many {items} as {base}.", s.compute("div", [base_arg, kind], text, name)


def _compare(s: _Story) -> str:
    rng = s.rng
    count = rng.choice([3, 4])
    people = [p[0] for p in rng.sample(PEOPLE, count)]
    items, _ = rng.choice(COLLECTIBLES)
    other, _ = rng.choice([c for c in COLLECTIBLES if c[0] != items])
    place = rng.choice(["At the school fair", "In the art club", "At summer camp", "In the class collection"])
    first = rng.randint(8, 40)
    facts = [f"{place}, {people[0]} has {first} {items}."]
    counts: dict[str, str | int] = {people[0]: first}
    for who in people[1:]:
        # Mostly chained on the previous person, so answers need several hops.
        base = list(counts)[-1] if rng.random() < 0.7 else rng.choice(list(counts))
        sentence, node = _relation(s, who, base, counts[base], items)
        facts.append(sentence)
        counts[who] = node
    distractors = [
        f"{rng.choice(people)} is {rng.randint(8, 14)} years old.",
        f"{rng.choice(people)} also has {rng.randint(3, 30)} {other}.",
        f"{rng.choice(people)} has {WORDS[rng.randint(2, 5)]} cousins.",
        f"Each of the {items} cost ${rng.randint(2, 9)}.",
    ]
    for sentence in rng.sample(distractors, rng.randint(1, 2)):
        facts.insert(rng.randint(1, len(facts)), sentence)
    for sentence in facts:
        s.tell(sentence)

    kind = rng.choice(["more", "more_than_two", "total"])
    if kind == "more_than_two" and count == 4:
        x, y, z = rng.sample(people, 3)
        pair = s.compute("add", [counts[y], counts[z]], f"the number of {items} {y} and {z} have together", _ident(y, z, items))
        if s.value(counts[x]) > s.value(pair):
            s.compute("sub", [counts[x], pair], f"the difference between {x}'s {items} and those of {y} and {z} together", "difference")
            return f"How many more {items} does {x} have than {y} and {z} combined?"
        if s.value(counts[x]) < s.value(pair):
            s.compute("sub", [pair, counts[x]], f"the difference between the {items} of {y} and {z} together and {x}'s", "difference")
            return f"How many fewer {items} does {x} have than {y} and {z} combined?"
        raise _Retry
    if kind == "total":
        group = rng.sample(people, rng.choice([2, 3]))
        names = ", ".join(group[:-1]) + f" and {group[-1]}"
        if all(isinstance(counts[p], int) for p in group):
            raise _Retry
        s.compute("add", [counts[p] for p in group], f"the number of {items} {names} have together", "total")
        return f"How many {items} do {names} have in total?"
    last, other = people[-1], rng.choice(people[:-1])
    if s.value(counts[last]) == s.value(counts[other]):
        raise _Retry
    big, small = (last, other) if s.value(counts[last]) > s.value(counts[other]) else (other, last)
    s.compute("sub", [counts[big], counts[small]], f"the difference between {big}'s and {small}'s {items}", "difference")
    return f"How many more {items} does {big} have than {small}?"


# --- big_arithmetic (pot) ------------------------------------------------------------------------


def _factory(s: _Story) -> str:
    rng = s.rng
    product = rng.choice(["bolts", "bottles", "bricks", "light bulbs", "tiles", "toy robots", "jars of jam"])
    a, d = rng.randint(120, 2400), rng.randint(12, 60)
    made = a * d
    k = rng.choice([12, 18, 24, 25, 36, 48, 50])
    boxes = rng.randint(made // (5 * k) + 1, made // (2 * k))
    shipped = made - boxes * k
    first = rng.randint(shipped // 4, 3 * shipped // 4)
    s.tell(f"A factory makes {a} {product} every day. After {d} days, it sends {_big(rng, first)} {product} to a "
           f"wholesaler and {_big(rng, shipped - first)} to its own shops.")
    if rng.random() < 0.5:
        s.tell(f"The factory has {rng.randint(40, 400)} workers.")
    v1 = s.compute("mul", [a, d], f"the number of {product} made in {d} days", _ident(product, "made"))
    v2 = s.compute("add", [first, shipped - first], f"the number of {product} sent away", _ident(product, "sent"))
    v3 = s.compute("sub", [v1, v2], f"the number of {product} that remain", _ident(product, "remaining"))
    s.compute("div", [v3, k], f"the number of boxes of {k} filled", "boxes")
    return f"The rest are packed into boxes of {k}. How many boxes are filled?"


def _visitors_sum(s: _Story) -> str:
    rng = s.rng
    place = rng.choice(["museum", "zoo", "aquarium", "science centre", "water park"])
    n = rng.randint(4, 6)
    counts = [rng.randint(1000, 9999) for _ in range(n)]
    listing = ", ".join(str(c) for c in counts[:-1]) + f" and {counts[-1]}"
    s.tell(f"Over {WORDS[n]} days, a {place} counted {listing} visitors.")
    total = s.compute("add", counts, f"the number of visitors over the {n} days", "visitors")
    if rng.random() < 0.5:
        free = rng.randint(100, 999)
        p = rng.randint(11, 49)
        s.tell(f"{free} of the visitors came with a free pass and everyone else paid ${p}.")
        paying = s.compute("sub", [total, free], "the number of paying visitors", "paying_visitors")
        s.compute("mul", [paying, p], "the money from tickets", "ticket_money")
        return "How much money did the tickets bring in?"
    p = rng.randint(11, 49)
    s.tell(f"Each visitor paid ${p} for a ticket.")
    s.compute("mul", [total, p], "the money from tickets", "ticket_money")
    return f"How much money did the {place} make from tickets?"


def _tickets(s: _Story) -> str:
    rng = s.rng
    event = rng.choice(["concert", "football match", "theatre show", "festival", "circus"])
    a, p = rng.randint(150, 999), rng.randint(18, 85)
    b, q = rng.randint(100, 800), rng.randint(9, p - 3)
    s.tell(f"A {event} sold {a} adult tickets at ${p} each and {b} child tickets at ${q} each.")
    v1 = s.compute("mul", [a, p], "the money from adult tickets", "adult_money")
    v2 = s.compute("mul", [b, q], "the money from child tickets", "child_money")
    v3 = s.compute("add", [v1, v2], "the money from all tickets", "ticket_money")
    costs = rng.randint(s.value(v3) // 5, s.value(v3) * 4 // 5)
    s.tell(f"Running the {event} cost ${_big(rng, costs)}.")
    s.compute("sub", [v3, costs], "the profit", "profit")
    return f"How much profit did the {event} make?"


def _warehouse(s: _Story) -> str:
    rng = s.rng
    goods = rng.choice(["cans of soup", "bottles of water", "bags of rice", "boxes of cereal", "packs of batteries"])
    x, y, k = rng.randint(25, 250), rng.randint(24, 144), rng.randint(3, 12)
    total = x * y
    damaged = total % k + k * rng.randint(1, 12)
    if damaged >= total:
        raise _Retry
    s.tell(f"A warehouse receives {x} crates with {y} {goods} in each crate. {damaged} {goods} are damaged "
           f"and thrown away. The rest are shared equally among {k} stores.")
    v1 = s.compute("mul", [x, y], f"the number of {goods} received", "received")
    v2 = s.compute("sub", [v1, damaged], f"the number of {goods} still good", "good")
    s.compute("div", [v2, k], f"the number of {goods} each store gets", "per_store")
    return f"How many {goods} does each store get?"


def _savings(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    w, m = rng.randint(1200, 6500), rng.randint(6, 24)
    spend = rng.randint(w // 2, w - 150)
    s.tell(f"{a} earns ${w} a month and spends ${spend} a month. {_cap(subj)} does this for {m} months.")
    v1 = s.compute("mul", [w, m], f"the money {a} earns in {m} months", "earned")
    v2 = s.compute("mul", [spend, m], f"the money {a} spends in {m} months", "spent")
    v3 = s.compute("sub", [v1, v2], f"the money {a} saves", "saved")
    car = rng.randint(s.value(v3) // 4, s.value(v3) - 1)
    s.tell(f"Then {subj} buys a used car for ${_big(rng, car)}.")
    s.compute("sub", [v3, car], f"the money {a} has left", "money_left")
    return f"How much of {a}'s savings is left?"


# --- unit_rates (pot) ----------------------------------------------------------------------------


def _machine_rate(s: _Story) -> str:
    rng = s.rng
    machine, units, verb, base = rng.choice([
        ("printer", "pages", "prints", "print"), ("bottling machine", "bottles", "fills", "fill"),
        ("sorting belt", "parcels", "sorts", "sort"), ("oven line", "rolls", "bakes", "bake"),
        ("press", "labels", "stamps", "stamp"),
    ])
    r, h, m = rng.randint(12, 95), rng.randint(1, 6), rng.randint(5, 55)
    s.tell(f"A {machine} {verb} {r} {units} per minute. It runs for {h} hours and {m} minutes.")
    v1 = s.compute("mul", [h, 60], f"the number of minutes in {h} hours", "hour_minutes")
    v2 = s.compute("add", [v1, m], "the total running time in minutes", "minutes")
    v3 = s.compute("mul", [v2, r], f"the number of {units} the {machine} {verb}", _ident(units))
    if rng.random() < 0.4:
        bad = rng.randint(10, 99)
        s.tell(f"{bad} of the {units} are faulty.")
        s.compute("sub", [v3, bad], f"the number of good {units}", _ident("good", units))
        return f"How many good {units} are there?"
    return f"How many {units} does the {machine} {base} in that time?"


def _discount(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    goods, _ = rng.choice(GOODS + [("jackets", "jacket"), ("lamps", "lamp"), ("chairs", "chair")])
    d = rng.choice([10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 75])
    step = 100 // math.gcd(d, 100)
    price = step * rng.randint(max(1, 20 // step), 400 // step)
    n = rng.randint(2, 9)
    s.tell(f"{goods.capitalize()} cost ${price} each, and a sale takes {d}% off. {a} buys {n} {goods} in the sale.")
    v1 = s.compute("pct", [price, d], f"the discount on one of the {goods}", "discount")
    v2 = s.compute("sub", [price, v1], f"the sale price of one of the {goods}", "sale_price")
    v3 = s.compute("mul", [v2, n], f"the cost of {n} {goods} in the sale", "cost")
    if rng.random() < 0.5:
        bill = (s.value(v3) // 100 + rng.randint(1, 3)) * 100
        s.tell(f"{_cap(subj)} pays with ${bill}.")
        s.compute("sub", [bill, v3], f"the change {a} gets", "change")
        return f"How much change does {a} get?"
    return f"How much does {a} pay?"


def _tap_litres(s: _Story) -> str:
    rng = s.rng
    r = rng.choice([25, 40, 50, 75, 80, 100, 125, 150, 200, 250])
    m = rng.randint(2, 45)
    if (60 * m * r) % 1000:
        raise _Retry
    source = rng.choice(["A tap", "A hose", "A pump", "A pipe"])
    s.tell(f"{source} pours {r} millilitres of water per second into a tank. It runs for {m} minutes.")
    v1 = s.compute("mul", [m, 60], f"the number of seconds in {m} minutes", "seconds")
    v2 = s.compute("mul", [v1, r], "the number of millilitres poured", "millilitres")
    v3 = s.compute("div", [v2, 1000], "the number of litres poured", "litres")
    if rng.random() < 0.5:
        had = rng.randint(20, 400)
        s.tell(f"The tank already held {had} litres.")
        s.compute("add", [v3, had], "the number of litres in the tank at the end", "litres_in_tank")
        return "How many litres are in the tank now?"
    return "How many litres of water are poured into the tank?"


def _overtime(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    extra = rng.choice([25, 50, 100])
    w = rng.randint(3, 10) * 4
    h, o = rng.randint(30, 40), rng.randint(2, 12)
    s.tell(f"{a} earns ${w} an hour for the first {h} hours of a week and {extra}% more for every hour after that. "
           f"This week {subj} works {h + o} hours.")
    v1 = s.compute("mul", [w, h], "the pay for the regular hours", "regular_pay")
    v2 = s.compute("sub", [h + o, h], "the number of overtime hours", "overtime_hours")
    v3 = s.compute("pct", [w, extra], "the extra pay per overtime hour", "extra_per_hour")
    v4 = s.compute("add", [w, v3], "the pay per overtime hour", "overtime_rate")
    v5 = s.compute("mul", [v2, v4], "the overtime pay", "overtime_pay")
    s.compute("add", [v1, v5], "the pay for the week", "week_pay")
    return f"How much does {a} earn this week?"


def _flour_bags(s: _Story) -> str:
    rng = s.rng
    g, d, k = rng.choice(range(250, 801, 50)), rng.randint(3, 14), rng.choice([5, 10, 25])
    bags = rng.randint(2, 40)
    grams = bags * k * 1000
    if grams % (g * d):
        raise _Retry
    n = grams // (g * d)
    if not 10 <= n <= 400:
        raise _Retry
    s.tell(f"A bakery uses {g} grams of flour for each loaf and bakes {n} loaves a day. "
           f"Flour comes in {k}-kilogram bags.")
    v1 = s.compute("mul", [g, n], "the number of grams of flour used per day", "grams_per_day")
    v2 = s.compute("mul", [v1, d], f"the number of grams of flour used in {d} days", "grams")
    v3 = s.compute("div", [v2, 1000], f"the number of kilograms of flour used in {d} days", "kilograms")
    s.compute("div", [v3, k], "the number of bags used", "bags")
    return f"How many bags of flour does the bakery use in {d} days?"


def _town_growth(s: _Story) -> str:
    rng = s.rng
    town = rng.choice(["A town", "A village", "A city district", "An island"])
    p, x = 100 * rng.randint(10, 90), rng.choice([2, 4, 5, 6, 8, 10, 12, 15, 20, 25])
    s.tell(f"{town} had {_big(rng, p)} people. Over one year the population grew by {x}%.")
    v1 = s.compute("pct", [p, x], "the growth in the first year", "growth")
    v2 = s.compute("add", [p, v1], "the population after the growth", "population")
    y = rng.randint(20, 900)
    s.tell(f"Then {y} people moved away.")
    v3 = s.compute("sub", [v2, y], "the population after people moved away", "population_now")
    if rng.random() < 0.5:
        z = rng.choice([10, 20, 25, 50])
        if (s.value(v3) * z) % 100:
            raise _Retry
        s.tell(f"{z}% of the people who remain are children.")
        s.compute("pct", [v3, z], "the number of children", "children")
        return "How many children live there now?"
    return "How many people live there now?"


# --- piecewise (cot) -----------------------------------------------------------------------------
# Small numbers and one rule with two cases. A text solution checks which case applies and
# computes only that one; a program must state the rule for both cases (`if`, `max`, `min`).
# About half of the problems fall on each side of the threshold (sometimes exactly on it).


def _either_side(rng: random.Random, t: int, low: int, high: int) -> int:
    """A count near the threshold t: above it, at it, or below it."""
    side = rng.random()
    if side < 0.45:
        return rng.randint(t + 1, min(high, t + 8))
    if side < 0.55 or t - 1 < low:
        return t
    return rng.randint(max(low, t - 8), t - 1)


def _tiered_price(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    goods, good = rng.choice(GOODS)
    t = rng.randint(4, 12)
    p = rng.randint(3, 9)
    q = rng.randint(1, p - 1)
    n = _either_side(rng, t, 2, 20)
    s.tell(f"{_cap(goods)} cost ${p} each, or ${q} each when you buy more than {t}. {a} buys {n} {goods}.")
    price = s.compute("if_gt", [n, t, q, p], f"the price of one {good}", "price",
                      inputs={0: _ident(goods), 1: "threshold", 2: "bulk_price", 3: "regular_price"})
    cost = s.compute("mul", [n, price], f"the cost of the {goods}", "cost", inputs={0: _ident(goods)})
    if rng.random() < 0.4:
        b = rng.randint(2, 9)
        s.tell(f"{_cap(subj)} also buys a bag for ${b}.")
        s.compute("add", [cost, b], f"the money {a} pays in all", "total", inputs={1: "bag_price"})
    return rng.choice([f"How much does {a} pay?", f"How many dollars does {a} spend?"])


def _extra_hours(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    day = rng.choice(DAYS)
    t, w = rng.randint(3, 8), rng.randint(2, 9)
    x = w + rng.randint(1, 5)
    h = _either_side(rng, t, 1, 12)
    s.tell(f"{a} earns ${w} an hour for up to {t} hours a day and ${x} for every hour after that. "
           f"On {day} {subj} works {h} hours.")
    regular = s.compute("lesser", [h, t], "the number of hours paid at the regular rate", "regular_hours",
                        inputs={0: "hours", 1: "regular_limit"})
    extra = s.compute("over", [h, t], "the number of extra hours", "extra_hours", inputs={0: "hours", 1: "regular_limit"})
    pay = s.compute("mul", [regular, w], "the pay for the regular hours", "regular_pay", inputs={1: "regular_rate"})
    bonus = s.compute("mul", [extra, x], "the pay for the extra hours", "extra_pay", inputs={1: "extra_rate"})
    s.compute("add", [pay, bonus], f"the money {a} earns on {day}", "day_pay")
    return f"How much does {a} earn on {day}?"


def _free_delivery(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    goods, _ = rng.choice(GOODS)
    n, c = rng.randint(2, 6), rng.randint(2, 9)
    cost = n * c
    t = rng.choice([cost - rng.randint(1, 8), cost, cost + rng.randint(1, 8)])
    d = rng.randint(3, 9)
    if t < 5:
        raise _Retry
    s.tell(f"{a} orders {n} {goods} at ${c} each. Delivery costs ${d}, but it is free on orders of ${t} or more.")
    v1 = s.compute("mul", [n, c], f"the cost of the {goods}", "cost", inputs={0: _ident(goods), 1: "price"})
    v2 = s.compute("if_ge", [v1, t, 0, d], "the delivery charge", "delivery",
                   inputs={1: "free_delivery_from", 3: "delivery_fee"})
    s.compute("add", [v1, v2], f"the money {a} pays in all", "total")
    return f"How much does {a} pay in all?"


def _parking(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    place = rng.choice(["Parking", "Renting a bike", "A rowing boat", "A locker"])
    first, t, more = rng.randint(3, 9), rng.randint(1, 4), rng.randint(2, 6)
    h = _either_side(rng, t, 1, 10)
    s.tell(f"{place} costs ${first} for the first {t} hours and ${more} for every hour after that. "
           f"{a} needs it for {h} hours.")
    v1 = s.compute("over", [h, t], f"the number of hours after the first {t}", "extra_hours",
                   inputs={0: "hours", 1: "first_hours"})
    v2 = s.compute("mul", [v1, more], "the charge for the extra hours", "extra_charge", inputs={1: "hourly_rate"})
    s.compute("add", [first, v2], f"the money {a} pays", "total", inputs={0: "first_charge"})
    return f"How much does {a} pay?"


def _goal_bonus(s: _Story) -> str:
    rng = s.rng
    a, subj, _, poss = rng.choice(PEOPLE)
    items, _ = rng.choice(COLLECTIBLES)
    x, y, t = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 6)
    g = _either_side(rng, t, 0, 12)
    k = rng.randint(2, 5)
    s.tell(f"After every game a coach gives each player {x} {items}, and {y} more to a player who scores more "
           f"than {t} goals. {a} scores {g} goals in the game.")
    v1 = s.compute("if_gt", [g, t, y, 0], f"the extra {items} {a} gets", "bonus",
                   inputs={0: "goals", 1: "goal_threshold", 2: "extra"})
    v2 = s.compute("add", [x, v1], f"the number of {items} {a} gets after the game", _ident(items, "per_game"),
                   inputs={0: "base"})
    if rng.random() < 0.5:
        s.tell(f"{_cap(subj)} already had {k} {items}.")
        s.compute("add", [v2, k], f"the number of {items} {a} has now", _ident(items, "now"), inputs={1: "had"})
        return f"How many {items} does {a} have now?"
    return f"How many {items} does {a} get after the game?"


# --- round_up (cot) ------------------------------------------------------------------------------
# Sharing into groups of a fixed size: whole vans needed (round up) or full boxes (round down),
# with small numbers. Text reads "20 / 6 = 3 with 2 left over, so 4 vans"; a program has to pick
# `math.ceil` or `//` from the wording.


def _vans(s: _Story) -> str:
    rng = s.rng
    group = rng.choice(["class", "choir", "scout troop", "team", "book club"])
    vehicle, vehicles = rng.choice([("van", "vans"), ("car", "cars"), ("minibus", "minibuses"), ("boat", "boats")])
    n, k, c = rng.randint(8, 40), rng.randint(1, 4), rng.randint(4, 9)
    s.tell(f"A {group} of {n} children and {k} adults goes on a trip. Each {vehicle} holds {c} people.")
    v1 = s.compute("add", [n, k], "the number of people going", "people", inputs={0: "children", 1: "adults"})
    if s.value(v1) % c == 0 and rng.random() < 0.8:
        raise _Retry
    s.compute("ceildiv", [v1, c], f"the number of {vehicles} needed", vehicles, inputs={1: "seats"})
    return f"How many {vehicles} do they need?"


def _boxes(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    food = rng.choice(BAKED)
    trays, m, c = rng.randint(2, 6), rng.randint(3, 9), rng.randint(4, 10)
    s.tell(f"{a} bakes {trays} trays of {food} with {m} {food} on each tray. "
           f"{_cap(subj)} packs them into boxes that hold {c} {food} each.")
    v1 = s.compute("mul", [trays, m], f"the number of {food} {a} bakes", _ident(food), inputs={0: "trays", 1: "per_tray"})
    if s.value(v1) % c == 0 and rng.random() < 0.8:
        raise _Retry
    if rng.random() < 0.5:
        s.compute("ceildiv", [v1, c], "the number of boxes needed for all of them", "boxes", inputs={1: "box_size"})
        return f"How many boxes does {a} need to pack all of the {food}?"
    s.compute("floordiv", [v1, c], "the number of boxes filled completely", "full_boxes", inputs={1: "box_size"})
    return f"How many boxes can {a} fill completely?"


def _trips(s: _Story) -> str:
    rng = s.rng
    carrier, load = rng.choice([("lift", "people"), ("ferry", "cars"), ("cable car", "skiers"), ("wagon", "sacks")])
    n, c = rng.randint(9, 45), rng.randint(3, 8)
    already = rng.randint(2, 6) if rng.random() < 0.4 else 0
    s.tell(f"A {carrier} takes {c} {load} at a time. There are {n} {load} waiting.")
    waiting: str | int = n
    if already:
        s.tell(f"{already} more {load} arrive before it starts.")
        waiting = s.compute("add", [n, already], f"the number of {load} to carry", _ident(load),
                            inputs={0: "waiting", 1: "arrived"})
    if s.value(waiting) % c == 0 and rng.random() < 0.8:
        raise _Retry
    s.compute("ceildiv", [waiting, c], "the number of trips needed", "trips",
              inputs={0: "waiting", 1: "per_trip"} if not already else {1: "per_trip"})
    return f"How many trips does the {carrier} make to carry all the {load}?"


def _tables(s: _Story) -> str:
    rng = s.rng
    event = rng.choice(["party", "wedding lunch", "school dinner", "picnic"])
    n, c, f = rng.randint(10, 40), rng.randint(4, 8), rng.randint(2, 5)
    thing = rng.choice(["candles", "flowers", "napkins", "balloons"])
    s.tell(f"{n} guests come to a {event}. Each table seats {c} guests, and each table gets {f} {thing}.")
    if n % c == 0 and rng.random() < 0.8:
        raise _Retry
    v1 = s.compute("ceildiv", [n, c], "the number of tables needed", "tables", inputs={0: "guests", 1: "seats"})
    s.compute("mul", [v1, f], f"the number of {thing} needed", _ident(thing), inputs={1: _ident(thing, "per_table")})
    return f"How many {thing} are needed?"


def _leftover(s: _Story) -> str:
    rng = s.rng
    a, subj, _, _ = rng.choice(PEOPLE)
    items, _ = rng.choice(COLLECTIBLES)
    n, c = rng.randint(10, 50), rng.randint(3, 9)
    if n % c == 0:
        raise _Retry
    s.tell(f"{a} has {n} {items}. {_cap(subj)} puts them into bags of {c} and fills as many bags as {subj} can.")
    v1 = s.compute("floordiv", [n, c], "the number of full bags", "full_bags", inputs={0: _ident(items), 1: "bag_size"})
    v2 = s.compute("mul", [v1, c], f"the number of {items} in the full bags", "bagged", inputs={1: "bag_size"})
    s.compute("sub", [n, v2], f"the number of {items} left over", "left_over", inputs={0: _ident(items)})
    return f"How many {items} are left over?"


# --- families ------------------------------------------------------------------------------------

_TEMPLATES: dict[str, list[Callable[[_Story], str]]] = {
    "short_story": [_packs_left, _together, _pages_left, _money_left, _filled_containers, _shared_equally],
    "equal_groups": [_dozens_boxes, _twice_third, _teams_pairs, _week_practice, _eggs_dozens],
    "long_chain": [_long_chain],
    "compare": [_compare],
    "big_arithmetic": [_factory, _visitors_sum, _tickets, _warehouse, _savings],
    "unit_rates": [_machine_rate, _discount, _tap_litres, _overtime, _flour_bags, _town_growth],
    "piecewise": [_tiered_price, _extra_hours, _free_delivery, _parking, _goal_bonus],
    "round_up": [_vans, _boxes, _trips, _tables, _leftover],
}

# The strategy each family is designed to favour (see the module docstring).
FAVOURED_STRATEGY: dict[str, str] = {
    "short_story": "cot",
    "equal_groups": "cot",
    "long_chain": "l2m",
    "compare": "l2m",
    "big_arithmetic": "pot",
    "unit_rates": "pot",
    "piecewise": "cot",
    "round_up": "cot",
}
FAMILIES: tuple[str, ...] = tuple(_TEMPLATES)
# Fewer steps would make a family too easy for any strategy to matter.
MIN_STEPS: dict[str, int] = {
    "short_story": 2, "equal_groups": 3, "long_chain": 5, "compare": 3, "big_arithmetic": 2, "unit_rates": 3,
    "piecewise": 2, "round_up": 1,
}


def make_problem(seed: int, index: int, family: str) -> dict:
    """Problem `index` of `seed` from one family, as a record."""
    if family not in _TEMPLATES:
        raise ValueError(f"unknown synthetic family {family!r}; expected one of {', '.join(FAMILIES)}")
    # A string seed is hashed with SHA-512 by `random`, so it is stable across runs and machines.
    rng = random.Random(f"siked-synthetic:{seed}:{index}")
    for _ in range(1000):
        story = _Story(rng)
        template = rng.choice(_TEMPLATES[family])
        try:
            question, graph = story.finish(template(story))
        except _Retry:
            continue
        if len(graph) < MIN_STEPS[family]:
            continue
        return {
            "id": f"synth-{seed}-{index}",
            "question": question,
            "answer": format_number(graph[-1]["value"]),
            "meta": {"family": family, "graph": graph, "steps": len(graph)},
        }
    raise RuntimeError(f"could not draw a valid {family} problem for seed {seed}, index {index}")


def generate(n: int, seed: int, families: list[str] | None = None) -> list[dict]:
    """`n` problems for `seed`, cycling through `families` (all by default) so each gets an equal share."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chosen = list(FAMILIES) if families is None else list(families)
    if not chosen:
        raise ValueError("families must not be empty")
    unknown = [f for f in chosen if f not in _TEMPLATES]
    if unknown:
        raise ValueError(f"unknown synthetic families {unknown}; expected some of {', '.join(FAMILIES)}")
    return [make_problem(seed, i, chosen[i % len(chosen)]) for i in range(n)]
