"""The math benchmarks of the MoS paper: GSM8K, SVAMP, MAWPS, AQuA and MATH500.

Each entry is the hub dataset's own schema, read as it is (checked against the dataset cards
on the Hugging Face hub; ``docs/tasks.md`` lists them):

* ``openai/gsm8k``, config ``main``: ``question``, ``answer`` (a worked solution with
  ``<<48/2=24>>`` calculator notes, ending ``#### 72``); splits ``train`` (7,473), ``test``
  (1,319).
* ``ChilleD/SVAMP``: ``ID``, ``Body``, ``Question``, ``Equation``, ``Answer`` (a float),
  ``Type``, ``question_concat``; splits ``train`` (700), ``test`` (300).
* ``MU-NLPC/Calc-mawps``, config ``default``: ``id``, ``question``, ``chain``, ``result`` (text),
  ``result_float``, ``equation``, ``expression``; splits ``train`` (1,089), ``validation``
  (1,040), ``test`` (520). Chosen because its test split is the paper's 520 MAWPS problems
  (its table 6) and its train split is filtered against near-duplicates of the test sets.
* ``deepmind/aqua_rat``, config ``raw``: ``question``, ``options`` (five strings ``"A)21"``),
  ``rationale``, ``correct`` (a letter); splits ``train`` (97,467), ``validation`` (254),
  ``test`` (254).
* ``HuggingFaceH4/MATH-500``: ``problem``, ``solution``, ``answer``, ``subject``, ``level``,
  ``unique_id``; split ``test`` (500) only.

The prompts ask for the answer in the form the answer rules read first (``The answer is N.``,
or ``\\boxed{}`` for MATH500); the training targets end the same way.
"""

from __future__ import annotations

import re

from .answers import ChoiceAnswer, MathAnswer, NumberAnswer
from .base import Generation, Row, Task, format_number

__all__ = ["GSM8K", "SVAMP", "MAWPS", "AQUA", "MATH500", "MATH_TASKS", "gsm8k_final_answer"]

_ASK_NUMBER = 'Solve it step by step, then end with "The answer is" followed by the number.'
_ASK_LETTER = (
    'Solve it step by step, then end with "The answer is" followed by the letter (A, B, C, D '
    "or E) of the correct option."
)
_ASK_BOXED = "Solve it step by step, and put the final answer in \\boxed{}."
_STOP = ("\nQuestion:", "\n\nQuestion")
_GENERATION = Generation(max_new_tokens=256, stop=_STOP)


def _word_problem(question: str, ask: str = _ASK_NUMBER) -> str:
    return f"Question: {question.strip()}\n{ask}\nAnswer:"


def _answer_is(value: object) -> str:
    return f"The answer is {format_number(value)}."


def gsm8k_final_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after its ``####``."""
    return answer.rsplit("####", 1)[-1].strip()


def _gsm8k_target(row: Row) -> str:
    solution, _, final = row["answer"].rpartition("####")
    steps = re.sub(r"<<[^>]*>>", "", solution).strip()  # the calculator annotations
    return f"{steps}\n{_answer_is(final.strip())}"


def _svamp_question(row: Row) -> str:
    body, question = row["Body"].strip(), row["Question"].strip()
    joiner = " " if body.endswith((".", "?", "!")) else ", "
    return f"{body}{joiner}{question}"


def _svamp_target(row: Row) -> str:
    return f"{str(row['Equation']).strip()} = {format_number(row['Answer'])}. " + _answer_is(
        row["Answer"]
    )


def _mawps_reference(row: Row) -> object:
    result = row["result"]
    return result if re.search(r"\d", str(result)) else row.get("result_float")


def _aqua_prompt(row: Row) -> str:
    options = "\n".join(str(o).strip() for o in row["options"])
    return f"Question: {row['question'].strip()}\nOptions:\n{options}\n{_ASK_LETTER}\nAnswer:"


def _aqua_target(row: Row) -> str:
    return f"{row['rationale'].strip()}\nThe answer is {row['correct'].strip()}."


#: GSM8K (``openai/gsm8k``, ``main``): the number after ``####``.
GSM8K = Task(
    name="gsm8k",
    family="math",
    description="grade-school word problems, a number after '####' (OpenAI)",
    hub="openai/gsm8k",
    config="main",
    eval_split="test",
    train_split="train",
    fields=("question", "answer"),
    prompt=lambda row: _word_problem(row["question"]),
    reference=lambda row: gsm8k_final_answer(row["answer"]),
    answer=NumberAnswer(),
    target=_gsm8k_target,
    generation=_GENERATION,
    schema_source="https://huggingface.co/datasets/openai/gsm8k",
)

#: SVAMP (``ChilleD/SVAMP``): ``Body`` and ``Question`` asked together; ``Answer``.
SVAMP = Task(
    name="svamp",
    family="math",
    description="one-unknown word problems with varied structure (Patel et al. 2021)",
    hub="ChilleD/SVAMP",
    config=None,
    eval_split="test",
    train_split="train",
    fields=("Body", "Question", "Answer"),
    prompt=lambda row: _word_problem(_svamp_question(row)),
    reference=lambda row: row["Answer"],
    answer=NumberAnswer(),
    target=_svamp_target,
    generation=_GENERATION,
    schema_source="https://huggingface.co/datasets/ChilleD/SVAMP",
)

#: MAWPS (``MU-NLPC/Calc-mawps``, ``default``): ``question``; ``result``.
MAWPS = Task(
    name="mawps",
    family="math",
    description="arithmetic word problems (Koncel-Kedziorski et al. 2016), Calc-X version",
    hub="MU-NLPC/Calc-mawps",
    config="default",
    eval_split="test",
    train_split="train",
    fields=("question", "result"),
    prompt=lambda row: _word_problem(row["question"]),
    reference=_mawps_reference,
    answer=NumberAnswer(),
    target=lambda row: _answer_is(_mawps_reference(row)),
    generation=_GENERATION,
    schema_source="https://huggingface.co/datasets/MU-NLPC/Calc-mawps",
)

#: AQuA (``deepmind/aqua_rat``, ``raw``): the question and its options; the letter ``correct``.
AQUA = Task(
    name="aqua",
    family="math",
    description="algebra word problems with five options A-E (DeepMind AQuA-RAT)",
    hub="deepmind/aqua_rat",
    config="raw",
    eval_split="test",
    train_split="train",
    fields=("question", "options", "correct"),
    prompt=_aqua_prompt,
    reference=lambda row: row["correct"],
    answer=ChoiceAnswer("ABCDE"),
    target=_aqua_target,
    generation=_GENERATION,
    schema_source="https://huggingface.co/datasets/deepmind/aqua_rat",
)

#: MATH500 (``HuggingFaceH4/MATH-500``): ``problem``; ``answer`` by math-verify.
MATH500 = Task(
    name="math500",
    family="math",
    description="500 competition problems of MATH (Lightman et al. 2023), test only",
    hub="HuggingFaceH4/MATH-500",
    config=None,
    eval_split="test",
    train_split=None,
    fields=("problem", "answer"),
    prompt=lambda row: f"Problem: {row['problem'].strip()}\n{_ASK_BOXED}\nSolution:",
    reference=lambda row: row["answer"],
    answer=MathAnswer(),
    target=None,
    generation=Generation(max_new_tokens=512, stop=("\nProblem:",)),
    schema_source="https://huggingface.co/datasets/HuggingFaceH4/MATH-500",
)

#: The math tasks.
MATH_TASKS: tuple[Task, ...] = (GSM8K, SVAMP, MAWPS, AQUA, MATH500)
